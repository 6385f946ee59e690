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
sum only after it, not slice by slice (likewise the bias of a projection whose batch norm
was folded into it, :func:`mbv2.deploy.fold_batch_norm`). The split is for inference: the
block must be in eval mode, so that each batch norm uses its stored statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from typing import NamedTuple

from ._checks import one_of, positive_int
from .layers import ConvBNAct, InvertedResidual, conv_output_size
from .model import MobileNetV2

__all__ = [
    "Operation", "SplitInvertedResidual", "Table3Row", "operations", "peak_values",
    "split_forward", "split_model", "table_3", "valid_pieces",
]


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
    if projection.conv.bias is not None:  # a folded projection: its bias is added once
        total.add_(projection.conv.bias.reshape(1, -1, 1, 1))
    out = projection.bn(total)
    if hasattr(projection, "act"):
        out = projection.act(out)
    return x + out if block.use_shortcut else out


def _slice_layer(layer: ConvBNAct, x: torch.Tensor, piece: slice) -> torch.Tensor:
    """Output channels ``piece`` of a conv + BN (+ activation) layer: the rows ``piece`` of
    the weight (for a depthwise conv, ``x`` already holds just the channels ``piece``)."""
    conv, bn = layer.conv, layer.bn
    weight = conv.weight[piece]
    bias = None if conv.bias is None else conv.bias[piece]
    groups = weight.shape[0] if conv.groups > 1 else 1
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
    if isinstance(bn, nn.BatchNorm2d):  # absent once folded (mbv2.deploy.fold_batch_norm)
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



# --- The memory model of §5.1 (eq. 2) -------------------------------------------------
#
# With only trivial parallelism (a chain of operations, shortcuts included), the peak
# memory of inference is the largest, over the operations, of what one operation needs at
# once: its inputs, its outputs, its scratch memory and whatever must survive it (the
# input of a block whose shortcut has not been added yet). Counted in values; multiply by
# the bytes per value (2 for the 16-bit activations of Table 3, 4 for float32).


class Operation(NamedTuple):
    """One operation of the memory model: how many values it needs alive at once."""

    name: str
    inputs: int  #: values it reads
    outputs: int  #: values it writes
    scratch: int = 0  #: values it needs in between (a block's inner tensors)
    kept: int = 0  #: values that must outlive it (a pending shortcut's input)

    @property
    def total(self) -> int:
        return self.inputs + self.outputs + self.scratch + self.kept


def operations(model: nn.Module, resolution: int = 224, *, pieces: int = 1,
               granularity: str = "block") -> list[Operation]:
    """The operations of ``model`` on one ``resolution``² image, for the memory model.

    ``granularity="block"`` treats every inverted residual block (and every MobileNetV1
    unit) as one operation whose inner tensors are scratch: with ``pieces`` = t slices
    (see :func:`split_model`), an expanding block holds n/t inner channels at a time.
    ``granularity="layer"`` makes every convolution its own operation (and the shortcut's
    addition another), so the expanded tensors are inputs and outputs in full.
    """
    from .mobilenet_v1 import MobileNetV1

    one_of("granularity", granularity, ("block", "layer"))
    pieces = positive_int("pieces", pieces)
    resolution = positive_int("resolution", resolution)
    if isinstance(model, MobileNetV2):
        if pieces not in valid_pieces(model):
            raise ValueError(f"pieces must be one of {valid_pieces(model)} for this model, got {pieces}")
        return _v2_operations(model, resolution, pieces, granularity)
    if isinstance(model, MobileNetV1):
        return _v1_operations(model, resolution, granularity)
    raise TypeError(f"model must be an mbv2.MobileNetV2 or MobileNetV1, got {type(model).__name__}")


def peak_values(model: nn.Module, resolution: int = 224, **options) -> Operation:
    """The operation with the largest :attr:`Operation.total` (see :func:`operations`)."""
    return max(operations(model, resolution, **options), key=lambda op: op.total)


def _conv(name: str, layer: ConvBNAct, channels: int, side: int, kept: int = 0):
    out_side = conv_output_size(side, layer.conv.stride[0])
    op = Operation(name, channels * side**2, layer.conv.out_channels * out_side**2, kept=kept)
    return op, layer.conv.out_channels, out_side


