"""scc-convert sweep, and scc-convert MODEL --overrides, driven as subprocesses."""

import json

import pytest
import torch
from torch import nn

from test_cli import one_error_line, run

SHAPE = "1,3,16,16"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    torch.save(model, d / "net.pt")
    gen = torch.Generator().manual_seed(1)
    torch.save(torch.randn(24, 3, 16, 16, generator=gen), d / "calib.pt")
    torch.save(torch.randn(32, 3, 16, 16, generator=gen), d / "eval.pt")
    return d


def test_sweep_searches_plots_and_writes_overrides_that_convert_applies(files, tmp_path):
    report, plot, overrides = tmp_path / "sweep.json", tmp_path / "sweep.png", tmp_path / "ov.json"
    code, out, err = run("sweep", files / "net.pt", "--trust-pickle", "--calib", files / "calib.pt", "--eval", files / "eval.pt",
                         "--target-macs", "0.5", "--grid", "--cgs", "1,2,4,8", "--cos", "0.5", "--input-shape", SHAPE,
                         "--report", report, "--plot", plot, "--overrides-out", overrides, "--quiet")
    assert code == 0, err
    payload = json.loads(report.read_text())
    searched = payload["search"]
    assert searched["measured"]["met"] and searched["measured"]["macs"] <= searched["budget"]["limit"]
    assert [p["label"] for p in payload["grid"]] == ["uniform cg=2 co=0.5", "uniform cg=4 co=0.5", "uniform cg=8 co=0.5"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = json.loads(overrides.read_text())
    assert chosen == searched["overrides"] and set(chosen) == {"2", "5"}  # "0" has 3 input channels: not searched
    assert "min_channels" in searched["skipped"]["0"]

    out_model = tmp_path / "small.pt"
    code, out, err = run(files / "net.pt", "--trust-pickle", "--overrides", overrides, "--calib", files / "calib.pt",
                         "--input-shape", SHAPE, "-o", out_model, "--quiet")
    assert code == 0, err
    converted = {r["name"]: (r["cg"], r["co"]) for r in json.loads(out_model.with_suffix(".json").read_text())["report"]["layers"]
                 if r["converted"]}
    assert converted == {k: (v["cg"], v["co"]) for k, v in chosen.items()}


def test_sweep_prints_a_table(files, tmp_path):
    code, out, err = run("sweep", files / "net.pt", "--trust-pickle", "--calib", files / "calib.pt", "--target-params", "0.7",
                         "--input-shape", SHAPE, "--dry-run", "--no-uniform-check")
    assert code == 0, err
    assert "SCC search: 2 layers, budget params <=" in out and "top-1 agr." in out and "cg/co" in out
    assert list(tmp_path.iterdir()) == [] and not (files / "net_sweep.json").exists()


def test_sweep_unreachable_budget_is_one_line_naming_the_cheapest(files, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = run("sweep", files / "net.pt", "--trust-pickle", "--calib", files / "calib.pt", "--target-macs", "0.01",
                         "--input-shape", SHAPE, "--report", report)
    assert code == 1
    assert "below the cheapest reachable macs" in one_error_line(err)
    assert not report.exists()


@pytest.mark.parametrize("extra,match,code", [
    ((), "give a budget", 2),
    (("--target-macs", "0.5", "--target-params", "0.5"), "not allowed with", 2),
    (("--target-latency", "soon"), "unit", 1),
])
def test_sweep_usage_errors(files, extra, match, code):
    rc, out, err = run("sweep", files / "net.pt", "--trust-pickle", "--calib", files / "calib.pt", "--input-shape", SHAPE, *extra)
    assert rc == code and match in one_error_line(err)


def test_convert_rejects_a_bad_overrides_file(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    code, out, err = run(files / "net.pt", "--trust-pickle", "--overrides", bad, "--input-shape", SHAPE, "--dry-run")
    assert code == 1 and "need a JSON object" in one_error_line(err)
    code, out, err = run(files / "net.pt", "--trust-pickle", "--overrides", tmp_path / "none.json", "--dry-run")
    assert code == 2 and "no such file" in one_error_line(err)
    bad.write_text('{"2": {"groups": 3}}')
    code, out, err = run(files / "net.pt", "--trust-pickle", "--overrides", bad, "--input-shape", SHAPE, "--dry-run")
    assert code == 2 and "unknown keys" in one_error_line(err)
