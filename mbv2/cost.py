"""Parameter and multiply-add counts from the paper's formulas (Sandler et al. 2018, §3.1 and §3.3).

Convention: a *multiply-add* (MAdd) is one multiplication followed by one addition, the
unit of the paper's tables. A convolution's count is the number of its output values
times the number of weights each output value uses. Batch norm, biases and activations
are not counted: they are a few operations per value, not per weight, and after
training batch norm folds into the convolution before it.

Sizes: ``height`` and ``width`` are the *output* size of the layer for the layer-level
functions, and the *input* size of the block for :func:`inverted_residual_madds`, where
a stride-2 block halves them part way through.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ._checks import conv_channels, one_of, positive_int, real_at_least
from .layers import ConvBNAct, conv_output_size, hidden_channels
from .model import MobileNetV2, _check_resolution


def conv2d_params(
    in_channels: int, out_channels: int, kernel_size: int, groups: int = 1, bias: bool = False
) -> int:
    """Weights of a k x k convolution: d_j * (d_i / groups) * k^2, plus d_j biases if ``bias``."""
    d_i, d_j, k, groups = _conv_args(in_channels, out_channels, kernel_size, groups)
    return d_j * (d_i // groups) * k * k + (d_j if bias else 0)


def conv2d_madds(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    out_height: int,
    out_width: int,
    groups: int = 1,
) -> int:
    """Multiply-adds of a k x k convolution producing an h x w x d_j output.

    h * w * d_i * d_j * k^2 for a standard convolution (§3.1); with ``groups`` each output
    channel sees only d_i / groups input channels, so a depthwise convolution
    (groups = d_i = d_j) costs h * w * d_i * k^2.
    """
    d_i, d_j, k, groups = _conv_args(in_channels, out_channels, kernel_size, groups)
    h = positive_int("out_height", out_height)
    w = positive_int("out_width", out_width)
    return h * w * d_j * (d_i // groups) * k * k


def depthwise_separable_madds(
    in_channels: int, out_channels: int, kernel_size: int, out_height: int, out_width: int
) -> int:
    """Multiply-adds of a k x k depthwise conv followed by a 1 x 1 pointwise conv, with an
    h x w output: h * w * d_i * (k^2 + d_j), the paper's equation (1)."""
    d_i, d_j, k, _ = _conv_args(in_channels, out_channels, kernel_size, 1)
    h = positive_int("out_height", out_height)
    w = positive_int("out_width", out_width)
    return h * w * d_i * (k * k + d_j)


def inverted_residual_madds(
    in_channels: int,
    out_channels: int,
    expand_ratio: float,
    height: int,
    width: int,
    stride: int = 1,
    kernel_size: int = 3,
) -> int:
    """Multiply-adds of one bottleneck block (Table 1) on an h x w x d' input.

    With t d' expanded channels, output d'' channels and output size h' x w'
    (h' = ceil(h / s)):

    * expansion, 1 x 1 at the input resolution: h * w * d' * t d' (absent when t = 1);
    * depthwise, k x k with stride s: h' * w' * t d' * k^2;
    * projection, 1 x 1 at the output resolution: h' * w' * t d' * d''.

    For s = 1 (h' = h) and t > 1 the sum is the paper's h * w * d' * t * (d' + k^2 + d'').
    The expanded width is ``max(1, round(t d'))`` (:func:`~mbv2.layers.hidden_channels`),
    also for t < 1, where the "expansion" reduces the channels (Section 3.4's classic
    bottleneck). The shortcut, wherever it joins (``shortcut`` of
    :class:`~mbv2.layers.InvertedResidual`), is an addition without weights: it adds
    neither parameters nor multiply-adds.
    """
    d_in = positive_int("in_channels", in_channels)
    d_out = positive_int("out_channels", out_channels)
    t = real_at_least("expand_ratio", expand_ratio, 0.0, strict=True)
    h, w = positive_int("height", height), positive_int("width", width)
    stride = one_of("stride", stride, (1, 2))
    k = positive_int("kernel_size", kernel_size)
    hidden = hidden_channels(d_in, t)
    h_out, w_out = conv_output_size(h, stride, k), conv_output_size(w, stride, k)
    expansion = 0 if t == 1 else conv2d_madds(d_in, hidden, 1, h, w)
    depthwise = conv2d_madds(hidden, hidden, k, h_out, w_out, groups=hidden)
    projection = conv2d_madds(hidden, d_out, 1, h_out, w_out)
    return expansion + depthwise + projection


