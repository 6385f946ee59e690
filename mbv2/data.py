"""A small real data set for the book's experiments: scikit-learn's handwritten digits.

The 1,797 digits are 8x8 grayscale images of the ten classes 0-9. The smallest input
that the network of Table 2 accepts is 32x32 (five stride-2 layers), so the images are
upsampled and repeated to three channels. scikit-learn ships the data, so nothing is
downloaded; it is imported only when the data are loaded (``mbv2`` itself needs only
torch and numpy).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import non_negative_int, positive_int, real_at_least

NUM_CLASSES = 10


class Digits(NamedTuple):
    """A train/test split of the digits: images ``(N, 3, S, S)`` float32, labels ``(N,)`` int64.

    ``mean`` and ``std`` are the statistics the pixels (in [0, 1]) were standardised with:
    ``x * std + mean`` gives the images back.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def load_digits(*, image_size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """The handwritten digits as a stratified train/test split, ready for :class:`~mbv2.MobileNetV2`.

    Each 8x8 image (pixel values 0-16) is upsampled to ``image_size`` x ``image_size``
    by bilinear interpolation and repeated to three channels; the pixels are then
    standardised with the mean and standard deviation of the *training* images.

    Args:
        image_size: side of the returned images, at least 8 (32 for Table 2).
        test_fraction: the share of each class held out for testing, in (0, 1).
        seed: fixes the split; the same seed always gives the same split.
    """
    image_size = positive_int("image_size", image_size)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 (the digits are 8x8), got {image_size}")
    test_fraction = real_at_least("test_fraction", test_fraction, 0.0, strict=True)
    if test_fraction >= 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = non_negative_int("seed", seed)

    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(
        indices, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                           align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    mean, std = images[train].mean(), images[train].std()
    images = ((images - mean) / std).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return Digits(images[train], labels[train], images[test], labels[test], mean.item(), std.item())
