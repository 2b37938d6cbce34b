"""A small DW+PW (MobileNet-style) CNN on scikit-learn's digits, and the three equal-cost
replacements of its pointwise convs that the poster's Table IV compares.

Shared by ``examples/accuracy_study.py``, ``bench/convert_quality.py`` and their tests.
Nothing here downloads anything: the digits ship inside scikit-learn.

The network (:func:`digits_mobilenet`, input ``1 x 16 x 16`` by default):

* stem: 3x3 conv ``in_channels -> 32`` (no bias) + BN + ReLU;
* five blocks of [3x3 depthwise conv (no bias) + BN + ReLU + 1x1 conv (no bias) + BN + ReLU]
  with output channels 64, (128, s2), 128, (256, s2), 256 (the stride sits on the depthwise
  conv), all channel counts scaled by ``width``;
* global average pooling and a linear layer to 10 classes.

Module names read ``stem.conv``, ``blocks.2.dw``, ``blocks.2.pw``, ``classifier``; the five
``blocks.*.pw`` are the ``dw_pw`` candidates of :func:`scc_convert.convert`.

Equal-cost replacements of every ``blocks.*.pw`` (all built with :func:`scc_convert.convert`
so they share one layer type, one kernel and one fine-tuning path; only the connectivity
differs):

* ``"scc"`` — :class:`~scc_convert.SCCConv2d` with ``co > 0`` in the paper's output order
  (output ``o`` reads window ``o % cd``);
* ``"gpw_shuffle"`` — ``co = 0`` in the default order: output ``o`` reads group ``o % cg``,
  which *is* a grouped 1x1 conv (``nn.Conv2d(groups=cg)``) followed by ShuffleNet's
  ``nn.ChannelShuffle(cg)``;
* ``"gpw"`` — ``co = 0`` with the block order ``window_of[o] = o // (Cout / cg)``, which *is*
  a plain grouped 1x1 conv: the weight ``[Cout, gw]`` of the SCC is the ``[Cout, gw, 1, 1]``
  weight of ``nn.Conv2d(Cin, Cout, 1, groups=cg)``.

:func:`grouped_conv_equivalent` rebuilds any ``co = 0`` SCC as ``nn.Conv2d(groups=cg)`` plus
an output permutation, and :func:`check_gpw` asserts that the two agree; the scripts call it
on every GPW model they evaluate, and ``tests/test_examples.py`` checks the construction
against ``nn.Conv2d(groups=cg)`` and ``nn.ChannelShuffle`` directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import scc_convert
from scc_convert import SCCConv2d
from scc_convert.convert import recalibrate_batchnorm
from scc_convert.data import digits_tensors
from scc_convert.io import atomic_write
from scc_convert.models import dw_pw_block

__all__ = [
    "BLOCKS", "FAMILIES", "DigitsData", "digits_mobilenet", "load_digits", "train_loader",
    "calibration_images", "evaluate", "train_baseline", "convert_family", "block_order",
    "val_loader", "grouped_conv_equivalent", "check_gpw", "count", "machine", "write_json",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# (output channels at width 1, stride of the depthwise conv) of the five DW+PW blocks.
BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
STEM_CHANNELS = 32

FAMILIES: dict[str, str] = {
    "scc": "DW+SCC",
    "gpw_shuffle": "DW+GPW+shuffle",
    "gpw": "DW+GPW",
}
"""Replacement families: key -> label used in tables and plots."""


def digits_mobilenet(width: float = 1.0, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """The DW+PW CNN described in the module docstring (3.99M MACs and 136k parameters at
    ``width=1`` on a ``1x1x16x16`` input; MACs as :func:`scc_convert.profile` counts them).

    Example:
        >>> digits_mobilenet()(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    def scaled(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)  # multiples of 8: every cg in {2, 4, 8} divides

    cin = scaled(STEM_CHANNELS)
    blocks = []
    stem = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, cin, 3, padding=1, bias=False),
        bn=nn.BatchNorm2d(cin),
        relu=nn.ReLU(inplace=True),
    ))
    for cout, stride in BLOCKS:
        blocks.append(dw_pw_block(cin, scaled(cout), stride, dw_bias=False))
        cin = scaled(cout)
    return nn.Sequential(OrderedDict(
        stem=stem,
        blocks=nn.Sequential(*blocks),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        classifier=nn.Linear(cin, num_classes),
    ))


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsData:
    """The digits split once (``split_seed``) into train and validation tensors, NCHW float32."""

    train: TensorDataset
    val: TensorDataset
    image_size: int
    split_seed: int

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(1, C, H, W)`` of one image."""
        return (1, *self.train.tensors[0].shape[1:])


def load_digits(image_size: int = 16, split_seed: int = 0, val_fraction: float = 0.2) -> DigitsData:
    """1,797 digits, grey-scale (1 channel), upsampled to ``image_size``; 20% held out."""
    train, val = digits_tensors(image_size=image_size, channels=1, val_fraction=val_fraction, seed=split_seed)
    return DigitsData(train, val, image_size, split_seed)


def train_loader(data: DigitsData, batch_size: int, seed: int) -> DataLoader:
    """Shuffled training batches; ``seed`` fixes the order of every epoch (the split stays fixed)."""
    return DataLoader(data.train, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def val_loader(data: DigitsData, batch_size: int = 256) -> DataLoader:
    """The validation images in a fixed order."""
    return DataLoader(data.val, batch_size=batch_size, shuffle=False)


def calibration_images(data: DigitsData, n: int, seed: int) -> Tensor:
    """``n`` training images (no labels) drawn without replacement by ``seed``."""
    x = data.train.tensors[0]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx].clone()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / total


def train_baseline(model: nn.Module, data: DigitsData, *, epochs: int, lr: float = 0.1,
                   batch_size: int = 64, seed: int = 0) -> dict:
    """Train ``model`` in place from scratch with cross-entropy (SGD + Nesterov, cosine
    schedule, weight decay 5e-4) through :func:`scc_convert.finetune`; returns the history,
    the validation accuracy and the wall time in seconds."""
    started = time.perf_counter()
    result = scc_convert.finetune(
        model, train_loader(data, batch_size, seed), val_data=val_loader(data), epochs=epochs,
        lr=lr, weight_decay=5e-4, seed=seed, progress=False, device="cpu",
    )
    model.eval()
    return {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        "val_accuracy": evaluate(model, val_loader(data)),
        "history": [{"epoch": e.epoch, "train_loss": e.train_loss, "val_accuracy": e.val_accuracy} for e in result.history],
        "seconds": time.perf_counter() - started,
    }


def trained_original(data: DigitsData, *, width: float, epochs: int) -> tuple[nn.Module, dict]:
    """The DW+PW CNN trained from scratch (seed 0) in eval mode, and its record: the
    :func:`train_baseline` history plus ``macs`` and ``params`` for one image."""
    torch.manual_seed(0)
    model = digits_mobilenet(width=width)
    record = train_baseline(model, data, epochs=epochs, seed=0)
    model.eval()
    counts = count(model, model, data.input_shape)
    return model, {**record, "macs": counts["macs"], "params": counts["params"]}


# -- the equal-cost replacements -------------------------------------------------------------


def block_order(out_channels: int, cg: int) -> tuple[int, ...]:
    """``window_of`` of a plain grouped conv: output ``o`` reads group ``o // (Cout / cg)``."""
    if out_channels % cg:
        raise ValueError(f"block order needs cg={cg} to divide out_channels={out_channels}")
    per = out_channels // cg
    return tuple(o // per for o in range(out_channels))


def convert_family(
    model: nn.Module,
    family: str,
    cg: int,
    co: float = 0.0,
    *,
    input_shape: Sequence[int],
    init: str = "slice",
    calib: Tensor | None = None,
    recalibrate_bn: bool = False,
) -> tuple[nn.Module, scc_convert.ConversionReport]:
    """Replace every ``blocks.*.pw`` of ``model`` (a copy) with the given family at channel
    groups ``cg`` (``co`` is used by ``"scc"`` only; the GPW families have ``co = 0``).
    ``input_shape`` (NCHW, one image) is where the report counts MACs.

    ``init`` is passed to :func:`scc_convert.convert` (``"lsq"`` needs ``calib``). For
    ``"gpw"`` only ``init="slice"`` is accepted: ``energy`` and ``lsq`` choose the
    output-to-group assignment themselves, which would undo the block order; a ``co = 0``
    conversion with those inits is a grouped conv followed by a *chosen* permutation (use
    ``"gpw_shuffle"`` for it). With ``recalibrate_bn`` the BatchNorm statistics are
    re-estimated on ``calib`` after the weights are final (for ``"gpw"``: after re-slicing;
    the report's ``kept_energy`` is then that of the block-order weights).
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; choose from {list(FAMILIES)}")
    if family == "gpw" and init != "slice":
        raise ValueError(f"family 'gpw' keeps the block order, which init={init!r} would replace; use init='slice'")
    if family != "scc":
        co = 0.0
    elif co <= 0:
        raise ValueError(f"family 'scc' needs co > 0 (co=0 is a grouped conv), got co={co}")
    needs_calib = init == "lsq" or recalibrate_bn
    if needs_calib and calib is None:
        raise ValueError("init='lsq' and recalibrate_bn need calib (a batch of training images)")
    own_bn = family == "gpw"  # BN statistics only after the block-order weights are in place
    small, report = scc_convert.convert(
        model, cg, co, patterns=("dw_pw",), init=init,
        calib_data=calib if needs_calib and not own_bn else None,
        recalibrate_bn=recalibrate_bn and not own_bn, example_inputs=torch.zeros(tuple(input_shape)),
    )
    expected = sum(1 for name, m in model.named_modules() if name.endswith(".pw") and isinstance(m, nn.Conv2d))
    if len(report.converted) != expected:
        skipped = {r.name: r.reason for r in report.skipped}
        raise RuntimeError(f"expected {expected} converted pointwise convs, got {len(report.converted)}: {skipped}")
    if family == "gpw":
        originals = dict(model.named_modules())
        with torch.no_grad():
            for record in report.converted:
                layer = small.get_submodule(record.name)
                order = block_order(layer.out_channels, layer.cg)
                layer.set_window_of(order)
                dense = originals[record.name].weight[:, :, 0, 0]
                index = torch.tensor(layer.geometry.input_channels_of(order), dtype=torch.long)
                layer.weight.copy_(dense.gather(1, index))
                record.kept_energy = (layer.weight.double().square().sum() / dense.double().square().sum()).item()
        if recalibrate_bn:
            _recalibrate(small, calib)
    return small, report


def _recalibrate(model: nn.Module, calib: Tensor) -> None:
    """BatchNorm statistics re-estimated on ``calib``, as ``convert(recalibrate_bn=True)`` does."""
    was_training = model.training
    recalibrate_batchnorm(model, calib)
    model.train(was_training)


def grouped_conv_equivalent(layer: SCCConv2d) -> tuple[nn.Conv2d, Tensor]:
    """For a ``co = 0`` SCC: ``(conv, perm)`` with ``layer(x) == conv(x)[:, perm]``, where
    ``conv`` is an ``nn.Conv2d(Cin, Cout, 1, groups=cg)`` whose outputs are sorted by group.

    ``perm`` is the identity exactly when the layer is in block order (a plain GPW); in the
    default order ``o % cg`` it is ShuffleNet's channel shuffle.
    """
    g = layer.geometry
    if g.overlap_channels != 0:
        raise ValueError(f"the layer has overlapping windows (co={g.co}); only co=0 is a grouped conv")
    window_of = torch.tensor(layer.window_of)
    # Stable sort by group: grouped-conv output j is the SCC output sorted_outputs[j].
    sorted_outputs = torch.sort(window_of, stable=True).indices
    conv = nn.Conv2d(g.in_channels, g.out_channels, 1, stride=layer.stride, groups=g.cg,
                     bias=layer.bias is not None, dtype=layer.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[sorted_outputs][:, :, None, None])
        if layer.bias is not None:
            conv.bias.copy_(layer.bias[sorted_outputs])
    perm = torch.empty_like(sorted_outputs)
    perm[sorted_outputs] = torch.arange(g.out_channels)
    return conv, perm


@torch.no_grad()
def check_gpw(model: nn.Module, order: str = "any", seed: int = 0) -> int:
    """Assert that every SCC layer of ``model`` is a grouped 1x1 conv on a random
    ``2 x Cin x 6 x 6`` input: ``nn.Conv2d(groups=cg)`` itself for ``order="block"`` (plain
    GPW), ``nn.Conv2d(groups=cg)`` then ``nn.ChannelShuffle(cg)`` for ``order="shuffle"``, and
    ``nn.Conv2d(groups=cg)`` then some output permutation for ``order="any"``. Returns the
    number of layers checked; raises ``AssertionError`` on any mismatch (or a layer with
    ``co > 0``)."""
    if order not in ("block", "shuffle", "any"):
        raise ValueError(f"order={order!r}; choose 'block', 'shuffle' or 'any'")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SCCConv2d)]
    gen = torch.Generator().manual_seed(seed)
    for name, layer in layers:
        assert layer.geometry.overlap_channels == 0, f"{name}: co={layer.co} is not a grouped conv"
        conv, perm = grouped_conv_equivalent(layer)
        x = torch.randn(2, layer.in_channels, 6, 6, generator=gen, dtype=layer.weight.dtype)
        if order == "block":
            assert torch.equal(perm, torch.arange(layer.out_channels)), f"{name}: not in block order"
            reference = conv(x)
        elif order == "shuffle":
            reference = nn.ChannelShuffle(layer.cg)(conv(x))
        else:
            reference = conv(x)[:, perm]
        torch.testing.assert_close(layer(x), reference, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    return len(layers)


def count(original: nn.Module, converted: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Whole-model MACs (one image) and parameters of both models, from :func:`scc_convert.profile`."""
    report = scc_convert.profile(original, converted, input_shape=tuple(input_shape), latency=False)
    return {
        "macs_before": report.before.macs, "params_before": report.before.params,
        "macs": report.after.macs, "params": report.after.params,
    }


def machine() -> dict:
    """What the numbers were measured on (``bench/_common.machine()``: CPU, cores, threads,
    torch and Python versions, date)."""
    spec = importlib.util.spec_from_file_location("_bench_common", ROOT / "bench" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.machine()


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, atomically (readers never see a partial file)."""
    text = json.dumps(payload, indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
