"""convert(): patterns, policy, weight transfer, the returned model, and the report."""

import copy
import io
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference import dense_weight
from scc_convert import ConversionReport, DWSCCConv2d, SCCConv2d, convert
from scc_convert.convert.transfer import energy_assignment, factorise_standard, kept_energy, slice_weight
from scc_convert.geometry import SCCGeometry


class DwPwNet(nn.Module):
    """stem (3x3 std) -> depthwise -> BN -> ReLU -> pw (dw_pw) -> ReLU6 -> strided 1x1 (pw) -> head."""

    def __init__(self, c=32, branch=False):
        super().__init__()
        self.branch = branch
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.expand = nn.Conv2d(2 * c, 2 * c, 1, stride=2, bias=True)
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.bn(self.dw(x)))
        if self.branch:
            y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        x = self.expand(F.relu6(self.pw(y)))
        return self.head(x.mean((2, 3)))


def dw_pw_net(c=32, branch=False):
    return DwPwNet(c, branch)


def randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_patterns_are_found_from_the_graph():
    _, report = convert(dw_pw_net(), cg=4, co=0.5, patterns=("dw_pw", "pw", "std"), min_channels=1)
    found = {r.name: r.pattern for r in report.layers}
    assert found["pw"] == "dw_pw" and found["expand"] == "pw" and found["stem"] == "std"
    assert "dw" not in found  # a depthwise conv is not a candidate
    assert report.trace == "fx" and all(r.verified for r in report.layers)


def test_branching_breaks_dw_pw():
    _, report = convert(dw_pw_net(branch=True), cg=4, co=0.5)
    assert {r.name: r.pattern for r in report.layers}["pw"] == "pw"


def test_pattern_selection_and_reasons():
    model = dw_pw_net()
    small, report = convert(model, cg=4, co=0.5, patterns=("dw_pw",))
    by = {r.name: r for r in report.layers}
    assert by["pw"].converted and isinstance(small.pw, SCCConv2d)
    assert not by["expand"].converted and "pattern 'pw' not enabled" in by["expand"].reason
    assert isinstance(small.expand, nn.Conv2d)


def test_input_model_is_unchanged_unless_inplace():
    model = dw_pw_net()
    before = copy.deepcopy(model.state_dict())
    small, _ = convert(model, cg=4, co=0.5)
    assert isinstance(model.pw, nn.Conv2d) and small is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    same, _ = convert(model, cg=4, co=0.5, inplace=True)
    assert same is model and isinstance(model.pw, SCCConv2d)


def test_slice_keeps_each_output_window_and_matches_masked_dense_model():
    model = randomize_bn(dw_pw_net()).eval()
    small, report = convert(model, cg=4, co=0.5, min_channels=1)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("pw", "expand"):
            conv = getattr(ref, name)
            scc = getattr(small, name)
            torch.testing.assert_close(scc.weight, slice_weight(conv.weight[:, :, 0, 0], scc.geometry))
            masked = dense_weight(scc.weight.double(), conv.in_channels, 4, 0.5).float()
            conv.weight.copy_(masked[:, :, None, None])
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
    kept = {r.name: r.kept_energy for r in report.converted}
    conv = model.pw.weight[:, :, 0, 0]
    assert kept["pw"] == pytest.approx(kept_energy(conv, small.pw.weight))


def test_cg1_reproduces_the_original():
    model = randomize_bn(dw_pw_net()).eval()
    for co in (0.0, 0.3, 0.5):
        small, _ = convert(model, cg=1, co=co, min_channels=1)
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)


def test_energy_assignment_is_optimal_on_small_layers():
    torch.manual_seed(0)
    geom = SCCGeometry(8, 6, 2, 0.5)  # cd = 4, outputs per window: 2, 2, 1, 1
    w = torch.randn(6, 8)
    best = energy_assignment(w, geom)
    geom.check_window_of(best)
    import itertools

    def kept(wo):
        return slice_weight(w, geom, wo).square().sum().item()

    brute = max(set(itertools.permutations(geom.default_window_of)), key=kept)
    assert kept(best) == pytest.approx(kept(brute))
    assert kept(best) >= kept(None)


