"""Deployment: ONNX (checked in onnxruntime against the fp64 reference), torch.export, TorchScript."""

import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import scc_convert
from reference import scc_reference
from scc_convert import DWSCCConv2d, SCCConv2d, SCCGeometry
from scc_convert import export as scc_export
from scc_convert.export import checks, decomposition
from scc_convert.export import ExportCheckError, choose_decomposition, export_onnx, export_program

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]
FORMS = ["grouped", "dense"]

# (cin, cout, cg, co, what the case covers)
GEOMETRIES = [
    (16, 16, 4, 0.5, "last window wraps"),
    (96, 96, 2, 0.25, "window starts wrap"),
    (16, 20, 4, 0.5, "Cout not a multiple of cd"),
    (12, 5, 4, 0.34, "Cout < cd"),
    (10, 7, 1, 0.3, "cg = 1"),
    (12, 12, 3, 0.0, "co = 0"),
]


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _quiet_deprecations():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX.*")
        yield


def _run_onnx(ort, path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().contiguous().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(y) for y in session.run(None, feed)]


def _nodes(path):
    import onnx

    return list(onnx.load(str(path)).graph.node)


def _conv_groups(path):
    groups = []
    for node in _nodes(path):
        if node.op_type == "Conv":
            groups.append(next((a.i for a in node.attribute if a.name == "group"), 1))
    return sorted(groups)


def _reference(layer, x):
    return scc_reference(
        x, layer.weight, layer.bias, cg=layer.cg, co=layer.co, stride=layer.stride, window_of=layer.window_of
    ).float()


# -- ONNX: one layer against the reference ------------------------------------------------


# Both exporters share the decomposition; the slow dynamo-based one runs the first two cases.
LAYER_CASES = [
    pytest.param(*g[:4], form, dynamo, id=f"{'dynamo' if dynamo else 'torchscript'}-{form}-{g[-1]}")
    for dynamo, geometries in ((False, GEOMETRIES), (True, GEOMETRIES[:1] + GEOMETRIES[2:3]))
    for g in geometries
    for form in FORMS
]


@pytest.mark.parametrize("cin,cout,cg,co,form,dynamo", LAYER_CASES)
def test_onnx_layer_matches_reference(ort, tmp_path, cin, cout, cg, co, form, dynamo):
    torch.manual_seed(0)
    layer = SCCConv2d(cin, cout, cg, co, bias=True)
    path = export_onnx(layer, torch.randn(2, cin, 5, 4), tmp_path / "scc.onnx", dynamo=dynamo, decomposition=form)
    assert all(n.domain in ("", "ai.onnx") for n in _nodes(path)), "only standard ONNX ops"
    cd = layer.geometry.cyclic_distance
    assert _conv_groups(path) == ([cd] if form == "grouped" else [1])
    x = torch.randn(3, cin, 5, 4)  # the batch is dynamic, H and W are not
    (y,) = _run_onnx(ort, path, x)
    torch.testing.assert_close(y, _reference(layer, x), atol=1e-4, rtol=1e-4)
    assert os.listdir(tmp_path) == ["scc.onnx"]  # no staging leftovers


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_window_of_stride_channels_last(ort, tmp_path, form, dynamo):
    torch.manual_seed(1)
    layer = SCCConv2d(16, 24, cg=4, co=0.5, stride=2, window_of=[(o * 5) % 8 for o in range(24)])
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), layer, nn.ReLU()).eval()
    x = torch.randn(2, 3, 9, 7).contiguous(memory_format=torch.channels_last)
    path = export_onnx(model, x, tmp_path / "m.onnx", dynamo=dynamo, decomposition=form)
    (y,) = _run_onnx(ort, path, x)
    with torch.no_grad():
        expected = torch.relu(_reference(layer, model[1](model[0](x)).double()))
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    assert y.shape == (2, 24, 5, 4)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_factorised_standard_conv(ort, tmp_path, dynamo):
    torch.manual_seed(6)
    layer = DWSCCConv2d(8, 12, 3, cg=4, co=0.5, stride=2, padding=1, bias=True).eval()
    x = torch.randn(2, 8, 7, 7)
    path = export_onnx(layer, x, tmp_path / "dw.onnx", dynamo=dynamo, decomposition="grouped")
    (y,) = _run_onnx(ort, path, x)
    with torch.no_grad():
        expected = _reference(layer.pointwise, layer.depthwise(x).double())
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("example_batch,run_batch", [(2, 5), (1, 3)])
def test_onnx_dynamic_batch(ort, tmp_path, dynamo, example_batch, run_batch):
    torch.manual_seed(2)
    layer = SCCConv2d(16, 20, cg=4, co=0.5, bias=True)
    path = export_onnx(layer, torch.randn(example_batch, 16, 4, 4), tmp_path / "b.onnx", dynamo=dynamo)
    x = torch.randn(run_batch, 16, 4, 4)
    (y,) = _run_onnx(ort, path, x)
    torch.testing.assert_close(y, _reference(layer, x), atol=1e-4, rtol=1e-4)


