"""Memory-efficient inference (Sandler et al. 2018, §5.1): a block computed in t slices.

An inverted residual block is F(x) = B(N(A(x))): A, the 1×1 expansion from k to n
channels; N, the per-channel part (batch norm, ReLU6, the 3×3 depthwise convolution, batch
norm, ReLU6); B, the 1×1 projection back to k' channels. Because N treats every channel on
its own, the n inner channels can be cut into t slices of n/t channels:

    F(x) = Σᵢ Bᵢ(N(Aᵢ(x))),   i = 1 … t,

where Aᵢ makes slice i of the expansion (rows i of its weight) and Bᵢ is the matching
block of columns of the projection. Summing as the slices come, only n/t inner channels
are ever alive at once, instead of all n: the block's memory is dominated by its input and
output, the narrow bottlenecks. The multiply-adds are the same for every t.

Here ``t`` is the number of slices, as in §5.1 of the paper, not the expansion ratio
(which the block calls ``expand_ratio``). Batch norm after the projection is applied once,
to the sum: in inference it is an affine map per output channel, so it commutes with the
sum only after it, not slice by slice. The split is for inference: the block must be in
eval mode, so that each batch norm uses its stored statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ._checks import positive_int
from .layers import ConvBNAct, InvertedResidual
from .model import MobileNetV2

__all__ = ["SplitInvertedResidual", "split_forward", "split_model", "valid_pieces"]


def split_forward(block: InvertedResidual, x: torch.Tensor, t: int) -> torch.Tensor:
    """``block(x)`` computed as a sum over ``t`` slices of the expanded tensor.

    ``t`` must divide the block's inner width ``block.hidden_channels`` (t = 1 is the
    ordinary forward pass, t = hidden_channels one inner channel at a time). For a t = 1
    block (no expansion layer) the slices are slices of the input itself.
    """
    _check_block(block)
    n = block.hidden_channels
    t = positive_int("t", t)
    if n % t:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"t must divide the block's inner width {n}, got t={t}; "
            f"possible values: {', '.join(map(str, divisors))}"
        )
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != block.in_channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (N, {block.in_channels}, H, W), got {shape}")
    width = n // t
    expanded = isinstance(block.expansion, ConvBNAct)
    projection = block.projection
    total = None
    for i in range(t):
        piece = slice(i * width, (i + 1) * width)
        inner = _slice_layer(block.expansion, x, piece) if expanded else x[:, piece]
        inner = _slice_layer(block.depthwise, inner, piece)
        part = F.conv2d(inner, projection.conv.weight[:, piece])
        del inner  # only this slice of the inner tensor was ever alive
        total = part if total is None else total.add_(part)
    out = projection.bn(total)
    if hasattr(projection, "act"):
        out = projection.act(out)
    return x + out if block.use_shortcut else out


def _slice_layer(layer: ConvBNAct, x: torch.Tensor, piece: slice) -> torch.Tensor:
    """Output channels ``piece`` of a conv + BN (+ activation) layer: the rows ``piece`` of
    the weight (for a depthwise conv, ``x`` already holds just the channels ``piece``)."""
    conv, bn = layer.conv, layer.bn
    weight = conv.weight[piece]
    groups = weight.shape[0] if conv.groups > 1 else 1
    y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, groups)
    y = F.batch_norm(y, bn.running_mean[piece], bn.running_var[piece], bn.weight[piece],
                     bn.bias[piece], False, 0.0, bn.eps)
    return layer.act(y) if hasattr(layer, "act") else y


def _check_block(block: object) -> None:
    if not isinstance(block, InvertedResidual):
        raise TypeError(f"block must be an mbv2.InvertedResidual, got {type(block).__name__}")
    if block.training:
        raise ValueError(
            "block must be in eval mode: the split is for inference, where batch norm uses "
            "its stored statistics (call block.eval())"
        )
    if block.depthwise.conv.groups != block.hidden_channels:
        raise ValueError("the split needs a depthwise (per-channel) inner convolution")


class SplitInvertedResidual(InvertedResidual):
    """An :class:`~mbv2.InvertedResidual` whose forward pass is :func:`split_forward`
    with ``pieces`` slices. Its parameters and state dict are those of the block."""

    pieces: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_forward(self, x, self.pieces)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pieces={self.pieces}"


def split_model(model: MobileNetV2, t: int) -> MobileNetV2:
    """A copy of ``model`` (in eval mode) whose blocks run split into ``t`` slices.

    Every block with an expansion layer is split; a t = 1 block (no expansion) is left
    whole, since its inner tensor *is* its input, which must be stored anyway. ``t`` must
    divide the inner width of every expanding block (see :func:`valid_pieces`). The copy
    has the same parameters and state dict as ``model``; ``model`` is not changed.
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    t = positive_int("t", t)
    allowed = valid_pieces(model)
    if t not in allowed:
        widths = sorted({b.hidden_channels for b in _expanding_blocks(model)})
        raise ValueError(
            f"t must divide the inner width of every expanding block ({', '.join(map(str, widths))}), "
            f"got t={t}; possible values: {', '.join(map(str, allowed))}"
        )
    split = copy.deepcopy(model).eval()
    for block in _expanding_blocks(split):
        block.__class__ = SplitInvertedResidual
        block.pieces = t
    return split


def valid_pieces(model: MobileNetV2) -> list[int]:
    """The slice counts t that :func:`split_model` accepts for ``model``: the common
    divisors of the inner widths of its expanding blocks."""
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    widths = [block.hidden_channels for block in _expanding_blocks(model)]
    if not widths:
        return [1]
    return [d for d in range(1, min(widths) + 1) if all(w % d == 0 for w in widths)]


def _expanding_blocks(model: MobileNetV2) -> list[InvertedResidual]:
    return [block for block in model.blocks() if isinstance(block.expansion, ConvBNAct)]

