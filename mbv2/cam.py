"""Class activation maps: where in the image the evidence for a class sits.

Zhou et al. 2016 ("Learning Deep Features for Discriminative Localization") observed that
a network that ends in global average pooling and one linear layer, as MobileNetV2 does
(Sandler et al. 2018, Table 2: the 1x1 convolution to 1280 channels, ``avgpool 7x7`` and
the classifier), computes each class score as a spatial mean. With ``f(x, y)`` the
1280-channel output of the head at position ``(x, y)`` of its ``h x w`` map, ``w_k`` the
classifier's row for class ``k`` and ``b_k`` its bias,

    logit_k = w_k . (1/(h w) sum_{x,y} f(x, y)) + b_k = 1/(h w) sum_{x,y} w_k . f(x, y) + b_k.

The map ``M_k(x, y) = w_k . f(x, y)`` is the *class activation map*: its mean plus the
bias *is* the logit, so for this architecture the map is an exact decomposition of the
score over the 7 x 7 positions (at 224 x 224), not an approximation. Dropout sits
between the pooling and the classifier, which is why the model must be in eval mode.

:func:`receptive_field` gives the side of the input region that one position of the map
depends on, which is what limits how finely the map can localise.
"""

from __future__ import annotations

from numbers import Integral
from typing import Sequence

import torch
from torch import nn

from ._checks import positive_int
from .model import MobileNetV2
from .tracing import capture


def class_activation_map(
    model: MobileNetV2, batch: torch.Tensor, class_index: int | Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """The class activation maps ``w_k . f(x, y)`` of a batch, shape ``(N, h, w)``.

    Args:
        model: an :class:`mbv2.MobileNetV2`; it runs in eval mode (dropout off, batch
            norm with its running statistics) without gradients and is put back in the
            mode it was in.
        batch: a preprocessed ``(N, 3, H, W)`` float tensor; the maps are ``h x w`` with
            ``h = ceil(H / 32)``, 7 x 7 for 224 x 224 inputs.
        class_index: the class k whose map is wanted, one integer for the whole batch
            or one per image (a sequence or a 1-D integer tensor of length N), each in
            ``[0, model.num_classes)``.

    The bias is not in the map: ``maps.mean((1, 2)) + model.classifier.linear.bias[k]``
    is the logit of class k (Zhou et al. 2016, Section 2).
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor (N, 3, H, W), got {type(batch).__name__}")
    if not batch.is_floating_point():
        raise ValueError(f"batch must be a float tensor (preprocessed), got dtype {batch.dtype}")
    model.check_input(batch)  # (N, 3, H, W) with H, W large enough, else a clear error
    indices = _class_indices(class_index, batch.shape[0], model.num_classes)

    _, outputs = capture(model, batch, ["head"])
    features = outputs["head"]  # (N, C, h, w), after the head's ReLU6
    weights = model.classifier.linear.weight.detach()[indices]  # (N, C)
    return torch.einsum("nchw,nc->nhw", features, weights.to(features.dtype))


def upsample_map(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample ``(N, h, w)`` maps to ``(N, *size)``, to lay them over the crop.

    ``size`` is one side (square) or ``(height, width)``, usually the crop the maps were
    computed from, 224. The upsampling interpolates between the centres of the cells
    (``align_corners=False``), so each cell's value sits over the block of pixels that
    the cell stands for.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be an (N, h, w) tensor, got {shape}")
    if not maps.is_floating_point():
        raise ValueError(f"maps must be a float tensor, got dtype {maps.dtype}")
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"size must be an integer or (height, width), got {size!r}")
        size = (positive_int("size[0]", size[0]), positive_int("size[1]", size[1]))
    else:
        side = positive_int("size", size)
        size = (side, side)
    return nn.functional.interpolate(
        maps[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0]


def receptive_field(model: MobileNetV2) -> int:
    """The side, in input pixels, of the region that one position of the head's map sees.

    Every layer with a k x k kernel and stride s widens the region by ``(k - 1)`` times
    the product of the strides before it; 1x1 layers add nothing (the standard count,
    as in the receptive-field arithmetic of convolutional networks). Padding is ignored:
    near the border part of the region lies outside the image. For Table 2 the region
    is 491 pixels wide, more than a whole 224 x 224 crop.
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    size, jump = 1, 1
    for part in (model.stem, model.stages, model.head):  # in the order they run
        for conv in (m for m in part.modules() if isinstance(m, nn.Conv2d)):
            size += (conv.kernel_size[0] - 1) * jump
            jump *= conv.stride[0]
    return size


def _class_indices(class_index: object, n: int, num_classes: int) -> torch.Tensor:
    """``class_index`` as a length-``n`` long tensor, each in ``[0, num_classes)``."""
    allowed = f"an integer in [0, {num_classes - 1}] or one such integer per image ({n})"
    if isinstance(class_index, torch.Tensor):
        if class_index.is_floating_point() or class_index.dtype == torch.bool:
            raise ValueError(f"class_index must be {allowed}, got a {class_index.dtype} tensor")
        values = class_index.reshape(-1).tolist() if class_index.dim() <= 1 else None
        if values is None:
            raise ValueError(f"class_index must be {allowed}, got shape {tuple(class_index.shape)}")
        if class_index.dim() == 0:
            values = values * n
    elif isinstance(class_index, Integral) and not isinstance(class_index, bool):
        values = [int(class_index)] * n
    elif isinstance(class_index, Sequence) and not isinstance(class_index, (str, bytes)):
        values = list(class_index)
        if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
            raise ValueError(f"class_index must be {allowed}, got {class_index!r}")
    else:
        raise ValueError(f"class_index must be {allowed}, got {class_index!r}")
    if len(values) != n:
        raise ValueError(f"class_index must be {allowed}, got {len(values)} indices for {n} images")
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"class_index must be {allowed}, got {bad[0]!r}")
    return torch.tensor([int(v) for v in values], dtype=torch.long)
