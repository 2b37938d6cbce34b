"""Second moments of a searched layer on the calibration images, kept per fold.

For every searched 1x1 convolution a fixed random sample of output pixels is drawn per image
(:class:`PixelSample`). At those pixels the layer's input ``u`` (subsampled first when the
conv is strided, as the SCC sees it) and the original network's output ``y`` give, per fold
of images (image ``i`` belongs to fold ``i % folds``), a :class:`LayerMoments`:

* ``gram``  ``A^T A`` with ``A = [u, 1]`` (the constant column fits the intercept);
* ``cross`` ``A^T y``;
* ``target_sq`` ``sum(y**2)`` per output channel;
* ``rows``  the number of sampled pixels.

These are what :func:`scc_convert.convert.transfer.solve_windows` fits an SCC from, so every
``(cg, co)`` of a layer can be fitted on some folds and judged on the others without running
the model again (:mod:`.sensitivity`). Everything is accumulated in fp64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LayerMoments", "PixelSample", "layer_moments"]


class PixelSample:
    """The same ``per_image`` random pixels of every image of one layer's output grid
    (all of them when an image has fewer), drawn once from ``seed``."""

    def __init__(self, per_image: int, seed: int) -> None:
        self.per_image, self.seed = per_image, seed
        self._index: Tensor | None = None

    def rows(self, t: Tensor) -> Tensor:
        """``[N, k, C]``: the sampled pixels of a ``[N, C, H, W]`` tensor, per image."""
        n, c, h, w = t.shape
        pixels = h * w
        if self._index is None or self._index.shape[0] != n:
            take = min(self.per_image, pixels)
            gen = torch.Generator().manual_seed(self.seed)
            self._index = torch.stack([torch.randperm(pixels, generator=gen)[:take] for _ in range(n)])
        index = self._index.to(t.device)
        flat = t.reshape(n, c, pixels)
        return flat.gather(2, index[:, None, :].expand(n, c, index.shape[1])).transpose(1, 2)


def per_image(samples: int, images: int) -> int:
    """Pixels drawn per image so that about ``samples`` rows enter a layer's fit."""
    return max(1, math.ceil(samples / images))


@dataclass
class LayerMoments:
    """Per-fold second moments of one layer (see the module docstring); shapes ``[F, ...]``."""

    gram: Tensor  # [F, D, D], D = in_channels + 1
    cross: Tensor  # [F, D, Cout]
    target_sq: Tensor  # [F, Cout]
    rows: Tensor  # [F]

    @property
    def folds(self) -> int:
        return self.gram.shape[0]

    def pooled(self, folds: Iterable[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(gram, cross, target_sq)`` summed over ``folds`` (default: all)."""
        idx = list(range(self.folds)) if folds is None else list(folds)
        return self.gram[idx].sum(0), self.cross[idx].sum(0), self.target_sq[idx].sum(0)

    def centred_energy(self, fold: int) -> float:
        """``sum((y - mean(y))**2)`` over the fold's sampled pixels and output channels."""
        n = float(self.rows[fold])
        if n == 0:
            return 0.0
        total = self.cross[fold, -1]  # the constant column: sum(y) per output channel
        return float(self.target_sq[fold].sum() - total.square().sum() / n)


def layer_moments(inputs: Tensor, targets: Tensor, folds: int) -> LayerMoments:
    """Moments from ``inputs`` ``[N, k, Cin]`` and ``targets`` ``[N, k, Cout]`` (the rows of
    :meth:`PixelSample.rows`), image ``i`` in fold ``i % folds``."""
    n, k, _ = inputs.shape
    a = torch.cat([inputs.double(), inputs.new_ones(n, k, 1, dtype=torch.float64)], 2)
    y = targets.to(a.device, torch.float64)
    grams, crosses, squares, rows = [], [], [], []
    for f in range(folds):
        af = a[f::folds].reshape(-1, a.shape[2])
        yf = y[f::folds].reshape(-1, y.shape[2])
        grams.append(af.t() @ af)
        crosses.append(af.t() @ yf)
        squares.append(yf.square().sum(0))
        rows.append(float(af.shape[0]))
    return LayerMoments(torch.stack(grams).cpu(), torch.stack(crosses).cpu(), torch.stack(squares).cpu(),
                        torch.tensor(rows, dtype=torch.float64))