def _v2_operations(model, side, pieces, granularity):
    ops = []
    op, c, side = _conv("stem", model.stem, 3, side)
    ops.append(op)
    for name, block in _named_blocks(model):
        k, n, k2 = block.in_channels, block.hidden_channels, block.out_channels
        expanded = isinstance(block.expansion, ConvBNAct)
        s2 = conv_output_size(side, block.stride)
        if granularity == "block":
            p = pieces if expanded else 1
            scratch = (n // p) * ((side**2 if expanded else 0) + s2**2)
            ops.append(Operation(name, k * side**2, k2 * s2**2, scratch))
        else:
            kept = k * side**2 if block.use_shortcut else 0
            if expanded:
                ops.append(Operation(f"{name}.expansion", k * side**2, n * side**2))
            ops.append(Operation(f"{name}.depthwise", n * side**2, n * s2**2,
                                 kept=kept if expanded else 0))
            ops.append(Operation(f"{name}.projection", n * s2**2, k2 * s2**2, kept=kept))
            if block.use_shortcut:
                ops.append(Operation(f"{name}.add", k * side**2 + k2 * s2**2, k2 * s2**2))
        side = s2
    op, c, side = _conv("head", model.head, k2, side)
    ops += [op, Operation("pool", c * side**2, c), Operation("classifier", c, model.num_classes)]
    return ops


def _v1_operations(model, side, granularity):
    ops = []
    op, c, side = _conv("stem", model.stem, 3, side)
    ops.append(op)
    for i, unit in enumerate(model.units):
        dw, dw_c, dw_side = _conv(f"units.{i}.depthwise", unit.depthwise, c, side)
        pw, c, side = _conv(f"units.{i}.pointwise", unit.pointwise, dw_c, dw_side)
        if granularity == "block":  # the depthwise output is the unit's scratch
            ops.append(Operation(f"units.{i}", dw.inputs, pw.outputs, dw.outputs))
        else:
            ops += [dw, pw]
    ops += [Operation("pool", c * side**2, c), Operation("classifier", c, model.num_classes)]
    return ops


def _named_blocks(model: MobileNetV2):
    return [(f"stages.{s}.{b}", block) for s, stage in enumerate(model.stages)
            for b, block in enumerate(stage)]


class Table3Row(NamedTuple):
    """One row of the paper's Table 3 for one model: at a spatial side, the most channels
    of any tensor that must be materialised, and that tensor's number of values."""

    side: int
    channels: int
    values: int


def table_3(model: nn.Module, resolution: int = 224, *, first_layer_trick: bool = False) -> list[Table3Row]:
    """Table 3 of the paper, computed: for each spatial side below the input's, the largest
    tensor that exists *between* operations (block granularity, so not a block's inner
    tensors). With ``first_layer_trick`` the first convolution's output is not counted:
    §5's trick computes it slice by slice inside the first block (the paper's caption
    allows this for MobileNetV2)."""
    ops = operations(model, resolution)
    tensors = []  # (channels, side) of every operation's output, from the model's layers
    for op, (channels, side) in zip(ops, _output_shapes(model, resolution)):
        if op.name == "stem" and first_layer_trick:
            continue
        tensors.append((channels, side))
    rows = {}
    for channels, side in tensors:
        if side not in rows or channels > rows[side]:
            rows[side] = channels
    return [Table3Row(side, c, c * side**2) for side, c in sorted(rows.items(), reverse=True)]


def _output_shapes(model, resolution):
    """(channels, side) of each operation's output at block granularity, classifier excluded
    (its output is the logits, not an activation map)."""
    from .mobilenet_v1 import MobileNetV1

    side = conv_output_size(resolution, 2)
    if isinstance(model, MobileNetV2):
        shapes = [(model.stem.conv.out_channels, side)]
        for _, block in _named_blocks(model):
            side = conv_output_size(side, block.stride)
            shapes.append((block.out_channels, side))
        shapes += [(model.last_channels, side), (model.last_channels, 1)]
    else:
        assert isinstance(model, MobileNetV1)
        shapes = [(model.stem.conv.out_channels, side)]
        for unit in model.units:
            side = conv_output_size(side, unit.depthwise.conv.stride[0])
            shapes.append((unit.pointwise.conv.out_channels, side))
        shapes.append((shapes[-1][0], 1))
    return shapes
