"""Example-input inference (scc_convert.inputs) and its use by convert, profile and export:
a model not built for 224x224 converts, counts and exports without being told its size."""

import logging

import pytest
import torch
from torch import nn

import scc_convert
from scc_convert.inputs import TRIED_SIZES, as_inputs, declared_shape, find_example_inputs
from scc_convert.models import cifar_mobilenet


def fixed_size_net(size: int, channels: int = 3) -> nn.Sequential:
    """Runs only on ``size x size`` inputs (the flatten feeds a fixed-width linear layer)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.Flatten(),
        nn.Linear(32 * size * size, 5),
    ).eval()


class Declares(nn.Module):
    def __init__(self, size, **attrs):
        super().__init__()
        self.net = fixed_size_net(size)
        for k, v in attrs.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.net(x)


def test_cifar_net_is_found_at_32_after_224_fails():
    found = find_example_inputs(cifar_mobilenet().eval())
    assert found.shape == (1, 3, 32, 32) and found.source == "tried"
    assert found.tried == ((1, 3, 224, 224),) and "mat1 and mat2" in found.error


@pytest.mark.parametrize("size", TRIED_SIZES)
def test_every_tried_size_is_reached(size):
    found = find_example_inputs(fixed_size_net(size))
    assert found.shape == (1, 3, size, size)
    assert len(found.tried) == TRIED_SIZES.index(size)


@pytest.mark.parametrize("attrs,shape", [
    ({"pretrained_cfg": {"input_size": (3, 40, 40)}}, (1, 3, 40, 40)),
    ({"default_cfg": {"input_size": (3, 40, 40)}}, (1, 3, 40, 40)),
    ({"input_size": 40}, (1, 3, 40, 40)),
    ({"input_size": (40, 40)}, (1, 3, 40, 40)),
    ({"input_size": (8, 3, 40, 40)}, (1, 3, 40, 40)),
])
def test_declared_sizes_are_used_first(attrs, shape):
    model = Declares(40, **attrs)
    assert declared_shape(model) == shape
    found = find_example_inputs(model)
    assert found.shape == shape and found.source == "declared" and found.tried == ()


def test_a_declared_size_that_fails_falls_back_to_the_tried_sizes():
    model = Declares(64, pretrained_cfg={"input_size": (3, 40, 40)})
    found = find_example_inputs(model)
    assert found.shape == (1, 3, 64, 64) and found.source == "tried"
    assert found.tried[:2] == ((1, 3, 40, 40), (1, 3, 224, 224))


def test_input_channels_come_from_the_first_conv():
    found = find_example_inputs(fixed_size_net(32, channels=1))
    assert found.shape == (1, 1, 32, 32)


def test_a_shape_tuple_is_an_input():
    (x,) = as_inputs((2, 3, 8, 8), dtype=torch.float64)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float64
    t = torch.ones(1)
    assert as_inputs(t) == (t,) and as_inputs([t, t]) == (t, t)
    with pytest.raises(TypeError, match="shape such as"):
        as_inputs("1,3,8,8")
    with pytest.raises(ValueError, match=">= 1"):
        as_inputs((1, 0, 8, 8))


def test_convert_without_example_inputs_counts_macs_on_the_found_size():
    model = cifar_mobilenet().eval()
    _, found = scc_convert.convert(model)
    _, given = scc_convert.convert(model, example_inputs=torch.randn(1, 3, 32, 32))
    _, shape = scc_convert.convert(model, example_inputs=(1, 3, 32, 32))
    assert found.input_shape == given.input_shape == shape.input_shape == (1, 3, 32, 32)
    assert found.totals() == given.totals() == shape.totals()
    assert "the first size it ran on; it failed on 3-channel 224x224" in str(found)


def test_convert_never_fails_for_want_of_an_input():
    class NeedsTwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(32, 64, 1)

        def forward(self, x, scale):
            return self.pw(x) * scale

    small, report = scc_convert.convert(NeedsTwoInputs())
    assert isinstance(small.pw, scc_convert.SCCConv2d) and report.input_shape is None
    assert report.totals()["macs_before"] is None
    line = next(line for line in str(report).splitlines() if "MACs unknown" in line)
    assert "example_inputs=(1, C, H, W)" in line and "--input-shape" in line
    assert "3-channel" not in line and "32-channel 224x224, 32x32" in line


def test_a_given_input_that_fails_is_still_an_error():
    with pytest.raises(ValueError, match=r"failed on an example input of shape \(1, 3, 64, 64\)"):
        scc_convert.convert(cifar_mobilenet(), example_inputs=(1, 3, 64, 64))


def test_no_fake_tensor_log_reaches_the_user(capfd, caplog):
    with caplog.at_level(logging.DEBUG):
        scc_convert.convert(cifar_mobilenet())
        scc_convert.profile(cifar_mobilenet(), latency=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("torch")]
    assert not logging.getLogger("torch._subclasses.fake_tensor").disabled  # restored afterwards


def test_profile_without_input_shape_uses_the_found_size():
    model = cifar_mobilenet()
    small, _ = scc_convert.convert(model, cg=2)
    report = scc_convert.profile(model, small, latency=False, batch_sizes=(1, 2))
    assert report.settings["input_shape"] == [1, 3, 32, 32] and report.settings["input_source"] == "tried"
    assert "input: (1, 3, 32, 32) (the first size the model ran on)" in str(report)
    given = scc_convert.profile(model, small, latency=False, input_shape=(1, 3, 32, 32))
    assert report.before.macs == given.before.macs and report.after.macs == given.after.macs


def test_profile_with_no_size_that_runs_says_how_to_give_one():
    with pytest.raises(ValueError, match=r"no input_shape given.*example_inputs=\(1, C, H, W\)"):
        scc_convert.profile(fixed_size_net(20), latency=False)


def test_export_program_finds_the_input_or_takes_a_shape(tmp_path):
    from scc_convert.export import export_program

    small, _ = scc_convert.convert(fixed_size_net(32), cg=2)
    export_program(small, None, tmp_path / "found.pt2")
    export_program(small, (1, 3, 32, 32), tmp_path / "shape.pt2")
    loaded = torch.export.load(tmp_path / "found.pt2").module()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded(x), small(x))
    with pytest.raises(ValueError, match="no example_input given"):
        export_program(fixed_size_net(20), None, tmp_path / "none.pt2")


class CachesInEval(nn.Module):
    """Caches a derived tensor on first eval forward, as timm's EfficientViT attention biases do."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(16, 32, 1)
        self.scale = nn.Parameter(torch.ones(32))
        self.cache = {}

    def forward(self, x):
        if not self.training:
            if "s" not in self.cache:
                self.cache["s"] = self.scale * 2
            self.last = self.cache["s"]
            return self.pw(x) * self.cache["s"][:, None, None]
        return self.pw(x) * self.scale[:, None, None] * 2


def test_what_a_fake_run_caches_is_undone():
    model = CachesInEval().eval()
    small, report = scc_convert.convert(model, example_inputs=(1, 16, 8, 8))
    assert report.input_shape == (1, 16, 8, 8) and report.totals()["macs_before"] == 16 * 32 * 64
    assert small.cache == {} and not hasattr(small, "last")
    small(torch.randn(1, 16, 8, 8))  # real tensors again: no fake tensor left behind
    assert not model.cache
