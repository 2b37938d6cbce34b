"""The command line without traps: --help lists every command, --version, an explicit
'convert', weights-only outputs by default, --arch in every command, one-line errors that carry
the cause, one-line warnings, and no progress bar when stderr is not a terminal."""

import io
import sys

import pytest
import torch
import torchvision
from torch import nn

import scc_convert
from scc_convert.cli.commands import commands
from scc_convert.io import ModelLoadError, load_model
from scc_convert.profile.results import BatchProfile
from scc_convert.profile.timing import LatencyStats, noise_warning
from test_cli import one_error_line, run

ARCH = "torchvision.models:mobilenet_v2"
SHAPE = "1,3,32,32"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("usability")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    torch.save(model.state_dict(), d / "state.pt")
    torch.save(model, d / "full.pt")
    torch.save(torch.randn(4, 3, 32, 32), d / "calib.pt")
    (d / "notes.txt").write_text("not a tensor")
    return d


def test_help_lists_every_command_with_its_summary():
    code, stdout, err = run("--help")
    assert code == 0 and err == ""
    flat = " ".join(stdout.split())
    for name, module in commands().items():
        assert f"{name} {' '.join(module.SUMMARY.split())}" in flat, name
    assert {"convert", "profile", "finetune", "export", "demo"} <= set(commands())
    code, stdout, _ = run("profile", "--help")
    assert code == 0 and stdout.startswith("usage: scc-convert profile")


def test_version():
    code, stdout, _ = run("--version")
    assert code == 0 and stdout.strip() == f"scc-convert {scc_convert.__version__} (torch {torch.__version__})"


def test_no_arguments_is_a_one_line_usage_error():
    code, _, err = run()
    assert code == 2 and "scc-convert --help lists them" in one_error_line(err)


def test_explicit_convert_and_the_bare_form_agree(files, tmp_path):
    outs = []
    for i, head in enumerate((["convert"], [])):
        out = tmp_path / f"o{i}.pt"
        code, _, err = run(*head, files / "state.pt", "--arch", ARCH, "-o", out, "--input-shape", SHAPE, "--quiet")
        assert code == 0, err
        outs.append(torch.load(out, weights_only=True))
    assert outs[0]["layers"] == outs[1]["layers"]
    assert all(torch.equal(outs[0]["state_dict"][k], outs[1]["state_dict"][k]) for k in outs[0]["state_dict"])


def test_output_is_weights_only_unless_save_module(files, tmp_path):
    out = tmp_path / "small.pt"
    code, _, err = run(files / "state.pt", "--arch", ARCH, "-o", out, "--input-shape", SHAPE)
    assert code == 0 and err == "", err
    saved = torch.load(out, weights_only=True)  # no code to unpickle
    assert saved["arch"] == ARCH and saved["layers"]["features.1.conv.1"]["cg"] == 4
    x = torch.randn(1, 3, 32, 32)
    rebuilt = scc_convert.load(out)
    module_out = tmp_path / "module.pt"
    code, _, err = run(files / "state.pt", "--arch", ARCH, "-o", module_out, "--input-shape", SHAPE, "--save-module")
    assert code == 0 and err == "", err
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(module_out, weights_only=True)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(module_out)
    pickled = load_model(module_out, trust_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pickled(x), atol=0, rtol=0)


def test_a_pickled_input_gives_a_file_that_needs_the_arch(files, tmp_path):
    out = tmp_path / "small.pt"
    code, _, err = run(files / "full.pt", "--trust-pickle", "-o", out, "--input-shape", SHAPE)
    assert code == 0
    assert err.strip() == (f"scc-convert: warning: {out} records no architecture (none was given with --arch): load it "
                           "with --arch package.module:factory or scc_convert.load(path, original_model), or write a "
                           "pickled module with --save-module")
    code, _, err = run("export", out, "--format", "pt2", "-o", tmp_path / "x.pt2", "--input-shape", SHAPE)
    assert code == 1 and "does not record the architecture it was converted from" in one_error_line(err)
    code, stdout, err = run("export", out, "--arch", ARCH, "--format", "pt2", "-o", tmp_path / "x.pt2", "--input-shape", SHAPE)
    assert code == 0 and "wrote" in stdout, err


