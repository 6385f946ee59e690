"""Activation patterns of the expansion layers and signs of the bottlenecks, measured on a network.

Appendix A of Sandler et al. (2018) proves (Lemma 2) that y = ReLU(B x), with B an m x n
matrix, determines x exactly when y has at least n non-zero entries and the rows of B at
those entries include n linearly independent ones. For an expansion layer of MobileNetV2,
x is the n-channel bottleneck vector at one pixel and m = t n, so *at least n of the m
expanded channels must be positive*: a fraction 1/t, 1/6 for t = 6. That is necessary,
not sufficient (the rows must also have rank n). Figure 7 of the appendix plots, layer by
layer, the minimum, mean and maximum number of positive channels after each expansion
against this threshold, at initialisation and after training.

* :func:`activation_patterns` runs a network once over a batch and records, for every
  inverted residual block with an expansion layer, how many expanded channels are positive
  (and how many sit at ReLU6's cap of 6) at every pixel, and, for every block, which
  entries of the projection output (the linear bottleneck, before the shortcut is added)
  are negative.
* :func:`summarize` reduces the per-pixel counts to Figure 7's statistics.
* :func:`relu_on_projections` puts a ReLU after every projection of an existing network
  (forward hooks, no second model class), and :func:`prediction_shift` measures how far
  that moves its predictions. This probes a trained *linear* network; it is not the
  Figure 6a ablation, which trains a network with non-linear bottlenecks from scratch.

Only torch is needed; the model runs without gradients.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import positive_int
from .layers import InvertedResidual
from .model import MobileNetV2
from .pretrained import top_k_kept
from .tracing import run_with_hooks

#: Where ReLU6 saturates: an expanded channel at this value is at the cap.
RELU6_CAP = 6.0


class LayerPattern(NamedTuple):
    """The sign pattern of one expansion layer (1x1 conv + BN + ReLU6) over a batch."""

    layer: int  #: index of the block among the model's inverted residual blocks ("Layer N")
    name: str  #: the expansion module, e.g. ``"stages.1.0.expansion"``
    in_channels: int  #: n, the width of the bottleneck the layer expands
    channels: int  #: m = t n, the expanded width
    positive: torch.Tensor  #: (N, H, W) int64: how many of the m channels are > 0 at each pixel
    saturated: torch.Tensor  #: (N, H, W) int64: how many are at the ReLU6 cap of 6

    @property
    def threshold(self) -> float:
        """Lemma 2's threshold as a fraction: n / m (1/t)."""
        return self.in_channels / self.channels

    @property
    def fraction(self) -> torch.Tensor:
        """The fraction of the m channels that are positive, at each pixel, (N, H, W) float."""
        return self.positive.double() / self.channels


class BottleneckSigns(NamedTuple):
    """The signs of one block's projection output (the linear bottleneck, before the shortcut)."""

    layer: int  #: index of the block among the model's inverted residual blocks
    name: str  #: the projection module, e.g. ``"stages.1.0.projection"``
    channels: int  #: the bottleneck width
    negative: torch.Tensor  #: (channels,) float64: fraction of each channel's entries that are < 0

    @property
    def negative_fraction(self) -> float:
        """The fraction of all entries (every channel, pixel and image) that are negative."""
        return float(self.negative.mean())


class ActivationPatterns(NamedTuple):
    """What :func:`activation_patterns` records in one forward pass."""

    output: torch.Tensor  #: the model's output (logits for a MobileNetV2)
    expansion: list[LayerPattern]  #: one per block that has an expansion layer (t > 1)
    projection: list[BottleneckSigns]  #: one per block


class PatternSummary(NamedTuple):
    """Figure 7's statistics for one expansion layer, over all pixels of all images."""

    layer: int
    name: str
    in_channels: int  #: n
    channels: int  #: m
    pixels: int  #: how many pixels (of all images) the statistics are over
    threshold: float  #: n / m
    minimum: float  #: smallest fraction of positive channels at any pixel
    mean: float  #: mean fraction over the pixels
    maximum: float  #: largest fraction at any pixel
    std: float  #: standard deviation of the fraction over the pixels
    min_positive: int  #: smallest number of positive channels at any pixel
    below: float  #: fraction of pixels with fewer than n positive channels (below Lemma 2's threshold)
    saturated: float  #: fraction of all channel values that sit at the ReLU6 cap


