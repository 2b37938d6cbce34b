"""The accuracy study, the conversion-quality benchmark and the pretrained-MobileNetV2 example:
the GPW / GPW+shuffle constructions against ``nn.Conv2d(groups=cg)`` and
``nn.ChannelShuffle``, and quick end-to-end runs of the three scripts."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scc_convert import SCCConv2d
from scc_convert.io import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import digits_cnn as dc  # noqa: E402

pytest.importorskip("sklearn")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trained_like(width: float = 0.5, seed: int = 0) -> nn.Module:
    """A digits CNN with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = dc.digits_mobilenet(width=width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def _grouped(dense: torch.Tensor, cg: int, rows: list[int]) -> nn.Conv2d:
    """``nn.Conv2d(Cin, Cout, 1, groups=cg)`` whose output ``j`` carries ``dense[rows[j]]`` on
    group ``j // (Cout/cg)``'s input channels — built from the original weight, not the SCC's."""
    cout, cin = dense.shape
    gw, per = cin // cg, cout // cg
    conv = nn.Conv2d(cin, cout, 1, groups=cg, bias=False)
    with torch.no_grad():
        for j in range(cout):
            g = j // per
            conv.weight[j, :, 0, 0] = dense[rows[j], g * gw:(g + 1) * gw]
    return conv


def _reference(original: nn.Module, cg: int, shuffle: bool) -> nn.Module:
    """The original with every ``blocks.*.pw`` replaced by a grouped conv (+ channel shuffle)."""
    ref = copy.deepcopy(original)
    for block in ref.blocks:
        dense = block.pw.weight.detach()[:, :, 0, 0]
        cout = dense.shape[0]
        per = cout // cg
        if shuffle:
            # grouped output j = (group g, index r) lands at r * cg + g after ChannelShuffle(cg);
            # the SCC output there reads group (r * cg + g) % cg = g with its own original row.
            rows = [(j % per) * cg + j // per for j in range(cout)]
            block.pw = nn.Sequential(_grouped(dense, cg, rows), nn.ChannelShuffle(cg))
        else:
            block.pw = _grouped(dense, cg, list(range(cout)))
    return ref.eval()


@pytest.mark.parametrize("cg", [2, 4, 8])
@pytest.mark.parametrize("family,shuffle", [("gpw", False), ("gpw_shuffle", True)])
def test_gpw_constructions_equal_grouped_conv_and_channel_shuffle(cg, family, shuffle):
    original = _trained_like()
    model, report = dc.convert_family(original, family, cg, input_shape=(1, 1, 16, 16))
    assert len(report.converted) == 5
    assert all(isinstance(model.blocks[i].pw, SCCConv2d) and model.blocks[i].pw.co == 0 for i in range(5))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(cg))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _reference(original, cg, shuffle)(x), rtol=1e-4, atol=1e-5)
    assert dc.check_gpw(model, "block" if family == "gpw" else "shuffle") == 5


def test_block_order_and_shuffle_order_are_different_networks():
    original = _trained_like()
    gpw, _ = dc.convert_family(original, "gpw", 4, input_shape=(1, 1, 16, 16))
    shuffled, _ = dc.convert_family(original, "gpw_shuffle", 4, input_shape=(1, 1, 16, 16))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(gpw.eval()(x), shuffled.eval()(x), atol=1e-3)
    with pytest.raises(AssertionError, match="block order"):
        dc.check_gpw(shuffled, "block")


def test_check_gpw_rejects_overlapping_windows_and_mismatched_weights():
    original = _trained_like()
    scc, _ = dc.convert_family(original, "scc", 2, 0.5, input_shape=(1, 1, 16, 16))
    with pytest.raises(AssertionError, match="not a grouped conv"):
        dc.check_gpw(scc)
    with pytest.raises(ValueError, match="co=0"):
        dc.grouped_conv_equivalent(scc.blocks[0].pw)
    # not vacuous: a plain GPW is not "GPW + shuffle", and a shuffled one is GPW + *a* permutation
    gpw, _ = dc.convert_family(original, "gpw", 2, input_shape=(1, 1, 16, 16))
    with pytest.raises(AssertionError):
        dc.check_gpw(gpw, "shuffle")
    shuffled, _ = dc.convert_family(original, "gpw_shuffle", 2, input_shape=(1, 1, 16, 16))
    assert dc.check_gpw(shuffled, "any") == 5


def test_convert_family_refuses_inits_that_would_undo_block_order():
    with pytest.raises(ValueError, match="block order"):
        dc.convert_family(_trained_like(), "gpw", 2, init="energy", input_shape=(1, 1, 16, 16))
    with pytest.raises(ValueError, match="co > 0"):
        dc.convert_family(_trained_like(), "scc", 2, 0.0, input_shape=(1, 1, 16, 16))


def test_equal_cost_across_families():
    original = _trained_like(width=1.0)
    for cg in (2, 4, 8):
        counts = [dc.count(original, dc.convert_family(original, fam, cg, co, input_shape=(1, 1, 16, 16))[0], (1, 1, 16, 16))
                  for fam, co in (("gpw", 0.0), ("gpw_shuffle", 0.0), ("scc", 0.25), ("scc", 0.5))]
        assert len({(c["macs"], c["params"]) for c in counts}) == 1
        assert counts[0]["macs"] < counts[0]["macs_before"]
    assert counts[0]["macs_before"] == 3_985_920 and counts[0]["params_before"] == 136_202