def test_onnx_static_batch_keeps_the_example_shape(ort, tmp_path):
    layer = SCCConv2d(8, 8, cg=2, co=0.5)
    path = export_onnx(layer, torch.randn(2, 8, 3, 3), tmp_path / "s.onnx", dynamic_batch=False)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run_onnx(ort, path, torch.randn(3, 8, 3, 3))


def test_onnx_auto_picks_the_form_per_layer(ort, tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(SCCConv2d(24, 256, cg=4, co=0.5), nn.ReLU(), SCCConv2d(256, 1024, cg=4, co=0.5))
    assert [choose_decomposition(m.geometry) for m in (model[0], model[2])] == ["dense", "grouped"]
    x = torch.randn(2, 24, 3, 3)
    path = export_onnx(model, x, tmp_path / "auto.onnx")
    assert _conv_groups(path) == [1, model[2].geometry.cyclic_distance]
    (y,) = _run_onnx(ort, path, x)
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dynamo,opset", [(True, 13), (False, 13), (False, 17)])
def test_onnx_opsets(ort, tmp_path, dynamo, opset):
    import onnx

    layer = SCCConv2d(16, 20, cg=4, co=0.5, bias=True)
    for form in FORMS:
        path = export_onnx(layer, torch.randn(2, 16, 3, 3), tmp_path / f"{form}.onnx", opset=opset, dynamo=dynamo, decomposition=form)
        versions = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
        assert versions.get("", versions.get("ai.onnx")) == opset


def test_onnx_translation_table_and_symbolic_for_direct_torch_onnx_use(ort, tmp_path):
    torch.manual_seed(4)
    layer = SCCConv2d(16, 20, cg=4, co=0.5, bias=True).eval()
    x = torch.randn(2, 16, 4, 4)
    program = torch.onnx.export(
        layer, (x,), dynamo=True, verbose=False,
        custom_translation_table=scc_export.onnx_translation_table("grouped"),
    )
    program.save(tmp_path / "dynamo.onnx")
    scc_export.register_onnx_symbolic("dense")
    torch.onnx.export(layer, (x,), str(tmp_path / "ts.onnx"), dynamo=False)
    assert _conv_groups(tmp_path / "dynamo.onnx") == [layer.geometry.cyclic_distance]
    assert _conv_groups(tmp_path / "ts.onnx") == [1]
    for name in ("dynamo.onnx", "ts.onnx"):
        (y,) = _run_onnx(ort, tmp_path / name, x)
        torch.testing.assert_close(y, _reference(layer, x), atol=1e-4, rtol=1e-4)
    # export_onnx's own decomposition wins over the registered one, which stays registered
    export_onnx(layer, x, tmp_path / "grouped.onnx", dynamo=False, decomposition="grouped")
    assert _conv_groups(tmp_path / "grouped.onnx") == [layer.geometry.cyclic_distance]
    torch.onnx.export(layer, (x,), str(tmp_path / "ts2.onnx"), dynamo=False)
    assert _conv_groups(tmp_path / "ts2.onnx") == [1]


def test_onnx_check_catches_a_wrong_decomposition_and_writes_nothing(ort, tmp_path, monkeypatch):
    real = decomposition._grouped_layout

    def swapped_outputs(geom, window_of):
        lay = real(geom, window_of)
        index = list(lay.output_index or range(geom.out_channels))
        index[0], index[1] = index[1], index[0]
        return type(lay)(lay.groups, lay.slots, lay.input_index, lay.weight_rows, tuple(index))

    monkeypatch.setattr(decomposition, "_grouped_layout", swapped_outputs)
    layer = SCCConv2d(16, 16, cg=4, co=0.5)
    target = tmp_path / "m.onnx"
    target.write_text("previous export")
    with pytest.raises(ExportCheckError, match="output 0 differs from PyTorch at batch 2"):
        export_onnx(layer, torch.randn(2, 16, 3, 3), target, dynamo=False, decomposition="grouped")
    assert target.read_text() == "previous export"
    assert os.listdir(tmp_path) == ["m.onnx"]
    export_onnx(layer, torch.randn(2, 16, 3, 3), target, dynamo=False, decomposition="grouped", check=False)
    assert target.read_bytes() != b"previous export"


@pytest.mark.parametrize(
    "got,fails",
    [([1.0, float("nan"), float("inf")], False), ([1.0001, float("nan"), float("inf")], False),
     ([1.01, float("nan"), float("inf")], True), ([1.0, 0.0, float("inf")], True),
     ([1.0, float("nan"), float("-inf")], True), ([1.0, float("nan"), 1e30], True)],
)
def test_check_tolerance_and_non_finite_values(got, fails):
    expected = [torch.tensor([1.0, float("nan"), float("inf")])]
    if fails:
        with pytest.raises(ExportCheckError, match="differs from PyTorch at batch 1"):
            checks.compare("onnxruntime", [torch.tensor(got)], expected, None, None, 1, "")
    else:
        checks.compare("onnxruntime", [torch.tensor(got)], expected, None, None, 1, "")


def test_onnx_export_restores_train_mode(ort, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), SCCConv2d(8, 8, cg=2, co=0.5)).train()
    model[1].eval()
    export_onnx(model, torch.randn(2, 3, 4, 4), tmp_path / "m.onnx", dynamo=False)
    assert [m.training for m in model] == [True, False, True] and model.training