def test_energy_init_keeps_more_than_slice():
    model = dw_pw_net(c=64)
    _, r_slice = convert(model, cg=4, co=0.5, init="slice")
    small, r_energy = convert(model, cg=4, co=0.5, init="energy")
    for a, b in zip(r_slice.converted, r_energy.converted):
        assert b.kept_energy >= a.kept_energy - 1e-12
    assert small.pw.window_of != small.pw.geometry.default_window_of


def test_lsq_reconstructs_better_than_slice():
    torch.manual_seed(0)
    model = randomize_bn(dw_pw_net(c=32)).eval()
    # correlated inputs make the layer inputs low-rank-ish, as real activations are
    calib = torch.randn(48, 3, 16, 16).cumsum(-1) / 4
    test = torch.randn(16, 3, 16, 16).cumsum(-1) / 4
    ref = model(test)

    def rel_err(m):
        return ((m(test) - ref).norm() / ref.norm()).item()

    s_slice, _ = convert(model, cg=4, co=0.5, min_channels=1)
    s_lsq, report = convert(model, cg=4, co=0.5, min_channels=1, init="lsq", calib_data=[calib[:24], calib[24:]], progress=False)
    assert all(r.calib_error is not None and 0 <= r.calib_error < 1 for r in report.converted)
    assert model.pw.bias is None and s_lsq.pw.bias is not None  # lsq fits an intercept
    assert rel_err(s_lsq) < 0.7 * rel_err(s_slice)
    assert not s_lsq.training and model.training is False


def test_lsq_with_cg1_is_nearly_exact():
    torch.manual_seed(0)
    model = randomize_bn(dw_pw_net(c=16)).eval()
    small, report = convert(model, cg=1, co=0.5, min_channels=1, init="lsq", calib_data=torch.randn(32, 3, 12, 12), progress=False)
    x = torch.randn(4, 3, 12, 12)
    torch.testing.assert_close(small(x), model(x), atol=1e-3, rtol=1e-3)


def test_lsq_needs_calibration_data():
    with pytest.raises(ValueError, match="init='lsq' needs calib_data"):
        convert(dw_pw_net(), init="lsq")


def test_std_factorisation_recovers_a_separable_kernel():
    torch.manual_seed(0)
    geom = SCCGeometry(8, 12, 2, 0.5)
    d = torch.randn(8, 9, dtype=torch.float64)
    s = torch.randn(12, geom.group_width, dtype=torch.float64)
    k = torch.zeros(12, 8, 9, dtype=torch.float64)
    for o, chans in enumerate(geom.input_channels_of()):
        for j, c in enumerate(chans):
            k[o, c] = s[o, j] * d[c]
    depthwise, weight = factorise_standard(k.reshape(12, 8, 3, 3), geom, iterations=50)
    approx = torch.zeros_like(k)
    for o, chans in enumerate(geom.input_channels_of()):
        for j, c in enumerate(chans):
            approx[o, c] = weight[o, j] * depthwise[c, 0].reshape(-1)
    assert ((approx - k).norm() / k.norm()).item() < 1e-6


def test_std_conversion_keeps_stride_padding_dilation():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, bias=True)
    model = nn.Sequential(conv)
    small, report = convert(model, cg=2, co=0.5, patterns=("std",), min_channels=1, example_inputs=torch.randn(1, 16, 15, 15))
    new = small[0]
    assert isinstance(new, DWSCCConv2d)
    assert (new.depthwise.stride, new.depthwise.padding, new.depthwise.dilation) == ((2, 2), (2, 2), (2, 2))
    x = torch.randn(2, 16, 15, 15)
    assert small(x).shape == model(x).shape
    rec = report.converted[0]
    assert rec.macs_after == 8 * 8 * (16 * 9 + 32 * 8)
    assert 0 < rec.kept_energy <= 1


