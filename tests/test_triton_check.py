"""The compile check's machinery (the full check runs in CI as
``python -m scc_convert.ops.triton_check``): it compiles what the launcher plans, with the
JIT's own specialisation, and sees what the hardware would run."""

import torch

from scc_convert.ops import triton_check
from scc_convert.ops.common import empty_output, geometry_for
from scc_convert.ops.triton_kernels import configs, launch


def _forward_plan(dtype, layout, config):
    x, w = triton_check.Problem(layout).tensors(dtype)
    geom = geometry_for(x, w, 4, 0.5)
    y = empty_output(x, (2, 256, 28, 28))
    return launch.plan_forward(y, x, w, None, geom, None, config)


def test_64_row_fp16_tile_uses_wgmma_on_sm90_and_mma_on_sm80():
    plan = _forward_plan(torch.float16, "nchw", configs.FORWARD[1])
    sm90 = triton_check.compile_launch(plan, 90)
    sm80 = triton_check.compile_launch(plan, 80)
    assert "wgmma.mma_async" in sm90.asm["ptx"]
    assert "mma.sync" in sm80.asm["ptx"] and "wgmma" not in sm80.asm["ptx"]
    usage = triton_check._resource_usage(sm90.asm["cubin"])
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0


def test_specialisation_follows_the_arguments():
    """An unaligned strided input compiles without the 16-byte divisibility hint the aligned
    one gets: the check builds what the JIT would build for each."""
    aligned = triton_check.compile_launch(_forward_plan(torch.float16, "nchw", configs.FORWARD[3]), 90)
    strided = triton_check.compile_launch(_forward_plan(torch.float16, "strided", configs.FORWARD[3]), 90)
    first_arg = lambda ir: ir[ir.index("%x_ptr"):].split(",", 1)[0]  # noqa: E731
    assert "tt.divisibility" in first_arg(aligned.asm["ttir"])
    assert "tt.divisibility" not in first_arg(strided.asm["ttir"])


def test_check_reports_rows_and_passes_on_the_split_sum(capsys):
    rows = triton_check.check(archs=(90,), kernels=("sum_splits",))
    assert [(r.kernel, r.arch, r.failures) for r in rows] == [("sum_splits", 90, [])]
    assert rows[0].variants == 4
    assert triton_check.main(["--arch", "90", "--kernel", "sum_splits"]) == 0
    assert "0 failure(s)" in capsys.readouterr().out
