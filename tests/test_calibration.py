"""init="lsq": the cross-validated least-squares fit and the sequential (in-context) fitting.

References are independent of the code under test: errors are recomputed from explicit
predictions with the dense masked weight (``reference.dense_weight``)."""

import copy

import pytest
import torch
from torch import nn

from reference import dense_weight
from scc_convert import convert
from scc_convert.convert import calibrate
from scc_convert.convert.build import make_pointwise
from scc_convert.convert.transfer import solve_windows, solve_windows_cv, window_errors, window_solutions
from scc_convert.geometry import SCCGeometry

pytest.importorskip("scipy")

CIN, COUT, CG, CO = 24, 16, 4, 0.5


def _moments(u, y, intercept=True):
    a = torch.cat([u, u.new_ones(u.shape[0], 1)], 1) if intercept else u
    return a.t() @ a, a.t() @ y, y.square().sum(0)


def _explicit_error(u, y, window_of, weight, bias):
    """``[Cout]``: squared residual of the SCC's explicit prediction (dense masked weight)."""
    pred = u @ dense_weight(weight, CIN, CG, CO, window_of).t() + (0 if bias is None else bias)
    return (y - pred).square().sum(0)


def _data(rows, seed, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(CIN, CIN, generator=g, dtype=torch.float64) / CIN**0.5
    truth = torch.randn(COUT, CIN, generator=g, dtype=torch.float64)  # dense: not SCC-representable

    def draw(n, s):
        gg = torch.Generator().manual_seed(s)
        u = torch.randn(n, CIN, generator=gg, dtype=torch.float64) @ mix + 0.5
        return u, u @ truth.t() + noise * torch.randn(n, COUT, generator=gg, dtype=torch.float64)

    return draw(rows, seed + 1), draw(4000, seed + 2), truth


def test_window_errors_are_the_explicit_residuals():
    geom = SCCGeometry(CIN, COUT, CG, CO)
    (u, y), (u2, y2), _ = _data(200, 0)
    window_of, weight, bias, error = solve_windows(*_moments(u, y), geom, intercept=True)
    torch.testing.assert_close(error, _explicit_error(u, y, window_of, weight, bias), rtol=1e-8, atol=1e-8)
    # on other data: the error of every output on every window, from the moments alone
    thetas = window_solutions(*_moments(u, y)[:2], geom, True, ridge=1e-2)
    errors = window_errors(*_moments(u2, y2), geom, True, thetas)
    for w in range(geom.cyclic_distance):
        weight_w = thetas[w][:-1].t()
        bias_w = thetas[w][-1]
        expected = _explicit_error(u2, y2, (w,) * COUT, weight_w, bias_w)
        torch.testing.assert_close(errors[:, w], expected, rtol=1e-8, atol=1e-6)


def _folds(u, y, k=3):
    return [_moments(u[i::k], y[i::k]) for i in range(k)]


def _scc_data(rows, seed, noise):
    """Inputs with correlated channels, and a target that is an SCC of them plus noise; the
    fresh set is noise-free (what a fit should predict)."""
    geom = SCCGeometry(CIN, COUT, CG, CO)
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(CIN, CIN, generator=g, dtype=torch.float64) / CIN**0.5
    true = dense_weight(torch.randn(COUT, geom.group_width, generator=g, dtype=torch.float64), CIN, CG, CO)
    u, u2 = (torch.randn(n, CIN, generator=g, dtype=torch.float64) @ mix + 0.5 for n in (rows, 4000))
    y = u @ true.t() + noise * torch.randn(rows, COUT, generator=g, dtype=torch.float64)
    return geom, true, (u, y), (u2, u2 @ true.t())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_validation_generalises_when_samples_are_scarce(seed):
    geom, _, (u, y), (u2, y2) = _scc_data(20, seed, noise=3.0)  # 20 noisy rows for 13 unknowns per output
    plain = solve_windows(*_moments(u, y), geom, intercept=True)
    cv = solve_windows_cv(_folds(u, y), geom, True, calibrate.RIDGES)
    assert _explicit_error(u2, y2, *cv[:3]).sum() < 0.8 * _explicit_error(u2, y2, *plain[:3]).sum()
    # the refit's in-sample error is reported, as solve_windows does
    torch.testing.assert_close(cv[3], _explicit_error(u, y, *cv[:3]), rtol=1e-8, atol=1e-8)


def test_cross_validation_pulls_toward_the_prior_when_it_is_right():
    geom, true, (u, y), (u2, y2) = _scc_data(15, 2, noise=2.0)
    without = solve_windows_cv(_folds(u, y), geom, True, calibrate.RIDGES)
    with_prior = solve_windows_cv(_folds(u, y), geom, True, calibrate.RIDGES, prior=true)
    assert _explicit_error(u2, y2, *with_prior[:3]).sum() < 0.5 * _explicit_error(u2, y2, *without[:3]).sum()


def test_cross_validation_with_plenty_of_clean_data_is_exact():
    geom = SCCGeometry(CIN, COUT, CG, CO)
    g = torch.Generator().manual_seed(4)
    u = torch.randn(3000, CIN, generator=g, dtype=torch.float64)
    weight = torch.randn(COUT, geom.group_width, generator=g, dtype=torch.float64)
    window_of = tuple((o * 5) % geom.cyclic_distance for o in range(COUT))
    if sorted(window_of) != sorted(geom.default_window_of):
        window_of = geom.default_window_of
    bias = torch.randn(COUT, generator=g, dtype=torch.float64)
    y = u @ dense_weight(weight, CIN, CG, CO, window_of).t() + bias
    got_window_of, got_weight, got_bias, _ = solve_windows_cv(_folds(u, y), geom, True, calibrate.RIDGES)
    assert got_window_of == tuple(window_of)
    torch.testing.assert_close(got_weight, weight, rtol=0, atol=1e-3)
    torch.testing.assert_close(got_bias, bias, rtol=0, atol=1e-3)


def test_folds_hold_out_whole_images():
    images = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 1])
    masks = calibrate._fold_masks(images, 3)
    assert len(masks) == 3
    assert torch.stack(masks).sum(0).eq(1).all()  # every row in exactly one fold
    for m in masks:
        assert not set(images[m].tolist()) & set(images[~m].tolist())
    assert len(calibrate._fold_masks(torch.zeros(5, dtype=torch.long), 3)) == 1  # one image: no split