def test_policy_include_exclude_overrides_min_channels():
    model = dw_pw_net(c=32)
    _, r = convert(model, cg=4, co=0.5, exclude="exp*")
    assert {x.name for x in r.converted} == {"pw"}
    _, r = convert(model, cg=4, co=0.5, include=re.compile(r"e.*d"))
    assert {x.name for x in r.converted} == {"expand"}
    _, r = convert(model, cg=4, co=0.5, include="re:p.")
    assert {x.name for x in r.converted} == {"pw"}
    small, r = convert(model, cg=4, co=0.5, overrides={"exp*": {"cg": 2, "co": 0.25}})
    assert (small.expand.cg, small.expand.co) == (2, 0.25) and small.pw.cg == 4
    _, r = convert(model, cg=4, co=0.5, min_channels=64)
    assert {x.name for x in r.converted} == {"expand"}
    assert "in_channels=32 < min_channels=64" in {x.name: x.reason for x in r.layers}["pw"]
    _, r = convert(model, cg=4, co=0.5, skip_first=True)
    assert {x.name for x in r.converted} == {"expand"}
    _, r = convert(model, cg=4, co=0.5, skip_last=True)
    assert {x.name for x in r.converted} == {"pw"}


def test_indivisible_cg_skip_or_nearest():
    model = nn.Sequential(nn.Conv2d(30, 30, 1))
    _, r = convert(model, cg=4, co=0.5, example_inputs=torch.randn(1, 30, 4, 4))
    assert not r.layers[0].converted and "cg=4 does not divide in_channels=30" in r.layers[0].reason
    small, r = convert(model, cg=4, co=0.5, on_indivisible="nearest", example_inputs=torch.randn(1, 30, 4, 4))
    assert small[0].cg == 3 and "nearest divisor" in r.layers[0].reason


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cg=0), "cg=0 is invalid"),
        (dict(co=1.0), r"outside \[0, 1\)"),
        (dict(patterns=("dw",)), "unknown pattern"),
        (dict(init="magic"), "init='magic'"),
        (dict(on_indivisible="round"), "on_indivisible"),
        (dict(overrides={"pw": {"cg": 3, "x": 1}}), "unknown keys"),
        (dict(overrides={"pw": {"co": 2.0}}), r"overrides\['pw'\]"),
        (dict(min_channels=0), "min_channels"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(dw_pw_net(), **kwargs)


def test_model_failing_on_example_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"failed on an example input of shape \(1, 5, 8, 8\)"):
        convert(dw_pw_net(), example_inputs=torch.randn(1, 5, 8, 8))


def test_train_mode_is_preserved_and_model_trains():
    model = dw_pw_net().train()
    small, _ = convert(model, cg=4, co=0.5)
    assert small.training and all(m.training for m in small.modules())
    out = small(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    assert small.pw.weight.grad is not None


def test_returned_model_is_an_ordinary_module(tmp_path):
    model = randomize_bn(dw_pw_net()).eval()
    small, _ = convert(model, cg=4, co=0.5, init="energy")
    x = torch.randn(2, 3, 8, 8)
    y = small(x)
    fresh, _ = convert(dw_pw_net(), cg=4, co=0.5)
    fresh.load_state_dict(small.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), y)
    path = tmp_path / "m.pt"
    torch.save(small, path)
    torch.testing.assert_close(torch.load(path, weights_only=False)(x), y)
    torch.testing.assert_close(copy.deepcopy(small)(x), y)
    # names of unconverted layers are preserved: their weights load into the original
    partial = {k: v for k, v in small.state_dict().items() if not k.startswith(("pw.", "expand."))}
    dw_pw_net().load_state_dict(partial, strict=False)
    compiled = torch.compile(small, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), y)