def inverted_residuals(model: nn.Module) -> list[tuple[str, InvertedResidual]]:
    """The :class:`~mbv2.layers.InvertedResidual` submodules of ``model``, with their names,
    in the order of ``model.named_modules()`` (the order they run in for MobileNetV2)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    blocks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, InvertedResidual)]
    if not blocks:
        raise ValueError(
            f"model must contain at least one mbv2.InvertedResidual block, got a "
            f"{type(model).__name__} with none"
        )
    return blocks


def activation_patterns(
    model: nn.Module, batch: torch.Tensor, *, batch_statistics: bool = False
) -> ActivationPatterns:
    """Run ``model(batch)`` once and record the expansion sign patterns and bottleneck signs.

    Args:
        model: a :class:`~mbv2.MobileNetV2`, or any module that contains
            :class:`~mbv2.layers.InvertedResidual` blocks (a single block, for instance).
        batch: its input, a float tensor (N, C, H, W); for a MobileNetV2, a preprocessed
            (N, 3, H, W) batch of images.
        batch_statistics: ``False`` (the default) runs batch norm with its running
            statistics (eval mode), as a trained network is used. ``True`` normalises with
            the statistics of ``batch`` itself, as batch norm does in training, which is
            what a network at initialisation, step 0 of training, computes; this runs on a
            copy, so the running statistics of ``model`` are not touched.

    For each block with an expansion layer, :class:`LayerPattern` holds the number of
    expanded channels that are positive after the ReLU6 at every pixel (a 1x1 convolution
    has no padding, so every pixel counts). Blocks with t = 1 have no expansion layer
    (``nn.Identity``) and are left out of ``expansion``. For every block,
    :class:`BottleneckSigns` holds the fraction of negative entries of each channel of the
    projection's output, before the shortcut is added. Dropout is off in both modes.
    """
    if not isinstance(batch_statistics, bool):
        raise TypeError(f"batch_statistics must be True or False, got {batch_statistics!r}")
    blocks = inverted_residuals(model)
    _check_batch(model, batch)
    if batch_statistics:
        model = copy.deepcopy(model)
        blocks = inverted_residuals(model)
    expansion: dict[int, LayerPattern] = {}
    projection: dict[int, BottleneckSigns] = {}

    def expansion_hook(layer: int, name: str, block: InvertedResidual):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            expansion[layer] = LayerPattern(
                layer, name, block.in_channels, output.shape[1],
                (output > 0).sum(dim=1), (output >= RELU6_CAP).sum(dim=1),
            )

        return hook

    def projection_hook(layer: int, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            negative = (output < 0).double().mean(dim=(0, 2, 3))
            projection[layer] = BottleneckSigns(layer, name, output.shape[1], negative)

        return hook

    hooks = []
    for layer, (name, block) in enumerate(blocks):
        prefix = f"{name}." if name else ""
        if not isinstance(block.expansion, nn.Identity):
            hooks.append((block.expansion, expansion_hook(layer, prefix + "expansion", block)))
        hooks.append((block.projection, projection_hook(layer, prefix + "projection")))
    output = run_with_hooks(model, batch, hooks, batch_statistics=batch_statistics)
    return ActivationPatterns(
        output,
        [expansion[k] for k in sorted(expansion)],
        [projection[k] for k in sorted(projection)],
    )


def summarize(patterns: list[LayerPattern]) -> list[PatternSummary]:
    """Figure 7's statistics for each layer: the minimum, mean and maximum fraction of
    positive channels over all pixels of all images, and the fraction of pixels below
    Lemma 2's threshold (fewer than n of the m channels positive)."""
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(
            isinstance(p, LayerPattern) for p in patterns):
        raise TypeError("patterns must be a non-empty list of LayerPattern "
                        "(the expansion field of activation_patterns' result)")
    summaries = []
    for p in patterns:
        fraction = p.fraction.flatten()
        summaries.append(PatternSummary(
            layer=p.layer,
            name=p.name,
            in_channels=p.in_channels,
            channels=p.channels,
            pixels=fraction.numel(),
            threshold=p.threshold,
            minimum=float(fraction.min()),
            mean=float(fraction.mean()),
            maximum=float(fraction.max()),
            std=float(fraction.std()) if fraction.numel() > 1 else 0.0,
            min_positive=int(p.positive.min()),
            below=float((p.positive < p.in_channels).double().mean()),
            saturated=float(p.saturated.double().mean() / p.channels),
        ))
    return summaries


