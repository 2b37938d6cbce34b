"""AOTInductor packages (``export_aoti``): compiled with the SCC layers as native-kernel calls,
run in a process that has only torch and the kernel's library (no scc_convert, no model
code), checked against eager on real architectures; ``scc-convert export --format aoti``."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import scc_convert
from scc_convert import SCCConv2d, export_aoti, load_aoti
from scc_convert.export import library_beside
from scc_convert.convert import recalibrate_batchnorm
from scc_convert.export import ExportCheckError
from scc_convert.ops import native

pytestmark = pytest.mark.skipif(not native.status()["available"], reason="native CPU kernel unavailable")
ROOT = Path(__file__).resolve().parents[1]

RUNNER = textwrap.dedent("""
    import sys, torch
    package, library, data = sys.argv[1:4]
    torch.ops.load_library(library)
    run = torch._inductor.aoti_load_package(package)
    io = torch.load(data)
    with torch.no_grad():
        got = [run(x) for x in io["inputs"]]
    err = max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, io["outputs"]))
    assert "scc_convert" not in sys.modules, "the package needed scc_convert"
    print(err)
""")


def _run_without_scc_convert(package, inputs, outputs, tmp_path):
    data = tmp_path / "io.pt"
    torch.save({"inputs": inputs, "outputs": outputs}, data)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(package), str(library_beside(package)), str(data)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


def _mobilenet(size=64):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    images = torch.randn(4, 3, size, size)
    recalibrate_batchnorm(model, images)
    small, _ = scc_convert.convert(model, cg=4, co=0.5)
    recalibrate_batchnorm(small, images)
    return small.eval()


def test_package_runs_with_torch_and_the_kernel_library_only(tmp_path):
    small = _mobilenet()
    path = export_aoti(small, torch.randn(2, 3, 64, 64), tmp_path / "mnv2.pt2")
    assert path.is_file() and library_beside(path).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnv2.pt2", "mnv2.scc_native.so"]
    inputs = [torch.randn(1, 3, 64, 64), torch.randn(5, 3, 64, 64)]  # dynamic batch
    with torch.no_grad():
        outputs = [small(x) for x in inputs]
    assert _run_without_scc_convert(path, inputs, outputs, tmp_path) < 1e-4  # fp32 through 52 layers


def test_resnet_block_package_matches_eager_in_process(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).layer1.eval()  # three bottlenecks, one downsample
    images = torch.randn(2, 64, 16, 16)
    recalibrate_batchnorm(model, images)
    small, _ = scc_convert.convert(model, cg=4, co=0.5)
    recalibrate_batchnorm(small, images)
    small.eval()
    x = torch.randn(3, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    path = export_aoti(small, x, tmp_path / "layer1.pt2")
    run = load_aoti(path)
    with torch.no_grad():
        want = small(x)
        got = run(x)
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


def test_model_without_scc_needs_no_library(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    path = export_aoti(model, torch.randn(2, 3, 8, 8), tmp_path / "plain.pt2")
    assert path.is_file() and not library_beside(path).exists()


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    from scc_convert.export import aoti

    model = nn.Sequential(SCCConv2d(16, 16, cg=4, co=0.5), nn.ReLU()).eval()
    monkeypatch.setattr(aoti, "reference", lambda m, inputs: [torch.full((2, 16, 4, 4), 7.0)])
    with pytest.raises(ExportCheckError, match="AOTInductor package output 0 differs"):
        export_aoti(model, torch.randn(2, 16, 4, 4), tmp_path / "bad.pt2", dynamic_batch=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_aoti(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6()).eval()
    small, _ = scc_convert.convert(model, cg=4, co=0.5)
    torch.save(small, tmp_path / "small.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "small_aoti.pt2"
    args = [sys.executable, "-m", "scc_convert", "export", str(tmp_path / "small.pt"), "--trust-pickle",
            "--format", "aoti", "-o", str(out), "--input-shape", "1,3,16,16"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and library_beside(out).is_file()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = small.eval()(x)
    assert _run_without_scc_convert(out, [x], [want], tmp_path) < 1e-5
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 1 and "--force" in again.stderr
