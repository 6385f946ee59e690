"""Mobile DeepLabv3: DeepLabv3 heads on MobileNetV2 (Sandler et al. 2018, Section 6.3, Table 7).

The head follows the reference code (DeepLab, ``research/deeplab/model.py``,
``extract_features``), with depth 256 and batch norm + ReLU after each convolution:

* ``image_pooling``: average over the whole feature map, a 1x1 conv to 256 channels,
  then bilinear upsampling back to the map's size (the image-level feature);
* ``branch_1x1``: a 1x1 conv to 256 channels;
* with ``aspp``: three 3x3 atrous convs to 256 channels at rates (6, 12, 18) for output
  stride 16 and (12, 24, 36) for output stride 8, regular or depthwise separable;
* the branches concatenated, ``projection``: a 1x1 conv to 256 channels, dropout 0.1;
* ``classifier``: a 1x1 conv with bias to the class scores, upsampled bilinearly to the
  input size.

The paper's "MNet V2*" puts the head on the second-to-last map, the 320-channel output
of ``layer_18``, and does not build the 1x1 conv to 1280 channels (the reference
feature extractor stops there too); ``features="layer_19"`` puts it on the 1280-channel map.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from ._checks import image_batch, one_of, positive_int, real_at_least
from .detection import load_backbone
from .layers import ConvBNAct
from .model import MobileNetV2

#: The channels of every head branch and of the projection (reference ``depth``).
HEAD_DEPTH = 256
#: ASPP atrous rates for each output stride (DeepLabv3: 6, 12, 18 at output stride 16,
#: doubled at output stride 8).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
#: The backbone maps a head can sit on.
FEATURES = ("layer_18", "layer_19")
#: Dropout before the classifier (reference: keep probability 0.9).
DROPOUT = 0.1


class ImagePooling(nn.Module):
    """The image-level branch: global average pooling, ``conv`` (1x1 + BN + ReLU), and
    bilinear upsampling to the size of the map it came from."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 1, activation=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=False)


def aspp_branch(in_channels: int, out_channels: int, rate: int, separable: bool) -> nn.Module:
    """One ASPP branch: a 3x3 conv with atrous rate ``rate`` (``conv``), or its depthwise
    separable version (``depthwise`` at that rate, then ``pointwise``), each with BN + ReLU."""
    rate = positive_int("rate", rate)
    if not separable:
        return ConvBNAct(in_channels, out_channels, 3, dilation=rate, activation=nn.ReLU)
    return nn.Sequential(OrderedDict(
        depthwise=ConvBNAct(in_channels, in_channels, 3, groups=in_channels, dilation=rate, activation=nn.ReLU),
        pointwise=ConvBNAct(in_channels, out_channels, 1, activation=nn.ReLU),
    ))


class DeepLabV3(nn.Module):
    """Mobile DeepLabv3 (Section 6.3): a dilated MobileNetV2 and a DeepLabv3 head.

    Attributes: ``backbone`` (:class:`~mbv2.model.MobileNetV2` at ``output_stride``, without
    pooling and classifier, and without the 1x1 head for ``features="layer_18"``),
    ``image_pooling``, ``branch_1x1``, ``aspp`` (a ``ModuleList`` of three branches, empty
    without ASPP), ``projection``, ``dropout``, ``classifier``.

    ``forward(x)`` takes ``(N, 3, H, W)`` with H, W at least ``output_stride`` and returns
    ``(N, num_classes, H, W)`` class scores (logits).
    """

    def __init__(
        self,
        num_classes: int = 21,
        aspp: bool = False,
        output_stride: int = 16,
        *,
        separable_aspp: bool = False,
        features: str = "layer_18",
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = positive_int("num_classes", num_classes)
        for name, value in (("aspp", aspp), ("separable_aspp", separable_aspp)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.output_stride = one_of("output_stride", output_stride, tuple(ASPP_RATES))
        self.features = one_of("features", features, FEATURES)
        width_mult = real_at_least("width_mult", width_mult, 0.0, strict=True)
        self.backbone = MobileNetV2(width_mult=width_mult, output_stride=output_stride)
        self.backbone.pool = None
        self.backbone.classifier = None
        if features == "layer_18":
            in_channels = self.backbone.stages[-1][-1].out_channels
            self.backbone.head = None
        else:
            in_channels = self.backbone.last_channels
        self.atrous_rates = ASPP_RATES[output_stride] if aspp else ()
        self.image_pooling = ImagePooling(in_channels, HEAD_DEPTH)
        self.branch_1x1 = ConvBNAct(in_channels, HEAD_DEPTH, 1, activation=nn.ReLU)
        self.aspp = nn.ModuleList(
            aspp_branch(in_channels, HEAD_DEPTH, rate, separable_aspp) for rate in self.atrous_rates
        )
        branches = 2 + len(self.aspp)
        self.projection = ConvBNAct(branches * HEAD_DEPTH, HEAD_DEPTH, 1, activation=nn.ReLU)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Conv2d(HEAD_DEPTH, num_classes, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone map the head sits on: ``(N, C, ceil(H / os), ceil(W / os))``."""
        image_batch(x, self.output_stride)
        return self.backbone.extract(x, [self.features])[self.features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(x)
        branches = [self.image_pooling(fmap), self.branch_1x1(fmap)]
        branches += [branch(fmap) for branch in self.aspp]
        logits = self.classifier(self.dropout(self.projection(torch.cat(branches, 1))))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def build_deeplabv3(
    num_classes: int = 21,
    aspp: bool = False,
    output_stride: int = 16,
    *,
    separable_aspp: bool = False,
    features: str = "layer_18",
    width_mult: float = 1.0,
    backbone_state_dict: dict | None = None,
) -> DeepLabV3:
    """Mobile DeepLabv3 of Table 7.

    Args:
        num_classes: 21 for PASCAL VOC (20 classes and the background).
        aspp: add the three 3x3 atrous branches (Table 7's "ASPP" column).
        output_stride: 16 or 8, the backbone's output stride (Table 7's "OS").
        separable_aspp: keyword only; depthwise separable ASPP branches instead of regular
            3x3 convolutions (the reference code's ``aspp_with_separable_conv``).
        features: ``"layer_18"`` (the 320-channel map, the paper's "MNet V2*") or
            ``"layer_19"`` (the 1280-channel map).
        width_mult: the backbone's width multiplier.
        backbone_state_dict: keyword only; a ``MobileNetV2.state_dict()`` of the same width
            (e.g. the ImageNet weights of ``mbv2.load_pretrained()``): the dilated backbone
            has the same parameters, so it takes them unchanged.
    """
    model = DeepLabV3(
        num_classes, aspp, output_stride, separable_aspp=separable_aspp,
        features=features, width_mult=width_mult,
    )
    if backbone_state_dict is not None:
        load_backbone(model.backbone, backbone_state_dict)
    return model
