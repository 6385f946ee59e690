"""Transfer learning: the trained backbone's features with a linear classifier on a new task.

The paper trains MobileNetV2 on ImageNet (Section 6.1) and uses the network as the
feature extractor of detection and segmentation models (Sections 6.2 and 6.3): its
convolutional layers are kept, and new heads are put on their feature maps. The simplest
form of such reuse is the *linear probe*: freeze the whole trained network, take the 1280
values that the global average pooling hands to the classifier (the output of Table 2's
"avgpool 7x7" row) as the features of an image, and train nothing but a new linear
classifier on them.

This module holds the pieces the transfer-learning chapter needs:

* :func:`imagenet_input` turns small grayscale images (the digits) into the input the
  ImageNet network expects: upsampled, three channels, ImageNet mean and standard deviation;
* :func:`pooled_features` runs a frozen network and returns the pooled features;
* :func:`sample_per_class` draws a fixed number of labelled images per class, reproducibly;
* :func:`fit_probe` fits the linear probe (a multinomial logistic regression on standardised
  features, scikit-learn);
* :func:`train_from_scratch` trains the same architecture from random weights on the same
  images, with :func:`mbv2.train.fit`, for the comparison;
* :func:`cheapest_within` is the rule by which choices are made on a validation split,
  and :class:`Stopwatch` times a block of code.

scikit-learn and torchvision are imported inside the functions that use them, so importing
this module needs only torch and numpy.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import non_negative_int, positive_int, real_at_least
from .model import PAPER_TABLE_2, MobileNetV2, StageSpec


def _as_array(name: str, values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    raise TypeError(f"{name} must be a NumPy array or a torch.Tensor, got {type(values).__name__}")


def imagenet_input(images: object, size: int, *, max_value: float = 16.0) -> torch.Tensor:
    """Grayscale images as the normalised ``(N, 3, size, size)`` input of the ImageNet network.

    Each image is scaled from ``[0, max_value]`` to ``[0, 1]`` (scikit-learn's digits have
    pixel values 0-16, the default), resized to ``size`` x ``size`` by bilinear interpolation,
    repeated to three identical channels (a gray pixel is one with R = G = B), and each
    channel normalised with the ImageNet mean and standard deviation that torchvision's
    preprocessing for these weights uses (:func:`mbv2.pretrained.preprocessing`), as the
    network saw its training images (Section 6.1).

    Args:
        images: ``(N, H, W)`` grayscale images, a NumPy array or a tensor, values in
            ``[0, max_value]``.
        size: the side of the output images, at least 1 (at least 32 for the network of
            Table 2, whose five stride-2 layers need it).
        max_value: the pixel value that means white, > 0.
    """
    array = _as_array("images", images)
    if array.ndim != 3 or array.shape[0] == 0 or min(array.shape[1:]) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) stack of grayscale images, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"images must hold real numbers, got dtype {array.dtype}")
    size = positive_int("size", size)
    max_value = real_at_least("max_value", max_value, 0.0, strict=True)
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > max_value:
        raise ValueError(
            f"images must have values in [0, max_value] = [0, {max_value:g}], got values in "
            f"[{array.min():g}, {array.max():g}]"
        )
    from .pretrained import preprocessing

    transform = preprocessing()
    mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(array)[:, None] / max_value
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < max(x.shape[-2:]))
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous()


@torch.no_grad()
def pooled_features(model: MobileNetV2, images: torch.Tensor, *,
                    batch_size: int = 32,
                    progress: bool = False) -> torch.Tensor:
    """The ``(N, 1280)`` output of the global average pooling.

    That is what the classifier receives (Table 2: the 1x1 convolution to
    1280 channels, then "avgpool 7x7"). The network runs in eval mode
    (batch norm with its stored statistics, dropout off), without
    gradients, ``batch_size`` images at a time, and is put back in the
    mode it was in.

    Args:
        model: an :class:`mbv2.MobileNetV2`, for instance
            :func:`mbv2.pretrained.load_pretrained`.
        images: a preprocessed ``(N, 3, H, W)`` float tensor
            (see :func:`imagenet_input`).
        batch_size: images per forward pass, at least 1.
        progress: show a text progress bar on stderr (tqdm).
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, "
                        f"got {type(model).__name__}")
    model.check_input(images)
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (preprocessed), "
                         f"got dtype {images.dtype}")
    batch_size = positive_int("batch_size", batch_size)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    from tqdm import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, disable=not progress, unit="batch",
                          leave=False, mininterval=0.5):
            x = images[start:start + batch_size].to(device)
            x = model.pool(model.head(model.stages(model.stem(x))))
            chunks.append(torch.flatten(x, 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def sample_per_class(labels: object, n: int, seed: int, *,
                     exclude: Iterable[int] | None = None) -> np.ndarray:
    """Indices of ``n`` images of every class, drawn at random but reproducibly.

    For each class (in increasing order) the images not in ``exclude`` are shuffled by a
    generator seeded with ``seed`` and the first ``n`` are kept. The shuffle does not
    depend on ``n``, so for one seed the draws are nested: the 5 images of a class are
    among its 10. The same ``labels``, ``n``, ``seed`` and ``exclude`` always give the
    same indices.

    Args:
        labels: ``(N,)`` integer class labels (NumPy array or tensor).
        n: images per class, at least 1 and at most the number available in every class.
        seed: seeds the draw, an integer >= 0.
        exclude: indices that must not be drawn (a test or validation split), or ``None``.

    Returns the indices as a sorted ``int64`` array of length ``n * number_of_classes``.
    """
    labels = _as_array("labels", labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D array of integer classes, got shape {labels.shape} "
            f"and dtype {labels.dtype}"
        )
    n = positive_int("n", n)
    seed = non_negative_int("seed", seed)
    available = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        excluded = np.asarray(list(exclude) if not isinstance(exclude, (np.ndarray, torch.Tensor))
                              else _as_array("exclude", exclude)).ravel()
        if excluded.size and (not np.issubdtype(excluded.dtype, np.integer)
                              or excluded.min() < 0 or excluded.max() >= len(labels)):
            raise ValueError(
                f"exclude must hold integer indices in [0, {len(labels) - 1}], got "
                f"{excluded.dtype} values in [{excluded.min()}, {excluded.max()}]"
            )
        available[excluded.astype(np.int64)] = False
    generator = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero((labels == label) & available)
        if len(candidates) < n:
            raise ValueError(
                f"n must be at most the number of images available in every class; class "
                f"{label} has {len(candidates)} outside exclude, got n={n}"
            )
        chosen.append(candidates[generator.permutation(len(candidates))[:n]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cheapest_within(candidates: Iterable[object], scores: Iterable[float], tolerance: float) -> object:
    """The first of ``candidates`` whose score is within ``tolerance`` of the best score.

    The rule by which the chapter makes its choices on the validation split: list the
    candidates from the cheapest (or simplest) to the dearest, score each on the
    validation split, and take the cheapest one that is at most ``tolerance`` below the
    best. With ``tolerance=0`` this is the best candidate, the first one on a tie.

    Args:
        candidates: the options, cheapest first.
        scores: one score per candidate (higher is better), finite.
        tolerance: how far below the best score a cheaper candidate may be, >= 0.
    """
    candidates, scores = list(candidates), [float(s) for s in scores]
    if not candidates or len(candidates) != len(scores):
        raise ValueError(
            f"candidates and scores must be non-empty and of the same length, got "
            f"{len(candidates)} and {len(scores)}"
        )
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"scores must be finite, got {scores}")
    tolerance = real_at_least("tolerance", tolerance, 0.0)
    best = max(scores)
    return next(c for c, s in zip(candidates, scores) if s >= best - tolerance)


def _check_features(name: str, features: object, labels: object | None = None):
    x = _as_array(name, features)
    if x.ndim != 2 or len(x) == 0 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a non-empty (N, D) float array, got shape {x.shape} and dtype {x.dtype}")
    if labels is None:
        return x, None
    y = _as_array("labels", labels)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be (N,) integer classes with N = {len(x)} (one per row of {name}), "
            f"got shape {y.shape} and dtype {y.dtype}"
        )
    return x, y


def fit_probe(features: object, labels: object, *, C: float = 1.0, max_iter: int = 2000):
    """The linear probe: a multinomial logistic regression on standardised features.

    Each feature is standardised with the mean and standard deviation of the *training*
    features (scikit-learn's ``StandardScaler``), then a softmax classifier with an L2
    penalty is fitted by L-BFGS (``LogisticRegression``; ``C`` is the inverse of the
    penalty's strength: smaller is stronger). Its parameters are one weight per feature
    and class plus one bias per class, ``1280 * 10 + 10`` for the digits.

    Returns the fitted scikit-learn pipeline: ``probe.predict(features)``,
    ``probe.score(features, labels)`` (accuracy). If L-BFGS does not converge within
    ``max_iter`` iterations, a ``RuntimeError`` says so rather than a warning.

    Args:
        features: ``(N, D)`` float features (NumPy array or tensor), e.g. from
            :func:`pooled_features`.
        labels: ``(N,)`` integer classes, at least two different ones.
        C: inverse regularisation strength, > 0.
        max_iter: the most L-BFGS iterations, at least 1.
    """
    x, y = _check_features("features", features, labels)
    C = real_at_least("C", C, 0.0, strict=True)
    max_iter = positive_int("max_iter", max_iter)
    if len(np.unique(y)) < 2:
        raise ValueError("labels must contain at least two classes")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    # One BLAS thread: the matrices are small, and on a busy machine competing threads
    # make L-BFGS many times slower rather than faster.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            probe.fit(x, y)
        except ConvergenceWarning as warning:
            raise RuntimeError(
                f"the linear probe did not converge in max_iter={max_iter} iterations with "
                f"C={C:g}; raise max_iter or lower C ({warning})"
            ) from None
    return probe


def probe_accuracy(probe: object, features: object, labels: object) -> float:
    """The fraction of ``features`` that the fitted ``probe`` classifies as ``labels``."""
    if not hasattr(probe, "predict"):
        raise TypeError(f"probe must be a fitted classifier (from fit_probe), got {type(probe).__name__}")
    x, y = _check_features("features", features, labels)
    return float(np.mean(probe.predict(x) == y))


def train_from_scratch(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    width_mult: float = 1.0,
    stages: Sequence[StageSpec] = PAPER_TABLE_2,
    progress: bool = True,
):
    """A randomly initialised :class:`mbv2.MobileNetV2` trained on ``(images, labels)``.

    The network has ``labels.max() + 1`` outputs, width ``width_mult`` and the stages
    ``stages`` (Table 2 by default); ``seed`` fixes its initial weights and the order of
    the batches. It is stored channels-last (NHWC), which PyTorch's CPU convolutions run
    faster; the arithmetic is the same. It trains with
    :func:`mbv2.train.fit` (SGD, Nesterov momentum, one-cycle schedule peaking at ``lr``)
    for at least ``steps`` steps of ``batch_size`` images: the number of epochs is
    ``ceil(steps / steps_per_epoch)``, so the steps taken are rounded up to whole epochs.

    Returns ``(model, history)``; ``history.seconds`` is the training time, measured by
    ``fit``. The global torch generator is left as it was.
    """
    from .train import fit

    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("images and labels must be tensors")
    if labels.dim() != 1 or len(labels) == 0 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be a non-empty (N,) int64 tensor, got shape {tuple(labels.shape)} "
                         f"and dtype {labels.dtype}")
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
    if batch_size > len(labels):
        raise ValueError(f"batch_size must be at most the number of images ({len(labels)}), got {batch_size}")
    seed = non_negative_int("seed", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNetV2(num_classes=int(labels.max()) + 1, width_mult=width_mult, stages=stages)
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(labels) // batch_size
    epochs = math.ceil(steps / steps_per_epoch)
    history = fit(model, (images, labels), None, epochs=epochs, batch_size=batch_size, lr=lr,
                  seed=seed, progress=progress)
    return model, history


class Stopwatch:
    """Measures wall-clock seconds with :func:`time.perf_counter`: ``with Stopwatch() as w:``
    ... ``w.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.seconds = 0.0
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
