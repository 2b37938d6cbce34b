"""search(): the knapsack, the cross-validated errors, budgets, and end-to-end searches on
small models built here."""

import itertools
import math
import random

import pytest
import torch
from torch import nn

from reference import dense_weight
from scc_convert import SCCConv2d, convert, profile, search
from scc_convert.geometry import SCCGeometry
from scc_convert.search import Choice
from scc_convert.search.allocate import knapsack
from scc_convert.search.costs import parse_target
from scc_convert.search.sensitivity import choice_errors, layer_choices
from scc_convert.search.statistics import PixelSample, layer_moments

# -- the knapsack ---------------------------------------------------------------------------


def brute_force(costs, values, budget):
    best = None
    for pick in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(c[j] for c, j in zip(costs, pick))
        if cost <= budget:
            value = sum(v[j] for v, j in zip(values, pick))
            if best is None or value < best[0] - 1e-12:
                best = (value, pick)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_fits_the_budget_and_matches_brute_force(seed):
    rng = random.Random(seed)
    layers = rng.randint(1, 5)
    costs = [[rng.choice([1, 2, 4, 8]) * rng.randint(1, 9) for _ in range(rng.randint(1, 4))] for _ in range(layers)]
    values = [[rng.random() for _ in c] for c in costs]
    budget = sum(min(c) for c in costs) + rng.random() * sum(max(c) - min(c) for c in costs)
    chosen = knapsack(costs, values, budget, resolution=4000)
    assert chosen is not None
    assert sum(c[j] for c, j in zip(costs, chosen)) <= budget
    # costs are rounded up to a grid of room/4000, one step per layer at most: the DP is at
    # least as good as the exact optimum of a budget that much smaller
    room = budget - sum(min(c) for c in costs)
    value = sum(v[j] for v, j in zip(values, chosen))
    assert value <= brute_force(costs, values, budget - layers * room / 4000)[0] + 1e-12
    assert value >= brute_force(costs, values, budget)[0] - 1e-12


def test_knapsack_edges():
    costs, values = [[4, 2, 1], [4, 2, 1]], [[0, 1, 3], [0, 2, 5]]
    assert knapsack(costs, values, 1.5) is None  # the cheapest is 2
    assert knapsack(costs, values, 2) == [2, 2]
    assert knapsack(costs, values, 100) == [0, 0]
    assert knapsack(costs, values, 6) == [1, 0]
    with pytest.raises(ValueError, match="as many costs as values"):
        knapsack([[1, 2]], [[0.0]], 3)


# -- choices and their errors ---------------------------------------------------------------


def test_layer_choices_keep_valid_distinct_settings():
    choices = layer_choices(24, 48, cgs=(1, 2, 4, 5, 8), cos=(0.25, 0.5))
    assert Choice(1, 0.0) in choices and all(c.cg != 5 for c in choices)  # 5 does not divide 24
    assert sum(c.cg == 1 for c in choices) == 1
    # cg=8 on 24 channels: gw=3, int(0.25*3)=0 and int(0.5*3)=1 -> two distinct window sets
    assert {c.co for c in choices if c.cg == 8} == {0.25, 0.5}
    # cg=8 on 16 channels: gw=2, co=0.25 and co=0 would give the same windows; only 0.25 and 0.5 differ
    assert [c for c in layer_choices(16, 16, cgs=(8,), cos=(0.0, 0.25, 0.5))] == [Choice(8, 0.0), Choice(8, 0.5)]


def _reference_cv_error(u, y, geom, folds, ridge):
    """Fit every output on every window by ridge least squares on the raw rows of the other
    folds, pick the assignment with the least fit residual by brute force, judge on the fold."""
    n = u.shape[0]
    a = torch.cat([u, torch.ones(n, u.shape[1], 1, dtype=u.dtype)], 2)
    held, energy = 0.0, 0.0
    default = geom.default_window_of
    assignments = sorted(set(itertools.permutations(default)))
    for f in range(folds):
        train = torch.cat([a[i] for i in range(n) if i % folds != f])
        ty = torch.cat([y[i] for i in range(n) if i % folds != f])
        test = torch.cat([a[i] for i in range(n) if i % folds == f])
        vy = torch.cat([y[i] for i in range(n) if i % folds == f])
        fit = torch.zeros(geom.out_channels, geom.cyclic_distance)
        judge = torch.zeros_like(fit, dtype=torch.float64)
        for w in range(geom.cyclic_distance):
            cols = list(geom.window_channels(w)) + [geom.in_channels]
            g = train[:, cols].T @ train[:, cols]
            reg = torch.zeros(len(cols), dtype=torch.float64)
            reg[:-1] = ridge * g.diagonal()[:-1].mean()
            theta = torch.linalg.solve(g + torch.diag(reg), train[:, cols].T @ ty)
            fit[:, w] = ((train[:, cols] @ theta - ty) ** 2).sum(0)
            judge[:, w] = ((test[:, cols] @ theta - vy) ** 2).sum(0)
        best = min(assignments, key=lambda wo: sum(fit[o, w] for o, w in enumerate(wo)))
        held += sum(judge[o, w] for o, w in enumerate(best)).item()
        energy += ((vy - vy.mean(0)) ** 2).sum().item()
    return held / energy