class Stack(nn.Module):
    """Three 1x1 convs with nonlinearities: errors of early layers reach the later ones."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 1)
        self.b = nn.Conv2d(32, 32, 1)
        self.c = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _parallel_fit(model, x, cg, co):
    """The per-layer fit on the original network's activations (what sequential fitting
    replaces): every layer fitted independently, then stacked."""
    io = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: io.__setitem__(n, (a[0], o)))
             for n in ("a", "b", "c")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = copy.deepcopy(model)
    for name, (inp, target) in io.items():
        conv = getattr(model, name)
        geom = SCCGeometry(conv.in_channels, conv.out_channels, cg, co)
        u = inp.permute(0, 2, 3, 1).reshape(-1, inp.shape[1]).double()
        y = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).double()
        window_of, weight, bias, _ = solve_windows(*_moments(u, y), geom, intercept=True)
        setattr(out, name, make_pointwise(conv, geom, window_of, weight.float(), bias.float()))
    return out


def test_sequential_fitting_beats_fitting_on_the_original_activations():
    torch.manual_seed(0)
    model = Stack().eval()
    calib = torch.randn(64, 16, 6, 6).cumsum(1) / 3  # correlated channels, as real activations are
    test = torch.randn(32, 16, 6, 6).cumsum(1) / 3
    sequential, _ = convert(model, cg=4, co=0.5, min_channels=1, calib_data=calib, progress=False)
    parallel = _parallel_fit(model, calib, 4, 0.5)
    with torch.no_grad():
        ref = model(test)
        err_seq = (sequential(test) - ref).norm() / ref.norm()
        err_par = (parallel(test) - ref).norm() / ref.norm()
    assert err_seq < 0.9 * err_par