def test_onnx_bad_arguments(tmp_path):
    layer = SCCConv2d(8, 8, cg=2, co=0.5)
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match="decomposition='fast' is invalid"):
        export_onnx(layer, x, tmp_path / "m.onnx", decomposition="fast")
    with pytest.raises(ValueError, match="opset=11 is not supported.*>= 13"):
        export_onnx(layer, x, tmp_path / "m.onnx", opset=11)
    with pytest.raises(TypeError, match="example_input must be a Tensor"):
        export_onnx(layer, "x", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="dynamo must be True, False or None"):
        export_onnx(layer, x, tmp_path / "m.onnx", dynamo="yes")
    with pytest.raises(ValueError, match="one batch size"):
        export_onnx(nn.Bilinear(3, 4, 5), (torch.randn(2, 3), torch.randn(3, 4)), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(layer, x, tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        export_onnx(lambda t: t, x, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_choose_decomposition():
    assert choose_decomposition(SCCGeometry(512, 2048, cg=4, co=0.5)) == "grouped"
    assert choose_decomposition(SCCGeometry(24, 144, cg=4, co=0.5)) == "dense"
    assert choose_decomposition(SCCGeometry(512, 512, cg=1, co=0.0)) == "dense"  # nothing saved
    assert choose_decomposition(SCCGeometry(24, 144, cg=4, co=0.5), "grouped") == "grouped"
    with pytest.raises(ValueError, match="use one of auto, grouped, dense"):
        choose_decomposition(SCCGeometry(8, 8, cg=2, co=0.5), "sparse")


# -- torch.export ---------------------------------------------------------------------------


def _small_model():
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        SCCConv2d(16, 24, cg=4, co=0.5, stride=2, bias=True, window_of=[(o * 3) % 8 for o in range(24)]),
        nn.ReLU(),
    ).eval()


def test_torch_export_save_load_round_trip(tmp_path):
    model = _small_model()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.scc.scc_conv2d.default) == 1
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_export_program_dynamic_batch_from_a_batch_of_one(tmp_path):
    model = _small_model().train()
    path = export_program(model, torch.randn(1, 3, 8, 8), tmp_path / "m.pt2")
    assert model.training and os.listdir(tmp_path) == ["m.pt2"]
    loaded = torch.export.load(path).module()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


# -- TorchScript ----------------------------------------------------------------------------


def test_jit_trace_save_load_round_trip():
    model = _small_model()
    traced = torch.jit.trace(model, torch.randn(2, 3, 8, 8), check_trace=False)
    assert "scc::scc_conv2d" in str(traced.inlined_graph)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_jit_script_round_trip():
    model = _small_model()
    scripted = torch.jit.script(model)
    assert type(model[3]) is SCCConv2d  # scripting must not swap modules in the user's model
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(buf)(x), model(x))


