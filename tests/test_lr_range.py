"""finetune(lr="auto"): the learning-rate range test, and a run that is exactly the fixed-rate
run it chose."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from finetune_helpers import one_thread, scc_net, synthetic  # noqa: F401 (one_thread: autouse fixture)
from scc_convert.finetune import finetune
from scc_convert.finetune.lr_range import range_test


def test_suggests_a_fifth_of_the_rate_of_lowest_loss():
    seen = []

    def step(lr):  # a loss falling until lr = 0.1, then rising steeply
        seen.append(lr)
        return 1.0 + (math.log10(lr) + 1) ** 2

    result = range_test(step, fallback=0.5)
    assert seen == sorted(seen) and seen[0] == pytest.approx(1e-5)
    lowest = result.lrs[result.losses.index(min(result.losses))]
    assert result.lr == pytest.approx(lowest / 5) and 0.005 < result.lr < 0.1
    assert "lowest" in result.reason


def test_stops_when_the_loss_diverges_or_is_not_finite():
    calls = []

    def step(lr):
        calls.append(lr)
        return 1.0 if lr < 1e-3 else (1e3 if lr < 1e-2 else float("nan"))

    result = range_test(step, fallback=0.5)
    assert len(calls) < 40 and all(math.isfinite(v) for v in result.losses)


def test_falls_back_when_the_loss_never_falls():
    result = range_test(lambda lr: 2.0 + lr, fallback=0.03)
    assert result.lr == 0.03 and "did not fall" in result.reason


def _loader():
    x, y = synthetic(96, seed=0)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_auto_run_equals_the_fixed_rate_run_it_chose():
    """The range test leaves no trace: model, BatchNorm statistics, RNG and data order are
    restored, so the run is bit-for-bit the run with the chosen rate given explicitly."""
    auto_model = scc_net(seed=3)
    auto = finetune(auto_model, _loader(), epochs=2, progress=False)
    assert auto.lr_test is not None and auto.lr == pytest.approx(auto.lr_test["lr"])
    assert len(auto.lr_test["lrs"]) == len(auto.lr_test["losses"]) > 5
    fixed_model = scc_net(seed=3)
    fixed = finetune(fixed_model, _loader(), epochs=2, lr=auto.lr, progress=False)
    assert fixed.lr_test is None and fixed.lr == auto.lr
    for (name, a), b in zip(auto_model.state_dict().items(), fixed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [e.train_loss for e in auto.history] == [e.train_loss for e in fixed.history]


def test_auto_with_resume_continues_exactly(tmp_path):
    """A run stopped by ``steps`` and resumed takes the rate from its checkpoint (no second
    range test) and ends where the uninterrupted run ends."""
    kwargs = dict(epochs=3, progress=False, schedule="constant")
    whole_model = scc_net(seed=4)
    whole = finetune(whole_model, _loader(), checkpoint_dir=tmp_path / "whole", **kwargs)
    finetune(scc_net(seed=4), _loader(), checkpoint_dir=tmp_path / "part", steps=7, **kwargs)
    again = scc_net(seed=99)
    resumed = finetune(again, _loader(), checkpoint_dir=tmp_path / "part", resume=True, **kwargs)
    assert resumed.lr == pytest.approx(whole.lr) and resumed.lr_test == whole.lr_test
    assert resumed.steps == whole.steps
    for a, b in zip(whole_model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_auto_needs_a_named_optimizer():
    with pytest.raises(ValueError, match="not used when optimizer is a factory"):
        finetune(scc_net(), _loader(), lr="auto", optimizer=lambda p: torch.optim.SGD(p, lr=0.1), progress=False)
    with pytest.raises(ValueError, match="or 'auto'"):
        finetune(scc_net(), _loader(), lr="fast", progress=False)
