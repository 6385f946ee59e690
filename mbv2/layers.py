"""The building blocks of MobileNetV1 and MobileNetV2.

* :class:`ConvBNAct`: a convolution without bias, batch norm, and an optional activation.
  Every convolution of both networks is one of these.
* :class:`DepthwiseSeparableConv`: the MobileNetV1 unit (Howard et al. 2017, Fig. 3):
  a 3x3 depthwise convolution followed by a 1x1 pointwise convolution.
* :class:`InvertedResidual`: the MobileNetV2 bottleneck residual block
  (Sandler et al. 2018, Section 3.3 and Table 1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from ._checks import conv_channels, one_of, positive_int, real_at_least

Activation = Optional[Callable[[], nn.Module]]


def conv_output_size(size: int, stride: int, kernel_size: int = 3) -> int:
    """Output side of a k x k convolution with :class:`ConvBNAct`'s padding (k // 2):
    ceil(size / stride) for odd k."""
    size = positive_int("size", size)
    stride = positive_int("stride", stride)
    kernel_size = positive_int("kernel_size", kernel_size)
    return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) -> batch norm -> activation, with 'same' padding.

    The convolution has no bias because the batch norm that follows subtracts the
    per-channel mean, which would cancel any bias, and then adds its own shift.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: side of the square kernel (odd, so that padding keeps the size).
        stride: spatial stride.
        groups: 1 for a standard convolution, ``in_channels`` for a depthwise one.
        dilation: keyword only; the spacing between the kernel's taps (1, the default, is
            an ordinary convolution; r > 1 an *atrous* one that sees a (k-1)r+1 window with
            the same k x k weights, used for a smaller output stride, Section 6.3). The
            padding is ``dilation * (kernel_size // 2)``, so a stride-1 layer keeps the size.
        activation: keyword only; a callable that builds the activation module (a class
            such as ``nn.ReLU6``), or ``None`` for a linear layer. The default,
            ``nn.ReLU6``, is MobileNetV2's activation; the layers of this package name
            theirs at every call (MobileNetV2 ``nn.ReLU6`` or ``None``, MobileNetV1
            ``nn.ReLU``), so that the code shows which activation each layer has.

    The submodules are named ``conv``, ``bn`` and, when there is an activation, ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        *,
        dilation: int = 1,
        activation: Activation = nn.ReLU6,
    ) -> None:
        in_channels, out_channels, groups = conv_channels(in_channels, out_channels, groups)
        kernel_size = positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        stride = positive_int("stride", stride)
        dilation = positive_int("dilation", dilation)
        layers = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
        )
        if activation is not None:
            layers["act"] = activation()
        super().__init__(layers)


class DepthwiseSeparableConv(nn.Sequential):
    """The MobileNetV1 unit: 3x3 depthwise conv -> BN -> act, then 1x1 pointwise conv -> BN -> act.

    The depthwise convolution filters each input channel on its own (``groups`` equal to
    the number of channels); the pointwise convolution mixes the channels. Together they
    replace a standard 3x3 convolution (Howard et al. 2017, Section 3.1; Sandler et al.
    2018, Section 3.1).

    Args:
        in_channels: channels of the input (and of the depthwise convolution).
        out_channels: channels after the pointwise convolution.
        stride: stride of the depthwise convolution, 1 or 2.
        activation: builds the activation after each convolution; MobileNetV1 uses ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: Activation = nn.ReLU,
    ) -> None:
        in_channels = positive_int("in_channels", in_channels)
        stride = one_of("stride", stride, (1, 2))
        super().__init__(
            OrderedDict(
                depthwise=ConvBNAct(
                    in_channels, in_channels, kernel_size=3, stride=stride,
                    groups=in_channels, activation=activation,
                ),
                pointwise=ConvBNAct(
                    in_channels, out_channels, kernel_size=1, activation=activation
                ),
            )
        )


class InvertedResidual(nn.Module):
    """The bottleneck residual block of MobileNetV2 (Sandler et al. 2018, Table 1).

    ``expansion``: 1x1 conv + ReLU6 from k to t*k channels (absent when t = 1);
    ``depthwise``: 3x3 depthwise conv with stride s + ReLU6;
    ``projection``: 1x1 conv from t*k to k' channels, linear (the *linear bottleneck*).
    Each convolution is followed by batch norm. The input is added to the output (the
    shortcut) exactly when the stride is 1 and k = k'.

    Args:
        in_channels: k, channels of the input.
        out_channels: k', channels of the output.
        stride: s, stride of the depthwise convolution, 1 or 2.
        expand_ratio: t, the expansion factor (>= 1).
        projection_activation: builds an activation to put after the projection, for the
            ablation of Section 6.4 / Figure 6a (e.g. ``nn.ReLU6``); ``None`` (the default)
            keeps the bottleneck linear as in the paper.
        dilation: keyword only; the atrous rate of the depthwise convolution (1, the
            default, is the ordinary block). The 1x1 convolutions have no spatial extent,
            so a rate means nothing for them; this is also where the reference code
            applies it (``expanded_conv`` passes ``rate`` to the depthwise layer only).
            :class:`~mbv2.model.MobileNetV2` sets it for a smaller output stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        *,
        projection_activation: Activation = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.stride = one_of("stride", stride, (1, 2))
        self.dilation = positive_int("dilation", dilation)
        self.expand_ratio = real_at_least("expand_ratio", expand_ratio, 1.0)
        self.hidden_channels = round(in_channels * expand_ratio)
        self.use_shortcut = stride == 1 and in_channels == out_channels

        hidden = self.hidden_channels
        if self.expand_ratio == 1:
            # t = 1: nothing to expand; the depthwise conv takes the input.
            self.expansion: nn.Module = nn.Identity()
        else:
            self.expansion = ConvBNAct(
                in_channels, hidden, kernel_size=1, activation=nn.ReLU6
            )
        self.depthwise = ConvBNAct(
            hidden, hidden, kernel_size=3, stride=stride, groups=hidden,
            dilation=self.dilation, activation=nn.ReLU6,
        )
        self.projection = ConvBNAct(
            hidden, out_channels, kernel_size=1,
            activation=projection_activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.projection(self.depthwise(self.expansion(x)))
        return x + out if self.use_shortcut else out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"stride={self.stride}, expand_ratio={self.expand_ratio:g}, "
            f"use_shortcut={self.use_shortcut}"
            + (f", dilation={self.dilation}" if self.dilation != 1 else "")
        )