@pytest.mark.parametrize("cg,co", [(2, 0.0), (2, 0.5), (4, 0.5)])
def test_choice_errors_match_a_least_squares_reference(cg, co):
    torch.manual_seed(cg)
    cin, cout, images, rows = 8, 4, 6, 10
    u = torch.randn(images, rows, cin, dtype=torch.float64)
    y = u @ torch.randn(cin, cout, dtype=torch.float64) + 0.3 * torch.randn(images, rows, cout, dtype=torch.float64)
    geom = SCCGeometry(cin, cout, cg, co)
    got = choice_errors(layer_moments(u, y, folds=3), cin, cout, [Choice(cg, co)])[0]
    assert got == pytest.approx(_reference_cv_error(u, y, geom, 3, 1e-4), rel=1e-6)


def test_choice_errors_see_what_an_scc_can_represent():
    torch.manual_seed(0)
    cin, cout = 16, 16
    scc = SCCConv2d(cin, cout, 4, 0.5, bias=False)
    exact = dense_weight(scc.weight.detach().double(), cin, 4, 0.5)  # [Cout, Cin], representable at cg=4
    u = torch.randn(8, 64, cin, dtype=torch.float64)
    moments = layer_moments(u, u @ exact.T, folds=2)
    errors = choice_errors(moments, cin, cout, [Choice(1, 0.0), Choice(4, 0.5), Choice(8, 0.5)])
    assert errors[0] < 1e-6 and errors[1] < 1e-6 and errors[2] > 0.1
    dense = layer_moments(u, u @ torch.randn(cin, cout, dtype=torch.float64), folds=2)
    assert choice_errors(dense, cin, cout, [Choice(4, 0.5)])[0] > 0.3


def test_pixel_sample_takes_the_same_pixels_of_every_tensor():
    sample = PixelSample(per_image=5, seed=3)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    rows = sample.rows(x)
    assert rows.shape == (2, 5, 3)
    again = sample.rows(x * 2)
    assert torch.equal(again, rows * 2)
    flat = x.permute(0, 2, 3, 1).reshape(2, 16, 3)
    for i in range(2):  # each row is one pixel of image i, all channels
        assert all(any(torch.equal(r, p) for p in flat[i]) for r in rows[i])


# -- budgets --------------------------------------------------------------------------------


@pytest.mark.parametrize("metric,target,limit,share", [
    ("macs", 0.5, 500.0, 0.5), ("macs", 2500, 2500.0, None), ("macs", "1.5K", 1500.0, None),
    ("params", "0.25", 250.0, 0.25), ("latency", 0.5, 5.0, 0.5), ("latency", "3ms", 3.0, None),
    ("latency", "0.002s", 2.0, None), ("latency", 2, 2000.0, None),
])
def test_parse_target(metric, target, limit, share):
    budget = parse_target(metric, target, 1000.0 if metric != "latency" else 10.0)
    assert budget.limit == pytest.approx(limit) and budget.share == share


@pytest.mark.parametrize("metric,target,match", [
    ("macs", 0, "> 0"), ("macs", "lots", "count"), ("latency", "3 parsecs", "unit"), ("params", True, "number"),
])
def test_parse_target_rejects(metric, target, match):
    with pytest.raises((ValueError, TypeError), match=match):
        parse_target(metric, target, 1000.0)


# -- end to end -----------------------------------------------------------------------------