def test_finetune_builds_model_with_arch(files, tmp_path):
    """--arch builds MODEL (a converted file that records no architecture), not only the teacher."""
    small = tmp_path / "small.pt"
    assert run(files / "full.pt", "--trust-pickle", "-o", small, "--input-shape", SHAPE, "--quiet")[0] == 0
    out = tmp_path / "ft.pt"
    code, _, err = run("finetune", small, "--arch", ARCH, "--data", "digits", "--image-size", "32", "--steps", "1",
                       "--batch-size", "4", "-o", out, "--quiet")
    assert code == 0, err
    assert torch.load(out, weights_only=True)["arch"] == ARCH


def test_errors_carry_the_cause(files, tmp_path):
    code, _, err = run(files / "state.pt", "--arch", "torchvision.models:resnet18", "--dry-run")
    line = one_error_line(err)
    assert code == 1 and "122 keys missing from the file (first: conv1.weight, bn1.weight, bn1.bias" in line
    assert "314 unexpected keys (first: features.0.0.weight" in line
    code, _, err = run(files / "state.pt", "--arch", ARCH, "--dry-run", "--calib", files / "notes.txt", "--input-shape", SHAPE)
    assert code == 1 and "neither an image folder nor a file torch.save wrote" in one_error_line(err)
    code, _, err = run(files / "state.pt", "--arch", ARCH, "--dry-run", "--cg", "7", "--input-shape", SHAPE)
    line = one_error_line(err)
    assert code == 1 and len(line) < 400
    assert ("34 whose input channels cg does not divide (first: features.1.conv.1, cg=7 does not divide "
            "in_channels=32 (on_indivisible='skip'))") in line


def test_warnings_are_one_line(files):
    code, _, err = run(files / "state.pt", "--arch", ARCH, "--dry-run", "--include", "nothing*", "--include",
                       "features.1*", "--input-shape", SHAPE)
    assert code == 0
    assert err.strip() == ("scc-convert: warning: include pattern 'nothing*' matches no candidate layer "
                           "(candidate names look like 'features.10.conv.0.0')")


def test_no_progress_bar_when_stderr_is_redirected(files):
    code, _, err = run(files / "state.pt", "--arch", ARCH, "--dry-run", "--init", "lsq", "--calib", files / "calib.pt",
                       "--input-shape", SHAPE)
    assert code == 0 and err == "", err


class Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty,progress,shown", [(True, True, True), (False, True, False), (True, False, False)])
def test_calibration_progress_only_on_a_terminal(monkeypatch, tty, progress, shown):
    stderr = Terminal(tty)
    monkeypatch.setattr(sys, "stderr", stderr)
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1))
    scc_convert.convert(model, init="lsq", calib_data=torch.randn(4, 16, 4, 4), progress=progress)
    assert ("lsq calibration" in stderr.getvalue()) is shown


def batch(median, q1, q3):
    return BatchProfile(batch_size=1, macs=0, latency=LatencyStats(median, q1, q3, 20))


def test_noisy_latency_is_flagged():
    assert noise_warning("after", batch(10.0, 9.6, 10.5)) is None  # IQR 0.9 ms: 9% of the median
    text = noise_warning("after", batch(10.0, 8.0, 14.0))
    assert text.startswith("after latency at batch 1 is noisy: IQR 6 ms is 60% of the median 10 ms")


class Jittery(nn.Module):
    """Every other forward sleeps 30 ms: the timing spreads far beyond 10% of its median."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.calls = 0

    def forward(self, x):
        import time

        self.calls += 1
        if self.calls % 2:
            time.sleep(0.03)
        return self.conv(x)


def test_profile_warns_about_noisy_latency():
    with pytest.warns(RuntimeWarning, match="model latency at batch 1 is noisy"):
        report = scc_convert.profile(Jittery(), input_shape=(1, 3, 8, 8), warmup=0, repeats=7)
    assert any("is noisy" in w for w in report.warnings) and "WARNING: model latency at batch 1 is noisy" in str(report)