@contextmanager
def relu_on_projections(model: nn.Module) -> Iterator[nn.Module]:
    """Within the ``with`` block, every projection of ``model`` is followed by a ReLU.

    Forward hooks on each block's ``projection`` replace its output by ``relu(output)``,
    before the shortcut is added: the block computes x + ReLU(projection) where it has a
    shortcut, ReLU(projection) where it has none. The weights are not changed and the
    hooks are removed on leaving the block, even after an error. Yields ``model``.
    """
    blocks = inverted_residuals(model)
    handles = [block.projection.register_forward_hook(_relu_hook) for _, block in blocks]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _relu_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return F.relu(output)


class PredictionShift(NamedTuple):
    """How the predictions of a network moved, image by image (each field has length N)."""

    top1_agrees: torch.Tensor  #: bool: the top class is the same
    top5_kept: torch.Tensor  #: int64: how many of the original top-5 classes are in the new top-5
    kl: torch.Tensor  #: KL(before || after) in nats
    top1_before: torch.Tensor  #: index of the original top class
    top1_after: torch.Tensor  #: index of the new top class
    p_before: torch.Tensor  #: probability of the original top class, before
    p_after: torch.Tensor  #: probability of the original top class, after


def prediction_shift(before: torch.Tensor, after: torch.Tensor, *, k: int = 5) -> PredictionShift:
    """Compare two (N, classes) tensors of class probabilities for the same N images.

    ``k`` is the size of the top-k sets compared (``top5_kept`` counts the original top-k
    classes still in the new top-k). The KL divergence is that of ``after`` from
    ``before``, sum p log(p / q), with q clamped at the smallest positive float, so that a
    probability that underflowed to 0 gives a large finite value rather than infinity.
    """
    k = positive_int("k", k)
    for name, p in (("before", before), ("after", after)):
        if not isinstance(p, torch.Tensor) or p.dim() != 2 or not p.is_floating_point():
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{name} must be a float (N, classes) tensor of probabilities, got {shape}")
        sums = p.sum(dim=1)
        if (p < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError(f"{name} must hold probabilities: non-negative rows that sum to 1")
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {tuple(before.shape)} "
                         f"and {tuple(after.shape)}")
    if k > before.shape[1]:
        raise ValueError(f"k must be at most the number of classes, {before.shape[1]}, got {k}")
    p, q = before.double(), after.double()
    top_before, top_after = p.topk(k, dim=1).indices, q.topk(k, dim=1).indices
    kept = top_k_kept(p, q, k)
    tiny = torch.finfo(torch.float64).tiny
    kl = (torch.xlogy(p, p) - p * q.clamp_min(tiny).log()).sum(dim=1)
    first = top_before[:, 0]
    return PredictionShift(
        top1_agrees=first == top_after[:, 0],
        top5_kept=kept,
        kl=kl,
        top1_before=first,
        top1_after=top_after[:, 0],
        p_before=p.gather(1, first[:, None])[:, 0],
        p_after=q.gather(1, first[:, None])[:, 0],
    )


def _check_batch(model: nn.Module, batch: object) -> None:
    if isinstance(model, MobileNetV2):
        model.check_input(batch)
    elif not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"batch must be an (N, C, H, W) tensor, got {shape}")
    elif isinstance(model, InvertedResidual) and batch.shape[1] != model.in_channels:
        raise ValueError(f"batch must have the block's {model.in_channels} input channels in "
                         f"dimension 1, got shape {tuple(batch.shape)}")
    if not batch.is_floating_point():
        raise ValueError(f"batch must be a float tensor, got dtype {batch.dtype}")
