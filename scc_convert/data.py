"""Small offline data sets for quick runs.

* scikit-learn's bundled handwritten digits (:func:`digits_tensors`, :func:`digits_loaders`):
  ``sklearn.datasets.load_digits`` reads a file inside the scikit-learn package (1,797
  grey-scale 8x8 images of the digits 0-9, pixel values 0..16).
* real colour photos for ImageNet-style models (:func:`photo_crops`): random crops of the
  photographs that ship inside scikit-image (``skimage.data``: astronaut, chelsea, coffee,
  rocket, ...), ImageNet-normalised.

Nothing here downloads anything. scikit-learn and scikit-image are optional dependencies
(``pip install scc-convert[examples]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DIGITS_NUM_CLASSES", "DIGITS_IMAGE_SIZE", "digits_tensors", "digits_loaders", "PHOTOS", "photo_crops"]

DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SIZE = 32  # digits_loaders' default: the 8x8 scans upsampled 4x


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn, which is not installed: "
            "pip install scc-convert[examples] (or pip install scikit-learn)"
        ) from err
    return load_digits()


def digits_tensors(
    image_size: int = DIGITS_IMAGE_SIZE, channels: int = 3, val_fraction: float = 0.2, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """The digits as ``(train, val)`` ``TensorDataset`` s of ``(image, label)`` pairs.

    Images are float32 NCHW ``[channels, image_size, image_size]``: the 8x8 digit scaled to
    [0, 1], upsampled bilinearly, replicated over ``channels`` and normalised with the mean and
    standard deviation of the *training* pixels (one scalar each). Labels are int64 in 0..9.
    The split is a seeded random permutation: the first ``val_fraction`` of it is validation.

    Example:
        >>> train, val = digits_tensors(image_size=16, channels=1)  # doctest: +SKIP
        >>> train[0][0].shape, len(train) + len(val)                # doctest: +SKIP
        (torch.Size([1, 16, 16]), 1797)
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"digits: image_size={image_size!r} must be an int >= 8 (the digits are 8x8)")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"digits: channels={channels!r} must be an int >= 1 (3 for ImageNet-style models)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"digits: val_fraction={val_fraction!r} must lie strictly between 0 and 1")
    bunch = _load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(labels)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_images = images[train_idx]
    mean, std = train_images.mean(), train_images.std()

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).expand(-1, channels, -1, -1).contiguous()

    return (
        TensorDataset(prepare(train_images), labels[train_idx]),
        TensorDataset(prepare(images[val_idx]), labels[val_idx]),
    )


def digits_loaders(
    batch_size: int = 64,
    image_size: int = DIGITS_IMAGE_SIZE,
    channels: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` over scikit-learn's digits (10 classes), ready for training.

    See :func:`digits_tensors` for the image convention. The training loader shuffles with its
    own generator seeded by ``seed`` (the order of every epoch is reproducible and independent of
    the global RNG); the validation loader keeps a fixed order. Both keep the last partial batch.

    Raises:
        ImportError: scikit-learn is missing (``pip install scc-convert[examples]``).

    Example:
        >>> train_loader, val_loader = digits_loaders(batch_size=32, image_size=32)  # doctest: +SKIP
        >>> x, y = next(iter(train_loader))                                          # doctest: +SKIP
        >>> x.shape, y.shape                                                         # doctest: +SKIP
        (torch.Size([32, 3, 32, 32]), torch.Size([32]))
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"digits: batch_size={batch_size!r} must be an int >= 1")
    train, val = digits_tensors(image_size=image_size, channels=channels, val_fraction=val_fraction, seed=seed)
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
    )
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, val_loader


# scikit-image's bundled natural colour photographs (no download needed)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photos(names: tuple[str, ...]) -> list[torch.Tensor]:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "photo_crops needs scikit-image, which is not installed: "
            "pip install scc-convert[examples] (or pip install scikit-image)"
        ) from err
    out = []
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"photo_crops: unknown photo {name!r}; choose from {list(PHOTOS)}")
        array = getattr(skimage.data, name)()[..., :3]
        out.append(torch.as_tensor(array).permute(2, 0, 1).float() / 255.0)
    return out


def photo_crops(
    count: int,
    size: int = 224,
    seed: int = 0,
    *,
    photos: tuple[str, ...] = PHOTOS,
    scale: tuple[float, float] = (0.25, 1.0),
    flip: bool = True,
) -> torch.Tensor:
    """``[count, 3, size, size]`` float32 crops of real photos, ImageNet-normalised.

    Crop ``i`` comes from photo ``i % len(photos)``: a square covering a uniformly drawn
    fraction in ``scale`` of the photo's shorter side squared, at a uniform position, resized
    bilinearly (antialiased) to ``size`` and mirrored with probability 1/2 when ``flip``.
    The draw is seeded by ``seed`` alone, so two seeds give two different sets of crops (use
    one for calibration and another for evaluation).

    Example:
        >>> x = photo_crops(8, size=64, seed=1)  # doctest: +SKIP
        >>> x.shape                              # doctest: +SKIP
        torch.Size([8, 3, 64, 64])
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"photo_crops: count={count!r} must be an int >= 1")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"photo_crops: size={size!r} must be an int >= 8")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"photo_crops: scale={scale!r} must satisfy 0 < low <= high <= 1")
    images = _photos(tuple(photos))
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    out = torch.empty(count, 3, size, size)
    for i in range(count):
        img = images[i % len(images)]
        _, h, w = img.shape
        area = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=gen).item()
        side = max(8, round(min(h, w) * area ** 0.5))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = img[:, top:top + side, left:left + side][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if flip and torch.rand((), generator=gen).item() < 0.5:
            crop = crop.flip(-1)
        out[i] = (crop - mean) / std
    return out
