"""MobileNetV2 built from the paper's Table 2 (Sandler et al. 2018, Section 4)."""

from __future__ import annotations

import copy
import math
import zlib
from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ._checks import image_batch, one_of, positive_int, real_at_least
from .layers import SHORTCUTS, Activation, ConvBNAct, InvertedResidual, conv_output_size, link_expansion_shortcuts


class StageSpec(NamedTuple):
    """One bottleneck row of Table 2: a stage of ``n`` inverted residual blocks."""

    t: float  #: expansion factor of every block in the stage (> 0; Table 2 uses 1 and 6)
    c: int  #: output channels (before the width multiplier)
    n: int  #: number of blocks
    s: int  #: stride of the first block; the others have stride 1


#: The bottleneck rows of Table 2, top to bottom (input 224x224x3).
PAPER_TABLE_2: tuple[StageSpec, ...] = (
    StageSpec(t=1, c=16, n=1, s=1),
    StageSpec(t=6, c=24, n=2, s=2),
    StageSpec(t=6, c=32, n=3, s=2),
    StageSpec(t=6, c=64, n=4, s=2),
    StageSpec(t=6, c=96, n=3, s=1),
    StageSpec(t=6, c=160, n=3, s=2),
    StageSpec(t=6, c=320, n=1, s=1),
)
#: Table 2, first row: a 3x3 convolution with stride 2 to 32 channels.
STEM_CHANNELS = 32
STEM_STRIDE = 2
#: Table 2, the 1x1 convolution after the last bottleneck.
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, as the reference implementations do.

    The value is rounded to the nearest multiple (halves round up), but never below
    ``divisor`` itself and never more than 10% below ``value``; in that case the next
    multiple up is taken. With ``divisor=8``, ``make_divisible(32 * 0.35) == 16``.
    """
    value = real_at_least("value", value, 0.0, strict=True)
    divisor = positive_int("divisor", divisor)
    rounded = max(divisor, divisor * math.floor(value / divisor + 0.5))
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), laid out as Table 2.

    ``stem``: 3x3 conv, stride 2, to 32 channels; ``stages``: one ``nn.Sequential`` of
    :class:`~mbv2.layers.InvertedResidual` blocks per row of ``stages`` (Table 2 by
    default); ``head``: 1x1 conv to 1280 channels; ``pool``: global average pooling;
    ``classifier``: dropout and a linear layer (the paper's final 1x1 conv on a 1x1 map).

    Args:
        num_classes: k, the number of output classes.
        width_mult: the width multiplier; every channel count c becomes
            ``make_divisible(c * width_mult)``, except that the 1280 channels of the head
            are never reduced (``max(1, width_mult)``).
        dropout: dropout probability before the classifier, in [0, 1).
        stages: the bottleneck rows (t, c, n, s); defaults to :data:`PAPER_TABLE_2`.
        projection_activation: passed to every block; ``None`` keeps the linear bottleneck.
        shortcut: keyword only; ``"bottleneck"`` (the default, the paper's),
            ``"expansion"`` or ``"none"``: where the blocks' shortcuts join (Section 6.4,
            Figure 6b; defined in :class:`~mbv2.layers.InvertedResidual`). With
            ``"expansion"`` the blocks are linked across stages by
            :func:`~mbv2.layers.link_expansion_shortcuts` (``expansion_links`` of them:
            10 for Table 2 at widths 0.35 to 1.4, where the paper's 10 shortcuts are).
            Every choice has the same modules, state dict keys and parameters.
        output_stride: keyword only; 32 (the default, Table 2 as printed), 16 or 8: the
            largest ratio of input side to feature-map side, reached with atrous
            (dilated) depthwise convolutions instead of further striding (Section 6.3).
            The rule, see :func:`atrous_schedule`, is the reference code's. Only strides
            and dilations change: the modules, their names and parameters are the same
            for every output stride, so one state dict fits them all.

    The input is ``(N, 3, H, W)`` with H and W at least the product of the strides
    (``min_input_size``: 32 for Table 2, the output stride otherwise), so that every
    stride-2 layer has something to halve.

    :meth:`extract` returns named intermediate maps (the endpoints of the reference code,
    ``"layer_15/expansion_output"`` and so on), the input of detection and segmentation
    heads.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        *,
        stages: Sequence[StageSpec] = PAPER_TABLE_2,
        projection_activation: Activation = None,
        shortcut: str = "bottleneck",
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        self.num_classes = positive_int("num_classes", num_classes)
        self.width_mult = real_at_least("width_mult", width_mult, 0.0, strict=True)
        dropout = real_at_least("dropout", dropout, 0.0)
        if dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.stage_specs = _check_stages(stages)
        output_stride = one_of("output_stride", output_stride, OUTPUT_STRIDES)
        self.shortcut = one_of("shortcut", shortcut, SHORTCUTS)
        block_strides = [spec.s if i == 0 else 1 for spec in self.stage_specs for i in range(spec.n)]
        # The stem, then the blocks; the 1x1 head has stride 1 and no spatial extent.
        schedule = atrous_schedule([STEM_STRIDE, *block_strides], output_stride)
        #: the ratio of input side to final map side: ``output_stride``, or less if the
        #: layers never stride that much.
        self.output_stride = math.prod(stride for stride, _ in schedule)
        self.min_input_size = self.output_stride

        channels = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = ConvBNAct(
            3, channels, kernel_size=3, stride=STEM_STRIDE, activation=nn.ReLU6
        )
        stage_modules = []
        layers = iter(schedule[1:])
        for spec in self.stage_specs:
            out_channels = make_divisible(spec.c * width_mult)
            blocks = []
            for i in range(spec.n):
                stride, dilation = next(layers)
                blocks.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        stride=stride,
                        expand_ratio=spec.t,
                        projection_activation=projection_activation,
                        shortcut=shortcut,
                        dilation=dilation,
                    )
                )
                channels = out_channels
            stage_modules.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stage_modules)
        #: the number of shortcuts between expansions (0 unless shortcut="expansion")
        self.expansion_links = link_expansion_shortcuts(self.blocks())
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        self.head = ConvBNAct(
            channels, self.last_channels, kernel_size=1, activation=nn.ReLU6
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                dropout=nn.Dropout(dropout),
                linear=nn.Linear(self.last_channels, num_classes),
            )
        )
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Initialise as torchvision does: He-normal convs (fan-out), BN to identity,
        classifier weights N(0, 0.01) and zero bias.

        ``seed`` None (the default, what the constructor does) draws from the global
        generator, in module order. An integer ``seed`` draws each module's weights from a
        generator of its own, seeded from ``seed`` and the module's name: two models
        initialised with the same seed then have the *same* weights in every module that
        has the same name and shape, even where other modules differ (a different
        expansion factor changes the blocks' inner widths but not the stem, the head or
        the classifier). The experiments of :mod:`mbv2.experiments` pair their variants so.
        """
        for name, module in self.named_modules():
            generator = None
            if seed is not None and isinstance(module, (nn.Conv2d, nn.Linear)):
                # (the CPU generator keeps only 32 bits of a seed: hash seed and name together)
                generator = torch.Generator().manual_seed(zlib.crc32(f"{int(seed)}/{name}".encode()))
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01, generator=generator)
                nn.init.zeros_(module.bias)

    def blocks(self) -> list[InvertedResidual]:
        """The inverted residual blocks, in order (17 for Table 2)."""
        return [block for stage in self.stages for block in stage]

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise an error that says what is wrong if ``x`` cannot go through the model."""
        image_batch(x, self.min_input_size)

    @torch.jit.unused
    def _check_whole(self) -> None:
        missing = [name for name in ("head", "pool", "classifier") if getattr(self, name) is None]
        if missing:
            raise RuntimeError(
                f"this MobileNetV2 is a backbone without {', '.join(missing)} (cut for detection "
                f"or segmentation heads); use extract() for its feature maps"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
            self._check_whole()
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def endpoints(self) -> dict[str, str]:
        """The maps :meth:`extract` can return: endpoint name -> submodule that outputs it.

        The names are the reference code's (TF-slim ``mobilenet_v2``, used by the Object
        Detection API and DeepLab): ``layer_1`` is the stem, ``layer_2`` ... ``layer_18``
        the 17 blocks of Table 2 in order, ``layer_19`` the 1x1 conv to 1280 channels.
        Each block with an expansion layer also has ``layer_k/expansion_output`` (the
        expanded tensor, before the depthwise conv and so before any stride of the block),
        and every block ``layer_k/depthwise_output``. ``layer_15/expansion_output`` is the
        576-channel expansion of the first 160-channel block, where SSDLite attaches its
        first head (Section 6.2); ``layer_18`` is the 320-channel map of "MNet V2*"
        (Section 6.3). A module cut away (set to ``None``) has no endpoint.
        """
        names = {"layer_1": "stem"}
        for k, (s, b, block) in enumerate(self._indexed_blocks(), start=2):
            if not isinstance(block.expansion, nn.Identity):
                names[f"layer_{k}/expansion_output"] = f"stages.{s}.{b}.expansion"
            names[f"layer_{k}/depthwise_output"] = f"stages.{s}.{b}.depthwise"
            names[f"layer_{k}"] = f"stages.{s}.{b}"
        if self.head is not None:
            names[f"layer_{len(self.blocks()) + 2}"] = "head"
        return names

    def extract(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the network on ``x`` only as far as needed and return the maps ``names``.

        ``names`` are endpoints (see :meth:`endpoints`), e.g.
        ``["layer_15/expansion_output", "layer_19"]``; the dict has them in that order.
        Nothing after the deepest one is computed, neither the pooling nor the classifier.
        Gradients flow as in ``forward`` (the maps are taken with forward hooks, so the
        blocks run their own ``forward``).
        """
        available = self.endpoints()
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ValueError(f"names must be a non-empty list of endpoint names, got {names!r}")
        for name in names:
            if name not in available:
                raise ValueError(
                    f"names must be endpoints of this model ({', '.join(available)}), got {name!r}"
                )
        if not torch.jit.is_scripting():
            self.check_input(x)
        modules = dict(self.named_modules())
        outputs: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:
            def hook(module, inputs, output, name=name):
                # a block linked by a shortcut between expansions outputs (x, E): keep x
                outputs[name] = output[0] if isinstance(output, tuple) else output
            handles.append(modules[available[name]].register_forward_hook(hook))
        last = max(int(name.split("/")[0].split("_")[1]) for name in names)
        try:
            x = self.stem(x)
            for k, (_, _, block) in enumerate(self._indexed_blocks(), start=2):
                if k > last:
                    break
                x = block(x)
            if last == len(self.blocks()) + 2:
                self.head(x)
        finally:
            for handle in handles:
                handle.remove()
        return {name: outputs[name] for name in names}

    def _indexed_blocks(self):
        return [(s, b, block) for s, stage in enumerate(self.stages) for b, block in enumerate(stage)]


