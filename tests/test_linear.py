"""SCCLinear (SCC over the last dimension) and the ``linear`` pattern: the layer against the
dense masked-weight reference, and conversion of ConvNeXt-Tiny and a timm MLP-block model."""

import copy
import io

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model_checks import expected_saving, total_macs, unit_layer_scale
from reference import dense_weight
from scc_convert import SCCLinear, convert, finetune


def linear_reference(x, weight, bias, *, cg, co, window_of=None):
    """fp64 ``x @ W_dense^T + b`` with the masked dense weight of the SCC."""
    wd = dense_weight(weight, x.shape[-1], cg, co, window_of)
    y = x.double() @ wd.t()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24), (2, 4, 3, 24), (24,)])
@pytest.mark.parametrize("cg,co,bias", [(4, 0.5, True), (3, 0.0, False), (1, 0.5, True), (8, 0.25, True)])
def test_forward_matches_reference(shape, cg, co, bias):
    layer = SCCLinear(24, 18, cg=cg, co=co, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear_reference(x, layer.weight, layer.bias, cg=cg, co=co), atol=1e-10, rtol=0)


def test_non_contiguous_input_and_window_of():
    layer = SCCLinear(16, 24, cg=4, co=0.5).double()
    window_of = [(o * 5) % 8 for o in range(24)]
    layer.set_window_of(window_of)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64).permute(0, 2, 3, 1)  # channels-last view, as ConvNeXt feeds it
    want = linear_reference(x, layer.weight, layer.bias, cg=4, co=0.5, window_of=window_of)
    torch.testing.assert_close(layer(x), want, atol=1e-10, rtol=0)


def test_gradients_match_reference():
    layer = SCCLinear(12, 10, cg=3, co=0.5).double()
    x = torch.randn(4, 7, 12, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    linear_reference(x_ref, w_ref, b_ref, cg=3, co=0.5).square().sum().backward()
    for got, want in ((x.grad, x_ref.grad), (layer.weight.grad, w_ref.grad), (layer.bias.grad, b_ref.grad)):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def test_macs_are_counted_by_the_op_formula():
    layer = SCCLinear(64, 256, cg=4, co=0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(2, 5, 64))
    assert counter.get_total_flops() == 2 * (2 * 5) * 256 * 16


def test_module_protocol():
    layer = SCCLinear(32, 48, cg=4, co=0.5, window_of=[(o * 3) % 8 for o in range(48)])
    assert repr(layer) == "SCCLinear(in_features=32, out_features=48, cg=4, co=0.5, gw=8, cd=8, window_of=custom)"
    assert layer.in_features == 32 and layer.out_features == 48 and layer.weight.shape == (48, 8)
    fresh = SCCLinear(32, 48, cg=4, co=0.5)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.window_of == layer.window_of
    x = torch.randn(3, 32)
    torch.testing.assert_close(fresh(x), layer(x))
    torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(layer), buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), layer(x))


def test_export_program_keeps_one_scc_op(tmp_path):
    from scc_convert.export import export_program

    model = nn.Sequential(nn.Linear(8, 32), SCCLinear(32, 16, cg=4, co=0.5)).eval()
    export_program(model, torch.randn(2, 8), tmp_path / "m.pt2")
    graph = torch.export.load(tmp_path / "m.pt2").graph
    assert sum(node.target is torch.ops.scc.scc_conv2d.default for node in graph.nodes) == 1


class MLPBlocks(nn.Module):
    """A conv stem, then pointwise MLP blocks on channels-last tokens, then a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.fc1 = nn.Linear(32, 128)
        self.fc2 = nn.Linear(128, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        t = self.stem(x).permute(0, 2, 3, 1)
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(dim=(1, 2)))


def test_linear_layers_are_reported_when_the_pattern_is_off():
    _, report = convert(MLPBlocks(), example_inputs=(1, 3, 16, 16))
    reasons = {r.name: r.reason for r in report.layers}
    assert reasons["fc1"] == reasons["fc2"] == reasons["head"] == "pattern 'linear' not enabled (patterns=['dw_pw', 'pw'])"
    assert {r.pattern for r in report.layers if r.name != "stem"} == {"linear"}


def test_linear_pattern_converts_and_leaves_the_head():
    torch.manual_seed(0)
    model = MLPBlocks().eval()
    x = torch.randn(2, 3, 16, 16)
    small, report = convert(model, cg=4, patterns=("linear",), example_inputs=x)
    assert [r.name for r in report.converted] == ["fc1", "fc2"]
    assert isinstance(small.fc1, SCCLinear) and isinstance(small.fc2, SCCLinear) and type(small.head) is nn.Linear
    assert report.layers[-1].reason == "the model's output layer (classifier head): name it in include= to convert it"
    assert "32->128 fc" in str(report)
    rec = report.converted[0]
    assert rec.macs_before == 2 * 4 * 4 * 128 * 32 and rec.macs_after == 2 * 4 * 4 * 128 * 8
    with_head, report = convert(model, cg=4, patterns=("linear",), include=["fc*", "head"], example_inputs=x)
    assert isinstance(with_head.head, SCCLinear) and len(report.converted) == 3


def test_lsq_fits_linear_layers_better_than_slicing():
    torch.manual_seed(0)
    model = MLPBlocks().eval()
    calib = torch.randn(16, 3, 16, 16)
    sliced, _ = convert(model, cg=4, patterns=("linear",), example_inputs=calib[:1])
    fitted, report = convert(model, cg=4, patterns=("linear",), init="lsq", calib_data=calib)
    assert all(r.calib_error is not None and r.calib_error < 1 for r in report.converted)
    with torch.no_grad():
        want = model(calib)
        assert (fitted(calib) - want).square().mean() < (sliced(calib) - want).square().mean()


def test_feature_distillation_pairs_linear_layers():
    torch.manual_seed(0)
    teacher = MLPBlocks()
    student, _ = convert(teacher, cg=4, patterns=("linear",), example_inputs=(1, 3, 16, 16))
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    result = finetune(student, data, teacher=teacher, kd_alpha=0.0, feature_kd=True, epochs=1, progress=False)
    assert result.steps == 2


def test_convnext_tiny():
    torch.manual_seed(0)
    model = unit_layer_scale(torchvision.models.convnext_tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    _, default = convert(model, example_inputs=x)
    assert default.converted == [] and sum(r.pattern == "linear" for r in default.layers) == 37
    small, report = convert(model, cg=4, patterns=("dw_pw", "pw", "linear"), example_inputs=x)
    assert len(report.converted) == 36 and all(isinstance(small.get_submodule(r.name), SCCLinear) for r in report.converted)
    saving = expected_saving(model, small, report, x)
    assert total_macs(model, x) - total_macs(small, x) == saving > 0
    assert report.totals()["macs_before"] - report.totals()["macs_after"] == saving
    exact, _ = convert(model, cg=1, patterns=("linear",), example_inputs=x)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(exact(x), want, atol=1e-5 * want.abs().max().item(), rtol=1e-4)
        assert (small(x) - want).abs().max() > 1e-2 * want.abs().max()  # cg=4 does change it


def test_timm_mlp_block_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    small, report = convert(model, cg=2, patterns=("linear",), example_inputs=x)
    linear = [r.name for r in report.converted]
    assert linear and all(".mlp." in n or ".attn." in n for n in linear)
    saving = expected_saving(model, small, report, x)
    assert total_macs(model, x) - total_macs(small, x) == saving > 0
    exact, _ = convert(model, cg=1, patterns=("dw_pw", "pw", "linear"), example_inputs=x)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(exact(x), want, atol=1e-5 * want.abs().max().item(), rtol=1e-4)
