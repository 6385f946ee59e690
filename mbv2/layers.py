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


#: The shortcut placements of :class:`InvertedResidual` (Section 6.4, Figure 6b).
SHORTCUTS = ("bottleneck", "expansion", "none")


class InvertedResidual(nn.Module):
    """The bottleneck residual block of MobileNetV2 (Sandler et al. 2018, Table 1).

    ``expansion``: 1x1 conv + ReLU6 from k to t*k channels (absent when t = 1);
    ``depthwise``: 3x3 depthwise conv with stride s + ReLU6;
    ``projection``: 1x1 conv from t*k to k' channels, linear (the *linear bottleneck*).
    Each convolution is followed by batch norm. The input is added to the output (the
    shortcut) exactly when the stride is 1 and k = k'.

    The expanded ("hidden") width is ``max(1, round(k * t))``. With t < 1 the expansion
    layer *reduces* the channels: the block is then the classic residual bottleneck of
    ResNet (wide input, narrow inner layers, wide output, the shortcut joining the wide
    tensors), the special case of Section 3.4.

    **Shortcuts** (``shortcut``, for the ablation of Section 6.4 / Figure 6b, whose three
    curves are labelled "Shortcut between bottlenecks", "Shortcut between expansions" and
    "No residual"):

    * ``"bottleneck"`` (the default, the paper's block): the block's input x is added to
      its output, ``x + projection(depthwise(expansion(x)))``, when the stride is 1 and
      k = k' (Table 1). The shortcut joins the narrow tensors.
    * ``"expansion"``: the shortcut joins the *wide* tensors instead, as the classic
      residual block does (Figure 3 and its caption: classic residuals connect the layers
      with many channels, inverted residuals the bottlenecks; Section 3.3). In a chain of
      blocks the wide tensors are the expanded ones, the inputs of the depthwise
      convolutions. Write E_i for the tensor that enters block i's depthwise conv. Block i
      has no shortcut of its own; instead, when block i has stride 1 and its expanded
      width equals block i+1's, block i+1's depthwise conv receives
      ``E_{i+1} = expansion_{i+1}(x_i) + E_i`` (x_i is block i's output). The sum is
      taken after the expansion's ReLU6, so that, like the paper's shortcut, it is a clean
      identity path with no activation after the addition, and E_{i+1} is again what the
      next block adds, so the wide tensors form one residual stream as the narrow ones do
      in the paper's design. Seen from E_i to E_{i+1}, the computation between them
      (depthwise, projection, expansion: wide, narrow, wide) is a classic residual
      bottleneck block. Where the two expanded tensors have different shapes (a stride of
      2 in block i, or a different expanded width, e.g. where t changes) nothing is added:
      the shortcut is an identity or nothing, never a projection, as in the paper's rule
      for its own shortcut, so the three variants have the same parameters. For Table 2,
      whose t is constant after the first block, the links sit exactly where the paper's
      shortcuts are (block i has stride 1 and k = k'), 10 of them at the paper's widths
      (0.35 to 1.4); only the place of each addition moves. (Below a width of about 0.27
      the stem and the t = 1 block both have 8 channels, so that block gets the paper's
      shortcut as well; its expanded tensor, 8 channels, has no partner of the same width
      in the next block, whose t is 6.) With t = 1 in both blocks the two placements coincide. The links
      are set by :func:`link_expansion_shortcuts` (which :class:`~mbv2.model.MobileNetV2`
      calls): a block that passes its E_i on returns the pair ``(output, E_i)``, and a
      block that receives one takes such a pair as its input. A block on its own, not
      linked, has no shortcut at all.
    * ``"none"``: no shortcut anywhere (the "No residual" curve).

    Args:
        in_channels: k, channels of the input.
        out_channels: k', channels of the output.
        stride: s, stride of the depthwise convolution, 1 or 2.
        expand_ratio: t, the expansion factor (> 0; 1 means no expansion layer; below 1
            the expansion layer reduces the channels, Section 3.4).
        projection_activation: builds an activation to put after the projection, for the
            ablation of Section 6.4 / Figure 6a (e.g. ``nn.ReLU6``); ``None`` (the default)
            keeps the bottleneck linear as in the paper.
        shortcut: keyword only; ``"bottleneck"`` (the default), ``"expansion"`` or
            ``"none"``, see above.
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
        shortcut: str = "bottleneck",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.stride = one_of("stride", stride, (1, 2))
        self.dilation = positive_int("dilation", dilation)
        self.expand_ratio = real_at_least("expand_ratio", expand_ratio, 0.0, strict=True)
        self.shortcut = one_of("shortcut", shortcut, SHORTCUTS)
        self.hidden_channels = hidden_channels(in_channels, expand_ratio)
        #: whether the input is added to the output (the paper's shortcut)
        self.use_shortcut = shortcut == "bottleneck" and stride == 1 and in_channels == out_channels
        #: shortcut="expansion": whether the input is a pair (x, E) whose E is added to the
        #: expanded tensor, and whether the output is a pair (output, E); set by
        #: :func:`link_expansion_shortcuts`.
        self.receives_expansion = False
        self.passes_expansion = False

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
        if self.receives_expansion or self.passes_expansion:
            return self._forward_linked(x)
        out = self.projection(self.depthwise(self.expansion(x)))
        return x + out if self.use_shortcut else out

    @torch.jit.unused
    def _forward_linked(self, x):
        """shortcut="expansion" in a linked chain: takes ``(x, E_prev)`` if
        ``receives_expansion``, returns ``(output, E)`` if ``passes_expansion``."""
        if self.receives_expansion:
            x, previous = x
        hidden = self.expansion(x)
        if self.receives_expansion:
            hidden = hidden + previous
        out = self.projection(self.depthwise(hidden))
        return (out, hidden) if self.passes_expansion else out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"stride={self.stride}, expand_ratio={self.expand_ratio:g}, "
            f"use_shortcut={self.use_shortcut}"
            + (f", shortcut={self.shortcut!r}" if self.shortcut != "bottleneck" else "")
            + (f", dilation={self.dilation}" if self.dilation != 1 else "")
        )


def hidden_channels(in_channels: int, expand_ratio: float) -> int:
    """The expanded width of a block: ``max(1, round(k * t))`` (k * t when that is whole)."""
    return max(1, round(in_channels * expand_ratio))


def expansion_links_possible(block: InvertedResidual, following: InvertedResidual) -> bool:
    """Whether a shortcut between expansions can join ``block`` to the block after it:
    both have ``shortcut="expansion"``, ``block`` has stride 1 (its expanded tensor and
    the next one have the same height and width) and both expanded widths are equal."""
    return (block.shortcut == following.shortcut == "expansion" and block.stride == 1
            and block.hidden_channels == following.hidden_channels)


def link_expansion_shortcuts(blocks) -> int:
    """Set the shortcuts between expansions of a chain of blocks (in the order the input
    meets them), see :class:`InvertedResidual`; return how many links there are.

    Block i passes its expanded tensor to block i+1 exactly when
    :func:`expansion_links_possible`; every flag is set afresh, so calling it again is safe.
    """
    blocks = list(blocks)
    for block in blocks:
        block.receives_expansion = block.passes_expansion = False
    links = 0
    for block, following in zip(blocks, blocks[1:]):
        if expansion_links_possible(block, following):
            block.passes_expansion = following.receives_expansion = True
            links += 1
    return links
