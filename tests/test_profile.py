"""Tests of scc_convert.profile: counts against hand formulas, the report's structure and the
poster's CIFAR MobileNet table (DSXplore, Table IV)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import scc_convert
from scc_convert import SCCConv2d
from scc_convert.profile import ProfileReport, profile

ROOT = Path(__file__).resolve().parents[1]


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- hand formulas (independent of torch's flop counter) -------------------------------------


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def conv_macs(n: int, ho: int, wo: int, cout: int, cin: int, groups: int, kh: int, kw: int) -> int:
    return n * ho * wo * cout * (cin // groups) * kh * kw


def linear_macs(n: int, fin: int, fout: int) -> int:
    return n * fin * fout


def scc_macs(n: int, h: int, w: int, cout: int, cin: int, cg: int) -> int:
    return n * h * w * cout * (cin // cg)


def count(before, after=None, **kwargs) -> ProfileReport:
    kwargs.setdefault("latency", False)
    return profile(before, after, **kwargs)


# -- forward MACs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cin, cout, k, stride, pad, groups, size, bias",
    [
        (3, 8, 3, 1, 1, 1, 9, True),
        (3, 8, 3, 2, 1, 1, 9, False),
        (8, 8, 3, 1, 1, 8, 7, True),  # depthwise
        (8, 12, 3, 2, 0, 4, 10, False),  # grouped, no padding
        (16, 32, 1, 1, 0, 1, 5, False),  # pointwise
        (6, 4, 5, 3, 2, 2, 11, True),
    ],
)
def test_conv_macs_match_hand_formula(cin, cout, k, stride, pad, groups, size, bias):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=bias)
    n = 2
    report = count(conv, input_shape=(n, cin, size, size))
    o = conv_out(size, k, stride, pad)
    expected = conv_macs(n, o, o, cout, cin, groups, k, k)
    assert report.before.macs == expected
    assert report.before.flops == 2 * expected
    assert report.before.params == conv.weight.numel() + (cout if bias else 0)


@pytest.mark.parametrize(
    "cin, cout, cg, co, stride, size",
    [
        (8, 8, 2, 0.5, 1, 6),
        (16, 24, 4, 0.25, 1, 5),
        (12, 6, 3, 0.0, 2, 9),  # strided: subsample, then SCC
        (32, 64, 8, 0.5, 1, 4),
        (10, 10, 1, 0.0, 1, 3),
    ],
)
def test_scc_macs_match_hand_formula(cin, cout, cg, co, stride, size):
    layer = SCCConv2d(cin, cout, cg, co, stride=stride)
    report = count(layer, input_shape=(3, cin, size, size))
    s = (size - 1) // stride + 1
    assert report.before.macs == scc_macs(3, s, s, cout, cin, cg)
    assert report.before.flops == 2 * report.before.macs
    assert report.before.params == cout * (cin // cg)


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def test_model_total_and_per_layer_macs():
    model = _small_cnn()
    n, size = 2, 16
    report = count(model, input_shape=(n, 3, size, size))
    o = conv_out(size, 3, 2, 1)
    per_layer = {
        "0": conv_macs(n, o, o, 8, 3, 1, 3, 3),
        "1": 0,  # BatchNorm: counted as folded
        "3": conv_macs(n, o, o, 8, 8, 8, 3, 3),
        "4": conv_macs(n, o, o, 16, 8, 1, 1, 1),
        "7": linear_macs(n, 16, 5),
    }
    assert report.before.macs == sum(per_layer.values())
    assert {layer.name: layer.macs for layer in report.before.layers} == per_layer
    assert {layer.name: layer.type for layer in report.before.layers} == {
        "0": "Conv2d", "1": "BatchNorm2d", "3": "Conv2d", "4": "Conv2d", "7": "Linear"
    }
    assert sum(layer.params for layer in report.before.layers) == report.before.params


def test_functional_ops_in_forward_are_attributed_to_the_module_running_them():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1, bias=False)
            self.w = nn.Parameter(torch.randn(6, 4))

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x).mean((2, 3)) @ self.w.t()

    report = count(Net(), input_shape=(3, 4, 5, 5))
    rows = {layer.name: layer for layer in report.before.layers}
    assert rows["conv"].macs == conv_macs(3, 5, 5, 4, 4, 1, 1, 1)
    assert rows[""].macs == linear_macs(3, 4, 6)
    assert rows[""].params == 24
    assert "(top level)" in str(report)


# -- training (backward) counts ---------------------------------------------------------------


def test_train_counts_correct_grouped_conv_weight_gradient():
    # PyTorch 2.14's formula for aten.convolution_backward counts the weight gradient of a
    # grouped conv `groups` times too high; profile() must give the true count: every
    # gradient of a conv costs its forward MACs (grad_weight always, grad_input when the
    # input needs a gradient, i.e. not for the first layer).
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: upstream overcounts by 8
        nn.Conv2d(8, 16, 3, padding=1, groups=4),  # grouped: upstream overcounts by 4
        nn.Conv2d(16, 16, 1, groups=16),
    )
    n, s = 2, 6
    fwd = [
        conv_macs(n, s, s, 8, 4, 1, 3, 3),
        conv_macs(n, s, s, 8, 8, 8, 3, 3),
        conv_macs(n, s, s, 16, 8, 4, 3, 3),
        conv_macs(n, s, s, 16, 16, 16, 1, 1),
    ]
    train = [2 * fwd[0]] + [3 * f for f in fwd[1:]]
    report = count(model, input_shape=(n, 4, s, s), train=True)
    assert report.before.macs == sum(fwd)
    assert report.before.train_macs == sum(train)


def test_train_counts_transposed_grouped_conv():
    conv = nn.ConvTranspose2d(8, 12, 3, stride=2, groups=4, bias=False)
    n, size = 2, 5
    fwd = n * size * size * 8 * (12 // 4) * 9  # transposed: every input pixel meets the kernel
    report = count(conv, input_shape=(n, 8, size, size), train=True)
    assert report.before.macs == fwd
    assert report.before.train_macs == 2 * fwd  # forward + weight gradient (no input gradient)


def test_train_counts_scc_and_linear():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1, bias=False),
        SCCConv2d(16, 16, cg=4, co=0.5),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    n = 2
    fwd = [conv_macs(n, 4, 4, 16, 3, 1, 1, 1), scc_macs(n, 4, 4, 16, 16, 4), linear_macs(n, 256, 10)]
    report = count(model, input_shape=(n, 3, 4, 4), train=True)
    assert report.before.macs == sum(fwd)
    assert report.before.train_macs == 2 * fwd[0] + 3 * fwd[1] + 3 * fwd[2]


def test_profile_leaves_the_callers_model_untouched():
    model = _small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    bn_mean = model[1].running_mean.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count(model, input_shape=(2, 3, 8, 8), train=True)
    count(model, input_shape=(2, 3, 8, 8), dtype=torch.float64)
    assert model.training
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, bn_mean)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model[0].weight.dtype == torch.float32


# -- parameters and size -----------------------------------------------------------------------


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 4, bias=False)
        self.hidden = nn.Linear(4, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.tied = nn.Linear(6, 4, bias=False)
        self.tied.weight = self.embed.weight  # shared: counted once

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(self.embed(x))) + self.tied(x).sum()


def test_tied_weight_counts_once():
    model = _Tied()
    report = count(model, input_shape=(3, 6))
    expected = 6 * 4 + (4 * 4 + 4) + 4 * 6  # embed (= tied) + hidden + out
    assert report.before.params == expected
    assert report.before.size_bytes == {"float32": 4 * expected}
    rows = {layer.name: layer for layer in report.before.layers}
    assert rows["embed"].params == 24 and rows["tied"].params == 0
    assert rows["tied"].macs == linear_macs(3, 6, 4)
    assert sum(layer.params for layer in report.before.layers) == expected


def test_model_size_bytes_per_dtype():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1)  # 6 + 3 float params
            self.register_buffer("index", torch.zeros(5, dtype=torch.int64))
            self.register_buffer("table", torch.zeros(7, dtype=torch.bfloat16))

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x)

    model = Mixed()
    kept = count(model, input_shape=(1, 2, 3, 3), dtype=None)
    assert kept.before.size_bytes == {"float32": 9 * 4, "int64": 5 * 8, "bfloat16": 7 * 2}
    assert kept.before.total_size_bytes == 36 + 40 + 14
    cast = count(model, input_shape=(1, 2, 3, 3), dtype=torch.float64)
    assert cast.before.size_bytes == {"float64": (9 + 7) * 8, "int64": 5 * 8}
    assert cast.environment["dtype"] == "float64"


def test_dtype_none_keeps_the_models_dtype():
    conv = nn.Conv2d(3, 4, 1, bias=False).to(torch.bfloat16)
    report = count(conv, input_shape=(2, 3, 4, 4), dtype=None)
    assert report.environment["dtype"] == "bfloat16"
    assert report.before.size_bytes == {"bfloat16": 12 * 2}
    assert report.before.macs == conv_macs(2, 4, 4, 4, 3, 1, 1, 1)


# -- the before/after report ------------------------------------------------------------------


def _before_after() -> tuple[nn.Module, nn.Module]:
    before = nn.Sequential()
    before.add_module("stem", nn.Conv2d(8, 16, 3, padding=1, bias=False))
    before.add_module("dw", nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False))
    before.add_module("pw", nn.Conv2d(16, 32, 1, bias=False))
    after = nn.Sequential()
    after.add_module("stem", nn.Sequential(  # a KxK conv factorised into DW + SCC
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), SCCConv2d(8, 16, cg=2, co=0.5)
    ))
    after.add_module("dw", nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False))
    after.add_module("pw", SCCConv2d(16, 32, cg=4, co=0.5))
    return before, after


def test_rows_joined_by_module_name():
    before, after = _before_after()
    n, s = 1, 6
    report = count(before, after, input_shape=(n, 8, s, s))
    rows = {r.name: r for r in report.layers}
    assert list(rows) == ["stem", "dw", "pw"]
    assert (rows["stem"].type_before, rows["stem"].type_after) == ("Conv2d", "Conv2d + SCCConv2d")
    assert (rows["pw"].type_before, rows["pw"].type_after) == ("Conv2d", "SCCConv2d")
    assert (rows["dw"].type_before, rows["dw"].type_after) == ("Conv2d", "Conv2d")
    assert rows["stem"].macs_before == conv_macs(n, s, s, 16, 8, 1, 3, 3)
    assert rows["stem"].macs_after == conv_macs(n, s, s, 8, 8, 8, 3, 3) + scc_macs(n, s, s, 16, 8, 2)
    assert rows["pw"].macs_after == scc_macs(n, s, s, 32, 16, 4)
    assert rows["pw"].params_before == 16 * 32 and rows["pw"].params_after == 32 * 4
    assert sum(r.macs_before for r in report.layers) == report.before.macs
    assert sum(r.macs_after for r in report.layers) == report.after.macs
    text = str(report)
    assert "Conv2d -> SCCConv2d" in text and "Conv2d -> Conv2d + SCCConv2d" in text

    savings = report.savings()
    b, a = report.before.macs, report.after.macs
    assert savings["batches"]["1"]["macs"]["ratio"] == pytest.approx(b / a)
    assert savings["batches"]["1"]["macs"]["saving_pct"] == pytest.approx(100 * (b - a) / b)
    assert savings["params"]["ratio"] == pytest.approx(report.before.params / report.after.params)


def test_report_text_states_convention_and_environment():
    before, after = _before_after()
    report = profile(before, after, input_shape=(2, 8, 6, 6), warmup=1, repeats=3)
    text = str(report)
    assert "MACs" in text and "FLOPs = 2 x MACs" in text and "bias" in text
    assert f"{torch.get_num_threads()} threads" in text
    assert torch.__version__ in text and "float32" in text and "batch: 2" in text
    assert "interleaved" in text and "median" in text


def test_latency_fields_and_batch_sizes():
    before, after = _before_after()
    report = profile(before, after, input_shape=(1, 8, 6, 6), batch_sizes=(1, 3), warmup=1, repeats=4)
    assert [b.batch_size for b in report.before.batches] == [1, 3]
    for model in report.models:
        for b in model.batches:
            lat = b.latency
            assert lat.runs == 4
            assert 0 < lat.q1_ms <= lat.median_ms <= lat.q3_ms
            assert lat.iqr_ms >= 0
            assert b.peak_activation_bytes is None  # CPU
        assert model.batch(3).macs == 3 * model.batch(1).macs
    env = report.environment
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__ and env["device_name"]
    speed = report.savings()["batches"]["3"]["latency_median"]["ratio"]
    assert speed == pytest.approx(report.before.batch(3).latency.median_ms / report.after.batch(3).latency.median_ms)


def test_example_input_rows_repeat_to_each_batch_size():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    report = count(conv, example_input=torch.randn(2, 3, 7, 7), batch_sizes=(5,))
    assert report.before.macs == conv_macs(5, 5, 5, 4, 3, 1, 3, 3)


def test_single_model_report():
    report = profile(_small_cnn(), input_shape=(1, 3, 8, 8), warmup=0, repeats=2)
    assert report.after is None and report.savings() == {}
    assert report.before.batches[0].latency.runs == 2
    data = report.to_dict()
    assert list(data["models"]) == ["model"]
    assert all(row["type_after"] is None for row in data["layers"])
    assert "share of MACs" in str(report)


def test_to_json_round_trips():
    before, after = _before_after()
    report = profile(before, after, input_shape=(1, 8, 6, 6), train=True, warmup=0, repeats=2)
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["models"]["before"]["batches"][0]["macs"] == report.before.macs
    assert data["models"]["after"]["batches"][0]["flops"] == 2 * report.after.macs
    assert data["models"]["after"]["batches"][0]["train_macs"] == report.after.train_macs
    assert data["settings"]["input_shape"] == [1, 8, 6, 6]
    assert "FLOPs = 2 x MACs" in data["convention"]["macs"]


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    before, after = _before_after()
    report = profile(before, after, input_shape=(1, 8, 6, 6), batch_sizes=(1, 2), warmup=0, repeats=2)
    path = tmp_path / "profile.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    count_only = count(before, after, input_shape=(1, 8, 6, 6))
    count_only.plot(tmp_path / "counts.png")
    assert (tmp_path / "counts.png").stat().st_size > 0


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    report = count(_small_cnn(), input_shape=(1, 3, 8, 8))
    with pytest.raises(ImportError, match=r"pip install scc-convert\[plot\]"):
        report.plot("unused.png")


# -- ops without a FLOP formula ---------------------------------------------------------------


@torch.library.custom_op("scc_profile_test::mystery", mutates_args=())
def _mystery(x: Tensor) -> Tensor:
    return torch.matmul(x, x.transpose(-1, -2))


@torch.library.custom_op("scc_profile_test::known", mutates_args=())
def _known(x: Tensor) -> Tensor:
    return x * 2


@register_flop_formula(torch.ops.scc_profile_test.known)
def _known_flop(x_shape, *, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape)


class _UsesCustomOps(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(self.conv(x))


def test_unknown_custom_op_is_reported_not_silently_zero():
    with pytest.warns(RuntimeWarning, match="scc_profile_test::mystery"):
        report = count(_UsesCustomOps(_mystery), input_shape=(1, 3, 4, 4))
    assert report.before.unknown_ops == {"scc_profile_test::mystery": 1}
    assert any("scc_profile_test::mystery" in w for w in report.warnings)
    assert "WARNING" in str(report)
    assert report.to_dict()["warnings"] == report.warnings


def test_custom_op_with_a_formula_is_counted_and_not_flagged(recwarn):
    report = count(_UsesCustomOps(_known), input_shape=(1, 3, 4, 4))
    assert report.before.macs == conv_macs(1, 4, 4, 3, 3, 1, 1, 1) + 3 * 4 * 4
    assert report.warnings == [] and report.before.unknown_ops == {}
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# -- errors ---------------------------------------------------------------------------------------


def test_wrong_input_shape_names_shape_and_model_error():
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\)") as info:
        count(nn.Conv2d(3, 8, 3), input_shape=(1, 4, 8, 8))
    assert "channels" in str(info.value)  # the model's own message travels with it
    with pytest.raises(ValueError, match=r"after model .*\(1, 8, 6, 6\)"):
        count(nn.Conv2d(8, 16, 1), nn.Conv2d(4, 16, 1), input_shape=(1, 8, 6, 6))


@pytest.mark.parametrize("shape", [(), (1, 0, 8, 8), (1, -3, 8, 8), (1, 3.0, 8, 8), "1,3,8,8"])
def test_invalid_input_shape_is_rejected(shape):
    with pytest.raises(ValueError, match="input_shape"):
        count(nn.Conv2d(3, 8, 1), input_shape=shape)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"batch_sizes": (0,)}, "batch_sizes"), ({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
     ({"dtype": torch.int32}, "dtype"), ({"device": "nonsense"}, "device")],
)
def test_invalid_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        profile(nn.Conv2d(3, 8, 1), input_shape=(1, 3, 4, 4), **kwargs)


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="after must be a torch.nn.Module"):
        profile(nn.Conv2d(3, 8, 1), "model.pt")


def test_latency_refuses_to_run_inside_a_dispatch_mode():
    with FlopCounterMode(display=False):
        with pytest.raises(RuntimeError, match="outside any TorchDispatchMode"):
            profile(nn.Conv2d(3, 8, 1), input_shape=(1, 3, 4, 4), warmup=0, repeats=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_reports_memory_and_event_timing():
    before, after = _before_after()
    report = profile(before, after, input_shape=(4, 8, 16, 16), device="cuda", warmup=2, repeats=5)
    assert report.environment["device"].startswith("cuda")
    assert report.environment["device_name"] == torch.cuda.get_device_name()
    assert report.environment["threads"] is None
    for model in report.models:
        assert model.batches[0].peak_activation_bytes > 0
        assert model.batches[0].latency.median_ms > 0
    cpu = count(before, after, input_shape=(4, 8, 16, 16))
    assert (report.before.macs, report.after.macs) == (cpu.before.macs, cpu.after.macs)
    assert next(before.parameters()).device.type == "cpu"  # the caller's model is not moved


# -- the poster's CIFAR MobileNet (DSXplore, Table IV) ---------------------------------------------

# The 13 DW+PW blocks as the poster's configuration lists them: (output channels, stride).
_POSTER_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                  (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _poster_hand_counts() -> tuple[int, int, list[tuple[int, int, int]]]:
    """MACs and parameters of the CIFAR MobileNet by hand, and (H*W, Cin, Cout) of each PW."""
    size, cin = 32, 32
    macs = conv_macs(1, 32, 32, 32, 3, 1, 3, 3)
    params = 3 * 32 * 9 + 2 * 32  # stem conv + BN
    pointwise = []
    for cout, stride in _POSTER_BLOCKS:
        size //= stride
        macs += conv_macs(1, size, size, cin, cin, cin, 3, 3) + conv_macs(1, size, size, cout, cin, 1, 1, 1)
        params += cin * 9 + cin + 2 * cin + cin * cout + 2 * cout  # DW (+bias), BN, PW, BN
        pointwise.append((size * size, cin, cout))
        cin = cout
    macs += linear_macs(1, 1024, 10)
    params += 1024 * 10 + 10
    return macs, params, pointwise


def test_cifar_mobilenet_matches_hand_counts():
    model = _load_example("cifar_mobilenet").cifar_mobilenet()
    macs, params, _ = _poster_hand_counts()
    report = count(model, input_shape=(1, 3, 32, 32))
    assert report.before.macs == macs == 46_354_432
    assert report.before.params == params == 3_222_186
    pw_rows = [r for r in report.before.layers if r.name.endswith(".pw")]
    assert len(pw_rows) == 13


# Table IV: baseline 67.31 MFLOPs (the poster's "FLOPs" are MACs), DW+SCC cg2/4/8 at
# 45.29/34.28/28.78 MFLOPs and 1.63M/0.84M/0.45M parameters. Each poster number is rounded
# to 0.01M, so the poster's MAC reductions 67.31-45.29=22.02, 67.31-34.28=33.03 and
# 67.31-28.78=38.53 carry up to 0.01M of rounding; the exact reductions are checked against
# the hand formula N*H*W*Cout*Cin*(1 - 1/cg) summed over the 13 pointwise convs.
@pytest.mark.parametrize("cg, poster_saving_m, poster_params_m", [(2, 22.02, 1.63), (4, 33.03, 0.84), (8, 38.53, 0.45)])
def test_poster_table_mobilenet_dw_scc(cg, poster_saving_m, poster_params_m):
    model = _load_example("cifar_mobilenet").cifar_mobilenet().eval()
    small, _ = scc_convert.convert(
        model, cg=cg, co=0.5, patterns=("dw_pw",), example_inputs=torch.randn(1, 3, 32, 32)
    )
    sccs = [m for m in small.modules() if isinstance(m, SCCConv2d)]
    assert len(sccs) == 13 and all((m.cg, m.co) == (cg, 0.5) for m in sccs)
    assert not [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]

    report = count(model, small, input_shape=(1, 3, 32, 32))
    saving = report.before.macs - report.after.macs
    _, _, pointwise = _poster_hand_counts()
    assert saving == sum(hw * cin * cout - hw * cout * (cin // cg) for hw, cin, cout in pointwise)
    assert abs(saving / 1e6 - poster_saving_m) < 0.01
    assert abs(report.after.params / 1e6 - poster_params_m) < 0.05