class TwoLayerNet(nn.Module):
    """1x1 stem (3 input channels: too few to search) -> pw1 at 16x16 (its weight is an SCC's at cg=8: cheap to keep) -> stride 2 ->
    pw2 at 8x8 (dense random: every cut costs) -> head; plus a 1x1 conv with 8 input
    channels that min_channels=16 keeps out of the search."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 1)
        self.pw1 = nn.Conv2d(32, 32, 1, bias=False)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.pw2 = nn.Conv2d(32, 32, 1, bias=False)
        self.small = nn.Conv2d(32, 8, 1)
        self.tiny = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)
        scc = SCCConv2d(32, 32, 8, 0.5)
        with torch.no_grad():
            self.pw1.weight.copy_(dense_weight(scc.weight.detach().double(), 32, 8, 0.5).float()[:, :, None, None])

    def forward(self, x):
        x = self.act(self.pw1(self.act(self.stem(x))))
        x = self.act(self.pw2(self.pool(x)))
        x = self.tiny(self.act(self.small(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TwoLayerNet().eval()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(24, 3, 16, 16, generator=gen), torch.randn(48, 3, 16, 16, generator=gen)


def _macs(model, x):
    return profile(model, example_input=x[:1], latency=False).before.macs


def test_search_meets_macs_budgets_and_round_trips_through_convert(net, data):
    calib, held = data
    full = _macs(net, calib)
    for target in (0.45, 0.7, int(0.6 * full)):
        result = search(net, calib, target_macs=target, eval_data=held, check_uniform=False)
        limit = target * full if target <= 1 else target
        assert result.budget.limit == pytest.approx(limit)
        assert result.measured["macs"] <= limit and result.measured["met"]
        assert result.predicted["macs"] == result.measured["macs"] == _macs(result.model, calib)
        assert set(result.overrides) == {"pw1", "pw2", "small"}
        again, report = convert(net, overrides=result.overrides, calib_data=calib)
        assert {r.name: (r.cg, r.co) for r in report.converted} == {k: (v["cg"], v["co"]) for k, v in result.overrides.items()}
        assert _macs(again, calib) == result.measured["macs"]
        for (k, a), b in zip(again.state_dict().items(), result.model.state_dict().values()):
            assert torch.equal(a, b), k


def test_search_beats_uniform_at_the_same_cost(net, data):
    calib, held = data
    uniform, _ = convert(net, cg=4, co=0.5, calib_data=calib)
    result = search(net, calib, target_macs=_macs(uniform, calib), eval_data=held, check_uniform=False)
    assert result.overrides["pw1"]["cg"] == 8  # representable at cg=8: the cheapest exact choice
    assert result.overrides["pw2"]["cg"] < 4  # the budget it saves goes to the dense layer
    from scc_convert.quality import agreement

    assert agreement(net, result.model, held).kl < 0.5 * agreement(net, uniform, held).kl


def test_search_keeps_skipped_layers_out_and_says_why(net, data):
    calib, held = data
    result = search(net, calib, target_macs=0.6, eval_data=held, exclude="small", check_uniform=False)
    assert set(result.overrides) == {"pw1", "pw2"}
    assert "min_channels" in result.skipped["tiny"] and "excluded" in result.skipped["small"]
    assert "min_channels" in result.skipped["stem"]
    assert "not searched: " in str(result) and "tiny" in str(result)
    again, report = convert(net, **{k: v for k, v in result.convert_kwargs.items()}, calib_data=calib)
    assert {r.name for r in report.converted} == {"pw1", "pw2"}


def test_a_budget_below_the_cheapest_names_the_cheapest(net, data):
    calib, held = data
    full = _macs(net, calib)
    with pytest.raises(ValueError, match=r"below the cheapest reachable macs, [0-9.]+K") as info:
        search(net, calib, target_macs=0.05, eval_data=held)
    assert "\n" not in str(info.value)
    # every searched layer at cg=8: what the message names
    searched = (32 * 32 * 256, 32 * 32 * 64, 8 * 32 * 64)  # pw1, pw2, small
    cheapest = full - sum(searched) + sum(m // 8 for m in searched)
    assert f"{cheapest / 1e3:.2f}K" in str(info.value)


def test_search_argument_errors(net, data):
    calib, held = data
    with pytest.raises(ValueError, match="exactly one of"):
        search(net, calib)
    with pytest.raises(ValueError, match="exactly one of"):
        search(net, calib, target_macs=0.5, target_params=0.5)
    with pytest.raises(ValueError, match=r"\['std'\] are not searched"):
        search(net, calib, target_macs=0.5, patterns=("std",))
    with pytest.raises(ValueError, match="cg"):
        search(net, calib, target_macs=0.5, cgs=(0,))
    with pytest.raises(ValueError, match="no layer to search"):
        search(net, calib, target_macs=0.5, include="nothing*")


def test_params_budget_and_the_uniform_check(net, data):
    calib, held = data
    result = search(net, calib, target_params=0.8, eval_data=held)
    full = sum(p.numel() for p in net.parameters())
    assert result.measured["params"] == sum(p.numel() for p in result.model.parameters()) <= 0.8 * full
    kinds = [p.kind for p in result.points]
    assert kinds[0] == "searched" and "uniform" in kinds  # the uniform setting within budget was measured too
    best = min(result.points, key=lambda p: p.kl)
    assert result.measured["kl"] == pytest.approx(best.kl)


def test_latency_budget_reports_per_layer_timings(net, data):
    calib, held = data
    result = search(net, calib, target_latency="1s", eval_data=held, check_uniform=False, corrections=0)
    assert result.budget.metric == "latency" and result.original["latency_ms"] > 0
    assert all(r.latency_before_ms > 0 and r.latency_after_ms > 0 for r in result.layers)
    # the prediction (the original's latency minus the per-layer savings) is a number; its
    # accuracy is the benchmark's business, not a unit test's
    assert math.isfinite(result.predicted["latency_ms"]) and result.measured["latency_ms"] > 0
    assert math.isfinite(result.measured["kl"])


def test_holdout_split_and_json(net, data):
    calib, _ = data
    result = search(net, calib, target_macs=0.6, holdout=0.25, check_uniform=False)
    assert result.eval_images == 6
    payload = result.to_dict()
    assert payload["overrides"] == result.overrides and payload["measured"]["met"]
    assert result.to_json().startswith("{") and result.overrides_json().strip().startswith("{")