def inverted_residual_params(
    in_channels: int,
    out_channels: int,
    expand_ratio: float,
    kernel_size: int = 3,
    batch_norm: bool = True,
) -> int:
    """Parameters of one bottleneck block: the three convolutions' weights
    d' * t d' + t d' * k^2 + t d' * d'' (no expansion when t = 1), plus, with
    ``batch_norm``, a scale and a shift for every channel each convolution outputs.
    t d' is ``max(1, round(t d'))`` for any t > 0; shortcuts have no parameters."""
    d_in = positive_int("in_channels", in_channels)
    d_out = positive_int("out_channels", out_channels)
    t = real_at_least("expand_ratio", expand_ratio, 0.0, strict=True)
    k = positive_int("kernel_size", kernel_size)
    hidden = hidden_channels(d_in, t)
    weights = conv2d_params(hidden, hidden, k, groups=hidden) + conv2d_params(hidden, d_out, 1)
    bn_channels = hidden + d_out
    if t != 1:
        weights += conv2d_params(d_in, hidden, 1)
        bn_channels += hidden
    return weights + (2 * bn_channels if batch_norm else 0)


def _conv_args(in_channels, out_channels, kernel_size, groups):
    d_i, d_j, groups = conv_channels(in_channels, out_channels, groups)
    return d_i, d_j, positive_int("kernel_size", kernel_size), groups


# --- Whole models (Section 4, Tables 2 and 4) ---------------------------------------
#
# The counts of a MobileNetV2 are the sums of the layer and block formulas above, taken
# over the model's own modules, so they follow any width, stage table or class count.
# Multiply-adds: the convolutions, plus the classifier, whose weights are counted as a
# 1x1 convolution on the 1x1 pooled map (k * 1280 for width <= 1). Not counted: batch
# norm, the classifier's bias, the residual additions, ReLU6 and the average pooling.
# torchinfo counts batch norm's two parameters per channel and the classifier's biases
# as multiply-adds too, so its total is higher by exactly that many: 0.01% for width 1
# at 224, at most 0.13% for widths 0.35 to 1.4 and resolutions 96 to 224.


class CostRow(NamedTuple):
    """One row of :func:`cost_table`: a layer or block of the model and what it costs."""

    name: str  #: the module's name in the model, e.g. ``stages.1.0``
    output_shape: tuple[int, ...]  #: (C, H, W), or (k,) for the classifier
    params: int  #: parameters, batch norm's scale and shift included
    madds: int  #: multiply-adds for one image


def cost_table(model: MobileNetV2, resolution: int = 224) -> list[CostRow]:
    """Parameters and multiply-adds of each part of ``model`` for one image.

    One row for the stem, one per inverted residual block, one each for the
    head, the pooling and the classifier, in the order the input meets them
    (a backbone whose head or classifier was cut away, as the detection and
    segmentation models do, has no rows for them). A dilated model (output
    stride 16 or 8) costs what its strides say: dilation spaces a kernel's
    taps but leaves its weights, and so the multiply-adds per output, unchanged.
    Each row applies the formulas of this module (:func:`conv2d_params`,
    :func:`conv2d_madds`, :func:`inverted_residual_params`,
    :func:`inverted_residual_madds`) to the module's own channel counts,
    kernel size and stride; the spatial size is carried from row to row with
    :func:`conv_output_size`. Batch norm adds 2 parameters per channel (scale
    and shift) and no multiply-adds; the classifier is counted as the 1x1
    convolution on the pooled 1x1 map that it is. ``resolution`` is the side
    of the square input in pixels, at least ``model.min_input_size``.
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(
            f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    size = _check_resolution(model, resolution)
    rows = []

    def conv_bn_row(name: str, layer: ConvBNAct) -> None:
        nonlocal size
        conv = layer.conv
        d_i, d_j, groups = conv.in_channels, conv.out_channels, conv.groups
        k = conv.kernel_size[0]
        size = conv_output_size(size, conv.stride[0], k)
        params = conv2d_params(d_i, d_j, k, groups) + 2 * d_j  # + BN
        madds = conv2d_madds(d_i, d_j, k, size, size, groups)
        rows.append(CostRow(name, (d_j, size, size), params, madds))

    conv_bn_row("stem", model.stem)
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            d_i, d_j = block.in_channels, block.out_channels
            t, stride = block.expand_ratio, block.stride
            madds = inverted_residual_madds(d_i, d_j, t, size, size, stride)
            size = conv_output_size(size, stride)
            params = inverted_residual_params(d_i, d_j, t)
            shape = (d_j, size, size)
            rows.append(CostRow(f"stages.{s}.{b}", shape, params, madds))
    if model.head is None:  # a backbone cut after the last block (Section 6.3's "MNet V2*")
        return rows
    conv_bn_row("head", model.head)
    if model.classifier is None:  # a backbone for detection or segmentation heads
        return rows
    rows.append(CostRow("pool", (model.last_channels, 1, 1), 0, 0))
    linear = model.classifier.linear
    d_i, k = linear.in_features, linear.out_features
    params = conv2d_params(d_i, k, 1, bias=True)
    madds = conv2d_madds(d_i, k, 1, 1, 1)
    rows.append(CostRow("classifier", (k,), params, madds))
    return rows


def count_params(model: MobileNetV2) -> int:
    """All parameters of ``model`` by the formulas (batch norm's scale and shift included,
    its running statistics not): the sum of :func:`cost_table`'s ``params`` column."""
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    return sum(row.params for row in cost_table(model, model.min_input_size))