def test_saved_program_and_trace_run_in_a_fresh_process(tmp_path):
    model = _small_model()
    x = torch.randn(3, 3, 8, 8)
    export_program(model, torch.randn(2, 3, 8, 8), tmp_path / "m.pt2")
    torch.jit.save(torch.jit.trace(model, x, check_trace=False), tmp_path / "m.ts")
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        import scc_convert  # registers torch.ops.scc.scc_conv2d
        d = sys.argv[1]
        io = torch.load(d + "/io.pt")
        with torch.no_grad():
            for y in (torch.export.load(d + "/m.pt2").module()(io["x"]), torch.jit.load(d + "/m.ts")(io["x"])):
                torch.testing.assert_close(y, io["y"])
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(scc_convert.__file__)), os.environ.get("PYTHONPATH")] if p))
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# -- converted torchvision models, end to end ------------------------------------------------


def _recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate BatchNorm statistics on ``x`` so random-init activations stay O(1)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


class _FusableBlock(nn.Module):
    """SCC -> BatchNorm -> (+ input) -> activation: one fused SCC op after optimize_for_inference."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.scc, self.bn, self.act = SCCConv2d(16, 16, cg=4, co=0.5), nn.BatchNorm2d(16), activation

    def forward(self, x):
        return self.act(self.bn(self.scc(x)) + x)


def _fusable_block(activation: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    block = _FusableBlock(activation)
    _recalibrate_batchnorm(block, torch.randn(8, 16, 5, 5) * 2)
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 2.0)
        block.bn.bias.uniform_(-1.0, 1.0)
    return block.eval()


ACTIVATIONS = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish(), "silu": nn.SiLU(), "gelu": nn.GELU()}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_onnx_export_of_the_fused_op_matches_the_unfused_model(ort, tmp_path, activation, dynamo):
    if dynamo and activation not in ("relu6", "gelu"):
        pytest.skip("the dynamo-based exporter runs two activations (it is slow); the epilogue code is shared")
    block = _fusable_block(ACTIVATIONS[activation])
    path = export_onnx(block, torch.randn(2, 16, 5, 5) * 3, tmp_path / "fused.onnx", dynamo=dynamo)
    kinds = {n.op_type for n in _nodes(path)}
    assert "BatchNormalization" not in kinds and "Add" in kinds, kinds  # folded; the residual add kept
    x = torch.randn(3, 16, 5, 5) * 3
    (y,) = _run_onnx(ort, path, x)
    with torch.no_grad():
        expected = block(x)
    assert (expected != 0).float().mean() > 0.2
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_export_optimize_false_keeps_the_model_as_given(ort, tmp_path):
    block = _fusable_block(nn.ReLU())
    path = export_onnx(block, torch.randn(2, 16, 5, 5), tmp_path / "plain.onnx", dynamo=False, optimize=False)
    assert "BatchNormalization" in {n.op_type for n in _nodes(path)}
    program = torch.export.load(export_program(block, torch.randn(2, 16, 5, 5), tmp_path / "fused.pt2"))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.scc.scc_conv2d_fused.default) == 1 and torch.ops.scc.scc_conv2d.default not in targets
    x = torch.randn(3, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_b0", "resnet50"])
def test_converted_torchvision_model_runs_in_onnxruntime(ort, tmp_path, arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    original = getattr(torchvision.models, arch)(weights=None).eval()
    model, _ = scc_convert.convert(original, cg=4, co=0.5)
    assert sum(isinstance(m, SCCConv2d) for m in model.modules()) > 0
    _recalibrate_batchnorm(model, torch.randn(8, 3, 64, 64))
    path = export_onnx(model, torch.randn(2, 3, 64, 64), tmp_path / f"{arch}.onnx")
    assert all(n.domain in ("", "ai.onnx") for n in _nodes(path))
    x = torch.randn(3, 3, 64, 64)
    (y,) = _run_onnx(ort, path, x)
    with torch.no_grad():
        expected = model(x)
    assert expected.std() > 1e-2  # the comparison is not between vanishing activations
    # onnxruntime's fp32 convolutions differ from PyTorch's by ~1e-4 of the output's scale here,
    # for the unconverted ResNet-50 too (BatchNorm folded or not)
    torch.testing.assert_close(y, expected, atol=1e-4 * max(1.0, expected.abs().max().item()), rtol=1e-4)
