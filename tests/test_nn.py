"""SCCConv2d: the module protocol around the op."""

import copy
import io
import pickle

import pytest
import torch

from reference import scc_reference
from scc_convert import SCCConv2d


def test_forward_matches_reference_with_stride_bias_and_window_of():
    layer = SCCConv2d(16, 24, cg=4, co=0.5, stride=2, bias=True).double()
    window_of = [(o * 5) % 8 for o in range(24)]  # three outputs on each of the 8 windows
    layer.set_window_of(window_of)
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    expected = scc_reference(x, layer.weight, layer.bias, cg=4, co=0.5, stride=2, window_of=window_of)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)


def test_parameters_and_init():
    layer = SCCConv2d(64, 96, cg=4, co=0.5, bias=True)
    assert layer.weight.shape == (96, 16)
    assert layer.bias.shape == (96,)
    bound = 1 / 16**0.5
    assert layer.weight.abs().max() <= bound + 1e-6 and layer.weight.std() > bound / 4
    assert layer.bias.abs().max() <= bound + 1e-6
    assert sum(p.numel() for p in layer.parameters()) == layer.geometry.params(bias=True)
    assert SCCConv2d(8, 8, 2, 0.5).bias is None


def test_extra_repr():
    text = repr(SCCConv2d(64, 128, cg=4, co=0.5, stride=2))
    assert text == "SCCConv2d(64, 128, cg=4, co=0.5, gw=16, cd=8, stride=2, bias=False)"
    layer = SCCConv2d(8, 8, cg=2, co=0.5, bias=True, window_of=[3, 2, 1, 0, 3, 2, 1, 0])
    assert "window_of=custom" in repr(layer) and "bias" not in repr(layer)


def test_state_dict_round_trip_carries_window_of():
    src = SCCConv2d(8, 8, cg=2, co=0.5, bias=True, window_of=[1, 1, 0, 0, 3, 3, 2, 2])
    dst = SCCConv2d(8, 8, cg=2, co=0.5, bias=True)
    dst.load_state_dict(src.state_dict())
    assert dst.window_of == (1, 1, 0, 0, 3, 3, 2, 2)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(dst(x), src(x))


def test_load_rejects_invalid_window_assignment():
    layer = SCCConv2d(8, 8, cg=2, co=0.5)
    state = layer.state_dict()
    state["window_assignment"] = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="permutation of the default"):
        layer.load_state_dict(state)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_deepcopy_and_pickle(clone):
    layer = SCCConv2d(12, 10, cg=3, co=0.25, bias=True, window_of=None)
    other = clone(layer)
    x = torch.randn(1, 12, 4, 4)
    torch.testing.assert_close(other(x), layer(x))
    assert other.geometry == layer.geometry


def test_torch_save_load_whole_module():
    layer = SCCConv2d(16, 16, cg=4, co=0.5, window_of=[(o + 1) % 8 for o in range(16)])
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(loaded(x), layer(x))


def test_dtype_device_and_half():
    layer = SCCConv2d(16, 16, cg=4, co=0.5, dtype=torch.float64)
    assert layer.weight.dtype == torch.float64
    layer = layer.to(torch.bfloat16)
    assert layer.window_assignment.dtype == torch.int32
    assert layer(torch.randn(1, 16, 2, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_constructor_errors_name_the_problem():
    with pytest.raises(ValueError, match="not divisible by cg=4"):
        SCCConv2d(30, 30, cg=4, co=0.5)
    with pytest.raises(ValueError, match="stride=0 is invalid"):
        SCCConv2d(8, 8, cg=2, co=0.5, stride=0)
    with pytest.raises(ValueError, match=r"only equal strides"):
        SCCConv2d(8, 8, cg=2, co=0.5, stride=(1, 2))
    with pytest.raises(ValueError, match="one per output channel"):
        SCCConv2d(8, 8, cg=2, co=0.5, window_of=[0, 1])


def test_compile_module_fullgraph():
    layer = SCCConv2d(16, 32, cg=4, co=0.5, bias=True, window_of=[(o * 3) % 8 for o in range(32)])
    x = torch.randn(2, 16, 4, 4)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))