def test_accuracy_study_quick(tmp_path, capsys):
    study = _load(ROOT / "examples" / "accuracy_study.py", "accuracy_study")
    assert study.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "accuracy_study.json").read_text())
    png = (tmp_path / "accuracy_study.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "Baseline (DW+PW)" in out and "DW+SCC-cg2-co50%" in out and "DW+GPW+shuffle-cg4" in out
    rows = payload["variants"]
    assert sorted((r["family"], r["cg"]) for r in rows) == sorted(
        [(f, cg) for cg in (2, 4) for f in ("gpw", "gpw_shuffle", "scc")])
    seeds = payload["config"]["finetune"]["seeds"]
    assert seeds == [0, 1]
    base = payload["original"]
    assert 0.2 < base["val_accuracy"] <= 1.0  # one quick epoch is far above chance (0.1)
    for cg in (2, 4):
        same = {(r["macs"], r["params"]) for r in rows if r["cg"] == cg}
        assert len(same) == 1 and next(iter(same))[0] < base["macs"]
    for r in rows:
        assert [run["seed"] for run in r["runs"]] == seeds
        assert all(0.0 <= run[k] <= 1.0 for run in r["runs"] for k in ("after_conversion", "after_finetune"))
        assert all(run["finetune_steps"] == 3 for run in r["runs"])
        assert ("vs_gpw" in r) == (r["family"] != "gpw")
        assert ("vs_gpw_shuffle" in r) == (r["family"] == "scc")
    gpw = {r["cg"]: r for r in rows if r["family"] == "gpw"}
    for r in rows:
        if "vs_gpw" in r:
            ref = gpw[r["cg"]]["runs"]
            assert r["vs_gpw"] == pytest.approx([a["after_finetune"] - b["after_finetune"] for a, b in zip(r["runs"], ref)])
    assert "Baseline (DW+PW)" in study.table(payload)


def test_convert_quality_quick(tmp_path, capsys):
    bench = _load(ROOT / "bench" / "convert_quality.py", "convert_quality")
    assert bench.main(["--quick", "--out", str(tmp_path), "--calib-sweep", "24"]) == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "convert_quality.json").read_text())
    assert "lsq target" in out and "GPW block" in out
    results = payload["results"]
    keys = {(r["family"], r["init"], r["recalibrate_bn"]) for r in results}
    assert keys == ({(f, i, bn) for f in ("scc", "gpw_shuffle") for i in ("slice", "energy", "lsq") for bn in (False, True)}
                    | {("gpw", "slice", False), ("gpw", "slice", True)})
    for r in results:
        assert 0.0 <= r["mean"] <= 1.0
        if r["init"] == "lsq":
            assert all(e is not None and e >= 0 for run in r["runs"] for e in run["calib_error"])
    counts = payload["counts"]
    assert len({(c["macs"], c["params"]) for c in counts.values()}) == 1
    assert payload["original"]["val_accuracy"] > 0.2  # two quick epochs are far above chance
    targets = payload["targets"]
    assert [(t["cg"], t["calibration_images"], t["recalibrate_bn"]) for t in targets] == [
        (2, 16, False), (2, 16, True), (2, 24, False)]
    for t in targets:
        assert t["met"] == (t["drop"] <= 2.0)
        assert t["drop"] == pytest.approx(100 * (payload["original"]["val_accuracy"] - t["accuracy"]))


def test_pretrained_mobilenet_example_tiny(tmp_path, capsys):
    example = _load(ROOT / "examples" / "pretrained_mobilenet.py", "pretrained_mobilenet")
    out_file = tmp_path / "small.pt"
    args = ["--image-size", "32", "--steps", "2", "--batch-size", "4", "--calib", "4", "--eval-images", "8",
            "--repeats", "0", "--out", str(out_file)]
    assert example.main(args) == 0
    text = capsys.readouterr().out
    assert "RANDOM INITIALISATION" in text and "converted 34 of 36" in text and "fine-tuned 2 steps" in text
    small = load_model(out_file, trust_pickle=True)
    assert sum(isinstance(m, SCCConv2d) for m in small.modules()) == 34
    assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    stamp = out_file.stat().st_mtime_ns
    assert example.main(args) == 1  # refuses to overwrite without --force
    assert "exists" in capsys.readouterr().err and out_file.stat().st_mtime_ns == stamp
    assert example.main(args[:-2] + ["--out", str(tmp_path / "x.pt"), "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_pretrained_mobilenet_loads_local_weights(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    example = _load(ROOT / "examples" / "pretrained_mobilenet.py", "pretrained_mobilenet")
    torch.manual_seed(5)
    weights = tmp_path / "mv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    assert example.main(["--weights", str(weights), "--image-size", "32", "--steps", "1", "--batch-size", "4",
                         "--init", "slice", "--eval-images", "4", "--repeats", "0", "--out", str(tmp_path / "o.pt")]) == 0
    text = capsys.readouterr().out
    assert f"weights from {weights}" in text and "RANDOM" not in text


def test_pretrained_mobilenet_on_an_image_folder(tmp_path, capsys):
    pytest.importorskip("torchvision")
    from PIL import Image

    example = _load(ROOT / "examples" / "pretrained_mobilenet.py", "pretrained_mobilenet")
    gen = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = torch.randint(0, 256, (40, 48, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.png")
    assert example.main(["--data", str(tmp_path / "data"), "--image-size", "32", "--steps", "2", "--batch-size", "3",
                         "--init", "energy", "--repeats", "0", "--out", str(tmp_path / "o.pt")]) == 0
    text = capsys.readouterr().out
    assert "ImageFolder" in text and "10 images, 2 classes" in text and "fine-tuned 2 steps" in text
    assert "on 1 held-out images" in text  # 10% of 10 images
    assert example.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.pt")]) == 2
    assert "not 'digits' and not a directory" in capsys.readouterr().err
