"""finetune: losses, distillation, BatchNorm, AMP, checkpoints, exact resume, progress, torchrun."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_helpers import calibrate_bn, conv_net, one_thread, scc_net, synthetic  # noqa: F401 (one_thread: autouse fixture)
from scc_convert.data import DIGITS_NUM_CLASSES, digits_loaders
from scc_convert.finetune import CHECKPOINT_FORMAT, EpochStats, finetune

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def loader(n: int = 128, seed: int = 0, batch_size: int = 32) -> DataLoader:
    """A labelled loader whose shuffling has its own seeded generator."""
    return DataLoader(
        TensorDataset(*synthetic(n, seed=seed)),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def val_loader(n: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(*synthetic(n, seed=99)), batch_size=32)


def kl_to_teacher(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        return F.kl_div(
            F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True, reduction="batchmean"
        ).item()


def pw_outputs_mse(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    """MSE between the student's and the teacher's ``pw`` outputs, recorded by hooks of our own."""
    outs = {}
    handles = [
        m.pw.register_forward_hook(lambda mod, a, out, key=key: outs.__setitem__(key, out))
        for key, m in (("s", student), ("t", teacher))
    ]
    student.eval()
    teacher.eval()
    with torch.no_grad():
        student(x)
        teacher(x)
    for h in handles:
        h.remove()
    return F.mse_loss(outs["s"], outs["t"]).item()


def bn_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def without_time(history: list[EpochStats]) -> list[tuple]:
    return [(e.epoch, e.step, e.batches, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr, e.complete)
            for e in history]


# -- losses -------------------------------------------------------------------------------


def test_cross_entropy_lowers_the_loss_and_learns():
    model = scc_net()
    result = finetune(model, loader(), val_data=val_loader(), epochs=4, lr=0.2, progress=False, log_every=2)
    losses = [e.train_loss for e in result.history]
    assert result.model is model and model.training
    assert [e.epoch for e in result.history] == [1, 2, 3, 4] and result.steps == 16
    assert losses[-1] < 0.5 * losses[0]
    assert result.final["val_accuracy"] > 0.6  # chance is 0.25
    assert result.best_metric == "val_accuracy" and result.best_value == max(e.val_accuracy for e in result.history)
    assert [s.step for s in result.log] == list(range(2, 17, 2))
    assert result.amp == "off" and result.device == "cpu" and result.world_size == 1
    assert result.best_checkpoint is None and result.last_checkpoint is None
    json.dumps(result.to_dict())


def test_distillation_without_labels_moves_the_student_toward_the_teacher():
    x, _ = synthetic(128)
    teacher = calibrate_bn(conv_net(seed=1), x)
    with torch.no_grad():
        teacher.head.weight.mul_(4)  # a confident teacher: a target worth matching
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = scc_net(seed=0)
    batches = [x[i : i + 32] for i in range(0, 128, 32)]  # bare tensors: no labels
    before = kl_to_teacher(student, teacher, x)
    result = finetune(student, batches, teacher=teacher, epochs=4, lr=0.2, progress=False)
    assert kl_to_teacher(student, teacher, x) < 0.5 * before
    assert all(e.train_accuracy is None for e in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key  # the teacher never trains


def test_feature_distillation_without_labels_matches_the_converted_layer():
    x, _ = synthetic(128)
    teacher = calibrate_bn(conv_net(seed=1), x)
    student = scc_net(seed=0)  # the teacher with its 1x1 conv replaced by a random SCC
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("pw.")}, strict=False)
    head_before = student.head.weight.clone()
    before = pw_outputs_mse(student, teacher, x)
    finetune(
        student, [x[i : i + 32] for i in range(0, 128, 32)], teacher=teacher, kd_alpha=0.0, feature_kd=True,
        epochs=4, optimizer="adamw", lr=1e-2, freeze_bn=True, progress=False,
    )
    assert pw_outputs_mse(student, teacher, x) < 0.5 * before
    assert torch.equal(student.head.weight, head_before)  # feature loss alone: no gradient reaches the head


def test_feature_distillation_needs_an_original_conv_at_the_same_path():
    with pytest.raises(ValueError, match="same module path"):
        finetune(scc_net(), loader(), teacher=scc_net(seed=1), feature_kd=True, progress=False)


def test_mixed_loss_with_labels_and_teacher():
    teacher = conv_net(seed=1)
    result = finetune(scc_net(), loader(), teacher=teacher, kd_alpha=0.3, epochs=2, lr=0.05, progress=False)
    assert result.history[-1].train_accuracy is not None
    assert result.history[-1].train_loss < result.history[0].train_loss


# -- BatchNorm, AMP, optimizers, schedules -------------------------------------------------


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_running_statistics(freeze_bn):
    model = scc_net()
    stats, weight = bn_statistics(model), model.pw.weight.clone()
    bn_weight = model.pw_bn.weight.clone()
    finetune(model, loader(), epochs=1, lr=0.05, freeze_bn=freeze_bn, progress=False)
    unchanged = [torch.equal(v, bn_statistics(model)[k]) for k, v in stats.items()]
    assert all(unchanged) if freeze_bn else not any(unchanged)
    assert not torch.equal(model.pw.weight, weight) and not torch.equal(model.pw_bn.weight, bn_weight)
    assert all(m.training for m in model.modules())  # train/eval flags restored


def test_bf16_autocast_on_cpu_when_asked():
    model = conv_net()  # the SCC op has no autocast rule yet; see the report
    dtypes = []
    model.pw.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    result = finetune(model, loader(), epochs=1, amp="bf16", progress=False)
    assert result.amp == "bf16" and set(dtypes) == {torch.bfloat16}
    assert math.isfinite(result.final["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_trains_the_scc_model(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = scc_net()
    result = finetune(model, loader(), epochs=3, lr=0.05, amp=amp, device="cuda", progress=False)
    assert result.amp == amp and result.device.startswith("cuda")
    assert next(model.parameters()).is_cuda and model.pw.weight.dtype == torch.float32
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_optimizer_factory_and_step_schedule():
    result = finetune(
        scc_net(), loader(96), epochs=3, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        schedule="step", log_every=1, progress=False,
    )
    lrs = [s.lr for s in result.log]  # the lr after each of the 9 steps
    assert lrs == pytest.approx([0.1 * 0.1 ** min(2, 3 * s // 9) for s in range(1, 10)])


def test_cosine_schedule_ends_at_zero_and_steps_cap_the_run():
    result = finetune(scc_net(), loader(96), epochs=5, steps=7, lr=0.05, log_every=1, progress=False)
    assert result.steps == 7 and [e.batches for e in result.history] == [3, 3, 1]
    assert [e.complete for e in result.history] == [True, True, False]
    assert result.log[-1].lr == pytest.approx(0.0, abs=1e-12)
    assert result.log[0].lr == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 7)))


# -- checkpoints and resume ---------------------------------------------------------------


def _resume_run(directory: Path, *, model_seed: int = 0, crash_after: int | None = None, **kwargs):
    """3 epochs of 3 batches, with dropout, shuffling and validation: every RNG matters."""
    model = scc_net(seed=model_seed, dropout=0.3)
    if crash_after is not None:
        calls = itertools.count(1)

        def crash(module, args):
            if module.training and next(calls) > crash_after:
                raise RuntimeError("simulated crash")

        model.register_forward_pre_hook(crash)
    result = finetune(
        model, loader(96), val_data=val_loader(), epochs=3, lr=0.05, checkpoint_dir=directory,
        progress=False, log_every=2, **kwargs,
    )
    return model, result


@pytest.mark.parametrize("how", ["crash_after_epoch_2", "steps_cap_mid_epoch"])
def test_resume_continues_bit_for_bit(tmp_path, how):
    if how == "crash_after_epoch_2":
        first, then = {"crash_after": 6}, {}
    else:  # stop after 5 of 9 steps (mid-epoch 2), then continue to 8
        first, then = {"steps": 5, "schedule": "constant"}, {"steps": 8, "schedule": "constant"}
    reference, expected = _resume_run(tmp_path / "straight", **then)
    if "crash_after" in first:
        with pytest.raises(RuntimeError, match="simulated crash"):
            _resume_run(tmp_path / "resumed", **first)
    else:
        _resume_run(tmp_path / "resumed", **first)
    assert (tmp_path / "resumed" / "last.pt").is_file()
    torch.manual_seed(999)  # a new process: the global RNGs are anywhere
    random.seed(999)
    resumed, result = _resume_run(tmp_path / "resumed", model_seed=7, resume=True, **then)
    assert_same_state(resumed, reference)
    assert result.steps == expected.steps
    assert without_time(result.history) == without_time(expected.history)
    assert result.log == expected.log
    ours = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    theirs = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert ours["format"] == CHECKPOINT_FORMAT
    for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_checkpoints_and_best(tmp_path):
    kwargs = {"val_data": val_loader(), "epochs": 3, "checkpoint_dir": tmp_path, "progress": False}
    result = finetune(scc_net(), loader(), lr=0.05, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]
    best = torch.load(result.best_checkpoint, weights_only=True)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["state"]["step"] == 12 and best["state"]["best_epoch"] == result.best_epoch
    assert best["state"]["best_value"] == max(e.val_accuracy for e in result.history)
    again = scc_net(seed=5)
    again.load_state_dict(last["model"])  # a checkpoint's model loads into a fresh model
    finished = finetune(again, loader(), resume=True, **kwargs)
    assert finished.steps == 12 and len(finished.history) == 3  # nothing left to do


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    good = finetune(scc_net(), loader(), epochs=1, checkpoint_dir=tmp_path / "a", progress=False)
    content = Path(good.last_checkpoint).read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as handle:
                handle.write(b"partial checkpoint")
        else:
            f.write(b"partial checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    for directory in (tmp_path / "a", tmp_path / "b"):  # over a good checkpoint, and into an empty dir
        with pytest.raises(OSError, match="disk full"):
            finetune(scc_net(), loader(), epochs=1, checkpoint_dir=directory, progress=False)
    assert sorted(os.listdir(tmp_path / "a")) == ["best.pt", "last.pt"]
    assert (tmp_path / "a" / "last.pt").read_bytes() == content
    assert os.listdir(tmp_path / "b") == []
    monkeypatch.setattr(torch, "save", real_save)


# -- progress and errors -----------------------------------------------------------------


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("progress, tty, shown", [(True, True, True), (False, True, False), (True, False, False)])
def test_progress_bar_only_when_asked_and_on_a_terminal(monkeypatch, capsys, progress, tty, shown):
    terminal = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", terminal)
    finetune(scc_net(), loader(), epochs=1, progress=progress, log_every=1)
    text = terminal.getvalue()
    assert ("epoch 1/1" in text and "loss=" in text) if shown else text == ""
    assert capsys.readouterr().out == ""


class _Unsized:
    def __iter__(self):
        return iter(loader())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"train_data": [synthetic(32)[0]]}, ValueError, "no labels"),
        ({"optimizer": "adam"}, ValueError, "optimizer='adam'"),
        ({"optimizer": torch.optim.SGD}, ValueError, "factory"),
        ({"amp": "fp16"}, ValueError, "fp16"),
        ({"amp": "fp8"}, ValueError, "amp='fp8'"),
        ({"resume": True}, ValueError, "checkpoint_dir"),
        ({"kd_alpha": 0.5}, ValueError, "teacher"),
        ({"feature_kd": True}, ValueError, "teacher"),
        ({"epochs": 0}, ValueError, "epochs=0"),
        ({"schedule": "linear"}, ValueError, "schedule='linear'"),
        ({"train_data": synthetic(32)[0]}, TypeError, "single Tensor"),
        ({"train_data": iter([synthetic(32)])}, TypeError, "iterator"),
        ({"train_data": _Unsized()}, ValueError, "steps=N"),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"amp": "fp4"}, ValueError, "(CUDA|fp4)"),
    ],
)
def test_bad_arguments_name_the_value_and_the_fix(kwargs, error, match):
    args = {"train_data": loader(), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        finetune(scc_net(), args.pop("train_data"), lr=0.01, **args)


# -- data ---------------------------------------------------------------------------------


def test_digits_loaders_and_a_real_fine_tune():
    pytest.importorskip("sklearn")
    train, val = digits_loaders(batch_size=64, image_size=8, channels=3, seed=0)
    assert len(train.dataset) + len(val.dataset) == 1797 and len(val.dataset) == 359
    x, y = train.dataset.tensors
    assert x.shape[1:] == (3, 8, 8) and y.min() == 0 and y.max() == DIGITS_NUM_CLASSES - 1
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2
    assert torch.equal(x[:, 0], x[:, 2])
    big, _ = digits_loaders(image_size=32, channels=1)
    assert big.dataset.tensors[0].shape[1:] == (1, 32, 32)
    assert torch.equal(next(iter(digits_loaders(seed=3)[0]))[1], next(iter(digits_loaders(seed=3)[0]))[1])
    model = scc_net(num_classes=DIGITS_NUM_CLASSES)
    result = finetune(model, train, val_data=val, epochs=3, lr=0.2, progress=False)
    assert result.final["val_accuracy"] > 0.5  # chance is 0.1


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install scc-convert\[examples\]"):
        digits_loaders()


# -- torchrun -----------------------------------------------------------------------------


def test_torchrun_two_ranks_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(TESTS / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in states[0]:  # parameters and BatchNorm buffers
        assert torch.equal(states[0][key], states[1][key]), key
    for report in reports:
        assert report["world_size"] == 2 and report["group_destroyed"] and report["result_is_model"]
        losses = [e["train_loss"] for e in report["history"]]
        assert len(losses) == 3 and losses[-1] < losses[0]
        # validation was sharded and all-reduced: it equals one rank's accuracy on all of it
        assert report["final"]["val_accuracy"] == pytest.approx(report["local_val_accuracy"], abs=1e-6)
    for stats in zip(*(r["history"] for r in reports)):  # metrics are all-reduced: the same everywhere
        assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
            {k: v for k, v in stats[0].items() if k != "seconds"}
        ] * 2
    assert reports[0]["last_checkpoint"] and reports[1]["last_checkpoint"] is None  # only rank 0 writes
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.pt", "last.pt"]
    seen = [r["seen"] for r in reports]
    per_epoch = 48  # 96 samples over 2 ranks
    for epoch in range(3):
        shards = [set(s[epoch * per_epoch : (epoch + 1) * per_epoch]) for s in seen]
        assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(96))
    assert seen[0][:per_epoch] != seen[0][per_epoch : 2 * per_epoch]  # set_epoch reshuffles