#: The output strides :class:`MobileNetV2` can be built with (Section 6.3 uses 16 and 8).
OUTPUT_STRIDES = (32, 16, 8)


def atrous_schedule(strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of each layer for a network whose layers stride ``strides``.

    The rule of the reference code (TF-slim ``mobilenet_base(output_stride=...)`` in
    ``research/slim/nets/mobilenet/mobilenet.py``, which DeepLab uses for Section 6.3):
    walk the layers keeping the product of the strides so far. While it is below
    ``output_stride`` every layer keeps its stride and dilation 1. Once it has reached
    ``output_stride``, a layer that would stride by s runs with stride 1 and with the
    dilation *accumulated before it*, and every later layer's dilation is multiplied by s.

    For Table 2 (stem, then the 17 blocks ``layer_2`` ... ``layer_18``), this gives:

    * output stride 16: ``layer_15`` (the first 160-channel block) gets stride 1 and
      dilation 1; ``layer_16`` to ``layer_18`` get dilation 2.
    * output stride 8: ``layer_8`` (the first 64-channel block) gets stride 1, dilation 1;
      ``layer_9`` to ``layer_14`` dilation 2; ``layer_15`` stride 1 and dilation 2;
      ``layer_16`` to ``layer_18`` dilation 4.

    The dilation applies to the 3x3 depthwise conv of each block. (torchvision's dilated
    MobileNetV3 differs in one place: the layer that loses its stride already gets the
    new, larger rate.)
    """
    current, rate, schedule = 1, 1, []
    for i, stride in enumerate(strides):
        stride = positive_int(f"strides[{i}]", stride)
        if current >= output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current *= stride
    return schedule


def _check_stages(stages: Sequence[StageSpec]) -> tuple[StageSpec, ...]:
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise ValueError(f"stages must be a non-empty sequence of (t, c, n, s) rows, got {stages!r}")
    checked = []
    for i, row in enumerate(stages):
        if len(row) != 4:
            raise ValueError(f"stages[{i}] must be a (t, c, n, s) row, got {row!r}")
        t, c, n, s = row
        real_at_least(f"stages[{i}].t", t, 0.0, strict=True)
        positive_int(f"stages[{i}].c", c)
        positive_int(f"stages[{i}].n", n)
        one_of(f"stages[{i}].s", s, (1, 2))
        checked.append(StageSpec(t, c, n, s))
    return tuple(checked)


class Table2Row(NamedTuple):
    """One row of Table 2 for a built model: the operator and the size of its input.

    ``input_shape`` is (channels, height, width) of the tensor the row receives;
    ``t``, ``c``, ``n``, ``s`` are ``None`` where the paper prints a dash or nothing.
    ``c`` is the model's actual channel count, so it includes the width multiplier.
    """

    input_shape: tuple[int, int, int]
    operator: str
    t: float | None
    c: int | None
    n: int | None
    s: int | None


def table_2_rows(model: MobileNetV2, resolution: int = 224) -> list[Table2Row]:
    """Table 2 of the paper (Section 4) for ``model`` on a square input of side ``resolution``.

    The rows are read from the model: the stem, one row per stage of ``model.stage_specs``
    (t, n and s as given, c after the width multiplier), the 1x1 head, the global average
    pooling and the classifier, which the paper writes as a 1x1 convolution with k
    outputs. The input sizes are computed, not traced: every 3x3 convolution pads by 1,
    so a stride-s layer maps a side of h pixels to ceil(h / s).
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    h = _check_resolution(model, resolution)
    c_in = model.stem.conv.out_channels
    rows = [Table2Row((3, h, h), "conv2d 3×3", None, c_in, 1, STEM_STRIDE)]
    h = conv_output_size(h, STEM_STRIDE)
    for spec, stage in zip(model.stage_specs, model.stages):
        c_out = stage[-1].out_channels
        stride = stage[0].stride  # spec.s, or 1 where a smaller output stride dilates instead
        rows.append(Table2Row((c_in, h, h), "bottleneck", spec.t, c_out, spec.n, stride))
        c_in, h = c_out, conv_output_size(h, stride)
    last = model.last_channels
    rows += [
        Table2Row((c_in, h, h), "conv2d 1×1", None, last, 1, 1),
        Table2Row((last, h, h), f"avgpool {h}×{h}", None, None, 1, None),
        Table2Row((last, 1, 1), "conv2d 1×1", None, model.num_classes, None, None),
    ]
    return rows


def with_t1_expansion(model: MobileNetV2) -> MobileNetV2:
    """A copy of ``model`` in which every t = 1 block has a 1×1 expansion layer too.

    Table 2 gives the first bottleneck t = 1, and the reference code (like this book's
    model and torchvision's) builds no expansion layer there, since there is nothing to
    expand. Some re-implementations build one anyway, a 1×1 convolution from k to k
    channels with batch norm and ReLU6; this copy is that variant, so that the published
    counts that include it (3,505,960 parameters rather than 3,504,872) can be reproduced.
    The layers get fresh weights; the rest of the model is copied unchanged.
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    variant = copy.deepcopy(model)
    for block in variant.blocks():
        if block.expand_ratio == 1:
            block.expansion = ConvBNAct(
                block.in_channels, block.hidden_channels, kernel_size=1,
                activation=nn.ReLU6,
            )
    variant.train(model.training)
    return variant


def _check_resolution(model: MobileNetV2, resolution: object) -> int:
    """``resolution`` if it is an integer side the model can take, else a ValueError."""
    resolution = positive_int("resolution", resolution)
    if resolution < model.min_input_size:
        raise ValueError(
            f"resolution must be at least {model.min_input_size} pixels for this model, "
            f"got {resolution}"
        )
    return resolution
