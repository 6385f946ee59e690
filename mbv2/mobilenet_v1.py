"""MobileNetV1 (Howard et al. 2017, Table 1), the network MobileNetV2 improves on.

A 3x3 convolution with stride 2 to 32 channels, then 13 depthwise separable units
(:class:`~mbv2.layers.DepthwiseSeparableConv`), global average pooling and a linear
classifier. Every convolution is followed by batch norm and ReLU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ._checks import image_batch, positive_int
from .layers import ConvBNAct, DepthwiseSeparableConv


class UnitSpec(NamedTuple):
    """One depthwise separable unit of MobileNetV1: output channels and depthwise stride."""

    c: int
    s: int


#: The depthwise separable units of MobileNetV1's Table 1, top to bottom (input 224x224x3).
#: The paper's table prints stride 2 for the second-to-last depthwise layer, whose input
#: is already 7x7; the text and the reference implementation use stride 1 there, and so
#: does this table.
MOBILENET_V1_TABLE: tuple[UnitSpec, ...] = (
    UnitSpec(64, 1),
    UnitSpec(128, 2),
    UnitSpec(128, 1),
    UnitSpec(256, 2),
    UnitSpec(256, 1),
    UnitSpec(512, 2),
    *[UnitSpec(512, 1)] * 5,
    UnitSpec(1024, 2),
    UnitSpec(1024, 1),
)
V1_STEM_CHANNELS = 32


class MobileNetV1(nn.Module):
    """MobileNetV1 at width 1.0: ``stem``, ``units`` (13 depthwise separable units),
    ``pool`` and ``classifier``.

    Args:
        num_classes: number of output classes.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = positive_int("num_classes", num_classes)
        self.stem = ConvBNAct(3, V1_STEM_CHANNELS, kernel_size=3, stride=2, activation=nn.ReLU)
        units, channels = [], V1_STEM_CHANNELS
        for spec in MOBILENET_V1_TABLE:
            units.append(
                DepthwiseSeparableConv(channels, spec.c, stride=spec.s, activation=nn.ReLU)
            )
            channels = spec.c
        self.units = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.min_input_size = 2 * math.prod(spec.s for spec in MOBILENET_V1_TABLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image_batch(x, self.min_input_size)
        x = self.pool(self.units(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))
