"""The native kernel's output cache (csrc/output_cache.h): large outputs reuse freed blocks,
within the limit, and a reused block (left dirty by its last owner) never leaks into a result."""

import os
import subprocess
import sys

import pytest
import torch

from reference import scc_reference
from scc_convert.functional import scc_conv2d
from scc_convert.ops import native

available = native.status()["available"]
pytestmark = pytest.mark.skipif(not available, reason=f"native CPU kernel unavailable: {native.status()['reason']}")
MB = 2**20


@pytest.fixture
def cache():
    """The cache emptied, at the default limit, and restored afterwards."""
    limit = native.output_cache()["limit_bytes"] / MB
    native.output_cache(0)
    native.output_cache(512)
    yield
    native.output_cache(0)
    native.output_cache(limit)


def _forward(x, weight, bias=None, **kwargs):
    return native.scc_forward(x, weight, bias, 4, 0.5, None, **kwargs)


def test_a_freed_output_is_reused_by_the_next_call_of_its_size(cache):
    x = torch.randn(4, 64, 32, 32)  # output 4 x 128 x 32 x 32 fp32: 2 MB
    weight = torch.randn(128, 16)
    y = _forward(x, weight)
    block = y.data_ptr()
    del y
    before = native.output_cache()
    assert before["cached_bytes"] == 2 * MB
    y = _forward(x, weight)
    after = native.output_cache()
    assert y.data_ptr() == block
    assert (after["hits"], after["cached_bytes"]) == (before["hits"] + 1, 0)


def test_outputs_under_a_megabyte_bypass_the_cache(cache):
    before = native.output_cache()
    y = _forward(torch.randn(1, 16, 8, 8), torch.randn(32, 4))
    del y
    after = native.output_cache()
    assert (after["cached_bytes"], after["hits"], after["misses"]) == (0, before["hits"], before["misses"])


def test_the_limit_bounds_what_is_kept_and_zero_keeps_nothing(cache):
    x, weight = torch.randn(4, 64, 32, 32), torch.randn(128, 16)
    native.output_cache(3)  # room for one 2 MB block
    ys = [_forward(x, weight) for _ in range(3)]
    del ys
    assert native.output_cache()["cached_bytes"] == 2 * MB
    native.output_cache(1)  # shrinking evicts at once
    assert native.output_cache()["cached_bytes"] == 0
    native.output_cache(0)
    y = _forward(x, weight)
    del y
    assert native.output_cache()["cached_bytes"] == 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cin,cout,cg,co,h", [(64, 256, 4, 0.5, 32), (16, 96, 4, 0.5, 48), (32, 40, 4, 0.5, 48),
                                              (96, 96, 2, 0.25, 40)])
def test_a_dirty_reused_block_does_not_leak_into_forward_or_input_gradient(cache, layout, cin, cout, cg, co, h):
    """Each kernel path (NCHW tiles, the channels_last stacked kernel, with rows stacked by
    permutes for 16 channels, the narrow kernel, wrapping windows) writes every element: the blocks it gets are filled with NaN by their last owner."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(cin + h)
    x = torch.randn(4, cin, h, h, generator=gen).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(cout, cin // cg, generator=gen).requires_grad_()
    bias = torch.randn(cout, generator=gen).requires_grad_()
    gy = torch.randn(4, cout, h, h, generator=gen).contiguous(memory_format=fmt)
    dirty: set[int] = set()
    for round in range(2):  # the second round runs on blocks the first left dirty
        with native.use_backend("native"):
            y = scc_conv2d(x, weight, bias, cg=cg, co=co)
            gx, gw = torch.autograd.grad(y, (x, weight), gy)
        if round == 1:
            assert y.data_ptr() in dirty
        dirty = {y.data_ptr(), gx.data_ptr()}
        ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
        y_ref = scc_reference(*ref, cg=cg, co=co)
        gx_ref, gw_ref = torch.autograd.grad(y_ref, ref[:2], gy.double())
        for got, want in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
            torch.testing.assert_close(got.double(), want, atol=2e-5 * want.abs().max().item(), rtol=0)
        for t in (y, gx):
            t.detach().fill_(float("nan"))
        del y, gx, gw


def test_an_output_from_the_cache_can_be_resized(cache):
    y = _forward(torch.randn(4, 64, 32, 32), torch.randn(128, 16))
    y.resize_(4, 128, 40, 40)
    y.fill_(1.0)
    assert y.shape == (4, 128, 40, 40) and float(y.sum()) == y.numel()


def _in_new_process(env_value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SCC_CONVERT_OUTPUT_CACHE_MB=env_value, SCC_CONVERT_CPU_BACKEND="native")
    code = "from scc_convert.ops import native; print(native.output_cache()['limit_bytes'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_sets_the_limit_and_a_bad_value_is_an_error():
    done = _in_new_process("64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(64 * MB)
    done = _in_new_process("lots")
    assert done.returncode != 0
    assert "SCC_CONVERT_OUTPUT_CACHE_MB must be a whole number of megabytes >= 0, got 'lots'" in done.stderr


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit_mb=-1 must be >= 0"):
        native.output_cache(-1)


@pytest.mark.skipif(not available or native.cpu_backend() != "native", reason="CPU tensors run the PyTorch path")
def test_info_names_the_cache_limit(cache):
    from scc_convert.ops import backends

    native.output_cache(64)
    assert "output cache 64 MB" in backends.describe()["implementations"]["cpu"]["detail"]