def test_report_table_and_json():
    _, report = convert(dw_pw_net(), cg=4, co=0.5, example_inputs=torch.randn(2, 3, 16, 16))
    assert isinstance(report, ConversionReport)
    text = str(report)
    assert "SCC conversion: 2 of 4 candidate layers converted" in text
    assert "pattern 'std' not enabled" in text and "FLOPs = 2 x MACs" in text
    data = json.loads(report.to_json())
    assert data["input_shape"] == [2, 3, 16, 16]
    pw = next(layer for layer in data["layers"] if layer["name"] == "pw")
    assert pw["macs_before"] == 2 * 16 * 16 * 64 * 32 and pw["macs_after"] == 2 * 16 * 16 * 64 * 8
    assert pw["params_after"] == 64 * 8 and pw["cd"] == 8
    assert data["totals"]["macs_before"] - data["totals"]["macs_after"] == sum(
        layer["macs_before"] - layer["macs_after"] for layer in data["layers"])


class DataDependent(nn.Module):
    """fx cannot trace the branch on a tensor value; its children trace fine."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 1))
        self.pw = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        x = self.block(x)
        if x.sum() > 0:
            x = x * 2
        return self.pw(x)


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class CustomAutograd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 1)
        self.b = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        y = Square.apply(self.a(x))
        if y.mean() > 100:  # data-dependent too
            y = y / 2
        return self.b(y)


@pytest.mark.parametrize("factory,names", [(DataDependent, {"block.3", "pw"}), (CustomAutograd, {"a", "b"})])
def test_untraceable_models_still_convert(factory, names):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 16, 8, 8)
    small, report = convert(model, cg=2, co=0.5, example_inputs=x)
    assert report.trace in ("partial", "modules") and report.trace_failures
    assert {r.name for r in report.converted} == names
    assert "did not trace as a whole" in str(report)
    assert small(x).shape == model(x).shape
    exact, _ = convert(model, cg=1, co=0.5, example_inputs=x)
    torch.testing.assert_close(exact(x), model(x), atol=1e-5, rtol=1e-5)


def test_dw_pw_found_inside_traced_submodule_of_untraceable_model():
    _, report = convert(DataDependent(), cg=2, co=0.5, example_inputs=torch.randn(1, 16, 8, 8))
    by = {r.name: r for r in report.layers}
    assert by["block.3"].pattern == "dw_pw" and by["block.3"].verified
    assert by["pw"].pattern == "pw"


def test_shared_and_unused_convs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Conv2d(16, 16, 1)
            self.unused = nn.Conv2d(16, 16, 1)

        def forward(self, x):
            return self.shared(self.shared(x))

    small, report = convert(Net(), cg=2, co=0.5, example_inputs=torch.randn(1, 16, 4, 4))
    by = {r.name: r for r in report.layers}
    assert by["shared"].converted and isinstance(small.shared, SCCConv2d)
    assert not by["unused"].converted and by["unused"].reason == "never called in forward"
    assert by["shared"].macs_before == 16 * 16 * 16  # first call only; both calls share the layer


def test_recalibrate_bn_updates_statistics():
    model = randomize_bn(dw_pw_net()).eval()
    calib = torch.randn(8, 3, 8, 8)
    small, _ = convert(model, cg=4, co=0.5, calib_data=calib, recalibrate_bn=True)
    assert not small.training
    assert not torch.allclose(small.bn.running_mean, model.bn.running_mean)
    with pytest.raises(ValueError, match="recalibrate_bn=True needs calib_data"):
        convert(model, recalibrate_bn=True)


def test_state_dict_of_converted_model_round_trips_through_bytes():
    small, _ = convert(dw_pw_net(), cg=4, co=0.5, init="energy")
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    target, _ = convert(dw_pw_net(), cg=4, co=0.5)
    target.load_state_dict(torch.load(buf))
    assert target.pw.window_of == small.pw.window_of


def test_default_init_is_lsq_with_calibration_data():
    model = randomize_bn(dw_pw_net()).eval()
    _, report = convert(model, cg=4, co=0.5, calib_data=torch.randn(8, 3, 8, 8), progress=False)
    assert report.init == "lsq"
    _, report = convert(model, cg=4, co=0.5)
    assert report.init == "slice"