def count_madds(model: MobileNetV2, resolution: int = 224) -> int:
    """Multiply-adds of ``model`` for one ``resolution`` x ``resolution`` image.

    Convention: the multiply-adds of every convolution (:func:`conv2d_madds`, summed
    block by block with :func:`inverted_residual_madds`) plus one per weight of the
    classifier's linear layer; batch norm, biases, the residual additions, activations
    and pooling are not counted. This is the unit of the paper's Table 4 (300M for width
    1 at 224). torchinfo's ``total_mult_adds`` also counts each batch norm's scale and
    shift and the classifier's biases, and so exceeds this count by exactly their number.
    """
    return sum(row.madds for row in cost_table(model, resolution))


# --- Detection and segmentation heads (Sections 6.2 and 6.3, Tables 5, 6 and 7) -----
#
# The same convention: every convolution's weights times its output values, batch norm
# and biases not counted as multiply-adds (they are counted as parameters). Not counted
# either: the global average pooling of DeepLab's image-level branch and the bilinear
# upsampling (of the pooled feature back to the map, and of the class scores to the
# input size); :func:`bilinear_madds` says what the latter would add.


def chain_rows(name: str, module, size: int) -> tuple[list[CostRow], int]:
    """Rows for a chain of :class:`~mbv2.layers.ConvBNAct` and ``nn.Conv2d`` layers
    (a ``ConvBNAct``, or an ``nn.Sequential`` of them), applied to a square map of side
    ``size``; returns the rows, one per convolution, and the side of the output.

    Parameters: the convolution's weights, its bias if it has one, and batch norm's scale
    and shift. Multiply-adds: :func:`conv2d_madds` at the output size (dilation changes
    where the taps fall, not how many there are).
    """
    size = positive_int("size", size)
    layers = [(name, module)] if isinstance(module, (ConvBNAct, nn.Conv2d)) else [
        (f"{name}.{child}", sub) for child, sub in module.named_children()
    ]
    rows = []
    for layer_name, layer in layers:
        if isinstance(layer, ConvBNAct):
            conv, bn = layer.conv, 2 * layer.conv.out_channels
        elif isinstance(layer, nn.Conv2d):
            conv, bn = layer, 0
        elif isinstance(layer, nn.Sequential):
            sub_rows, size = chain_rows(layer_name, layer, size)
            rows += sub_rows
            continue
        else:
            raise TypeError(f"module must be a chain of ConvBNAct and Conv2d layers, found {type(layer).__name__}")
        k = conv.kernel_size[0]
        if conv.padding[0] != conv.dilation[0] * (k // 2):
            raise ValueError(f"{layer_name} does not pad to keep the size ('same' padding)")
        size = conv_output_size(size, conv.stride[0], k)
        d_i, d_j, groups = conv.in_channels, conv.out_channels, conv.groups
        params = conv2d_params(d_i, d_j, k, groups, bias=conv.bias is not None) + bn
        rows.append(CostRow(layer_name, (d_j, size, size), params, conv2d_madds(d_i, d_j, k, size, size, groups)))
    return rows, size


def ssd_cost_table(model) -> list[CostRow]:
    """Parameters and multiply-adds of an :class:`~mbv2.detection.SSD` at its resolution.

    Rows named ``backbone.*`` (:func:`cost_table` of the backbone: stem, blocks and the
    1x1 conv to 1280), ``extras.i.*``, ``box_predictors.i.*`` and
    ``class_predictors.i.*`` (one row per convolution). Predictor i runs on feature map i
    (side :meth:`~mbv2.detection.SSD.feature_map_sizes`).
    """
    from .detection import SSD

    if not isinstance(model, SSD):
        raise TypeError(f"model must be an mbv2.detection.SSD, got {type(model).__name__}")
    rows = [row._replace(name=f"backbone.{row.name}") for row in cost_table(model.backbone, model.resolution)]
    sizes = model.feature_map_sizes()
    for i, layer in enumerate(model.extras):
        extra_rows, size = chain_rows(f"extras.{i}", layer, sizes[i + 1])
        if size != sizes[i + 2]:  # pragma: no cover - guards the two size rules against drift
            raise RuntimeError(f"extras.{i}: side {size}, expected {sizes[i + 2]}")
        rows += extra_rows
    for kind in ("box_predictors", "class_predictors"):
        for i, (predictor, size) in enumerate(zip(getattr(model, kind), sizes)):
            rows += chain_rows(f"{kind}.{i}", predictor, size)[0]
    return rows


def deeplab_cost_table(model, resolution: int = 512, *, space_to_batch: bool = False) -> list[CostRow]:
    """Parameters and multiply-adds of a :class:`~mbv2.segmentation.DeepLabV3` on one
    ``resolution`` x ``resolution`` image (PASCAL VOC: 512, or 513 as DeepLab crops it).

    Rows ``backbone.*`` (:func:`cost_table` of the dilated backbone), then the head:
    ``image_pooling.conv`` (a 1x1 conv on the pooled 1x1 map), ``branch_1x1``,
    ``aspp.i.*``, ``projection`` and ``classifier`` (bias counted as parameters only).
    The pooling and both bilinear upsamplings are not counted (:func:`bilinear_madds`).

    ``space_to_batch`` (keyword only): count every atrous convolution the way TensorFlow
    1 computes it, on a map padded to a multiple of the rate (:func:`space_to_batch_side`)
    and cropped afterwards, rather than only at the output positions that are kept.
    """
    from .segmentation import DeepLabV3

    if not isinstance(model, DeepLabV3):
        raise TypeError(f"model must be an mbv2.segmentation.DeepLabV3, got {type(model).__name__}")
    resolution = positive_int("resolution", resolution)
    if resolution < model.output_stride:
        raise ValueError(f"resolution must be at least {model.output_stride} pixels, got {resolution}")
    if not isinstance(space_to_batch, bool):
        raise TypeError(f"space_to_batch must be True or False, got {space_to_batch!r}")
    backbone = cost_table(model.backbone, resolution)
    if space_to_batch:
        for i, row in enumerate(backbone):
            block = model.backbone.get_submodule(row.name)
            if getattr(block, "dilation", 1) > 1:
                side, k = row.output_shape[-1], block.depthwise.conv.kernel_size[0]
                wasted = space_to_batch_side(side, block.dilation) ** 2 - side * side
                backbone[i] = row._replace(madds=row.madds + block.hidden_channels * k * k * wasted)
    rows = [row._replace(name=f"backbone.{row.name}") for row in backbone]
    size = backbone[-1].output_shape[-1]
    rows += chain_rows("image_pooling.conv", model.image_pooling.conv, 1)[0]
    rows += chain_rows("branch_1x1", model.branch_1x1, size)[0]
    for i, branch in enumerate(model.aspp):
        aspp_rows = chain_rows(f"aspp.{i}", branch, size)[0]
        if space_to_batch:
            rate = model.atrous_rates[i]
            aspp_rows[0] = aspp_rows[0]._replace(
                madds=aspp_rows[0].madds // (size * size) * space_to_batch_side(size, rate) ** 2)
        rows += aspp_rows
    rows += chain_rows("projection", model.projection, size)[0]
    rows += chain_rows("classifier", model.classifier, size)[0]
    return rows


def space_to_batch_side(side: int, rate: int) -> int:
    """The side TensorFlow 1 computes a 'same' atrous convolution at, ceil(side / rate) * rate.

    ``tf.nn.convolution`` with a rate r > 1 pads the map to a multiple of r
    (``required_space_to_batch_paddings``), splits it into r x r interleaved sub-maps
    (``space_to_batch_nd``), runs an ordinary convolution on each and crops the result
    back. The convolution thus produces (ceil(n / r) r)^2 output positions for a side-n
    map, at least n^2: for n = 33 and r = 6, 36^2 = 1,296 instead of 1,089.
    """
    side = positive_int("side", side)
    rate = positive_int("rate", rate)
    return -(-side // rate) * rate


def bilinear_madds(channels: int, out_height: int, out_width: int) -> int:
    """Multiply-adds of bilinear upsampling to ``out_height`` x ``out_width`` x ``channels``,
    counted as 4 per output value (each is a weighted sum of 4 input values). Not part of
    :func:`deeplab_cost_table`; the book quotes it beside it."""
    c = positive_int("channels", channels)
    return 4 * c * positive_int("out_height", out_height) * positive_int("out_width", out_width)


def group_totals(rows: list[CostRow], depth: int = 1) -> dict[str, tuple[int, int]]:
    """(params, madds) summed over rows whose names share the first ``depth`` dotted parts
    (``depth=1``: ``backbone``, ``extras``, ``box_predictors`` ...), in order of appearance."""
    depth = positive_int("depth", depth)
    totals: dict[str, tuple[int, int]] = {}
    for row in rows:
        key = ".".join(row.name.split(".")[:depth])
        params, madds = totals.get(key, (0, 0))
        totals[key] = (params + row.params, madds + row.madds)
    return totals
