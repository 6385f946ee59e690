"""SSD and SSDLite on MobileNetV2 (Sandler et al. 2018, Section 6.2, Tables 5 and 6).

The layout is the reference configuration's (TensorFlow Object Detection API,
``ssd_mobilenet_v2_feature_extractor.py``, ``feature_map_generators.py``,
``ssdlite_mobilenet_v2_coco.config``):

* six feature maps: the 576-channel expansion of ``layer_15`` (the first 160-channel
  block, output stride 16), the 1280-channel ``layer_19`` (output stride 32), and four
  *extra layers* of 512, 256, 256 and 128 channels, each halving the map;
* an extra layer is a 1x1 conv to half its depth, then a 3x3 stride-2 conv to its depth:
  a regular one for SSD, a depthwise separable one (3x3 depthwise, 1x1) for SSDLite;
* on every map a box predictor (anchors x 4 box codes) and a class predictor
  (anchors x (classes + 1), the + 1 being the background class): a regular 3x3 conv with
  bias for SSD; for SSDLite a 3x3 depthwise conv with batch norm and ReLU6, then a 1x1
  conv with bias ("replace all the regular convolutions with separable convolutions in
  SSD prediction layers", Section 6.2);
* anchors per location 3, 6, 6, 6, 6, 6 (the SSD anchor generator of the configuration:
  scales from 0.2 to 0.95, aspect ratios 1, 2, 1/2, 3, 1/3 plus one interpolated scale,
  and only 3 boxes on the lowest map).

Every convolution other than the predictors' last is followed by batch norm and ReLU6.
Training (matching, losses, hard-example mining) is not part of this module.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ._checks import image_batch, positive_int, real_at_least
from .layers import ConvBNAct, conv_output_size
from .model import MobileNetV2

#: The backbone endpoints the first two feature maps come from (Section 6.2).
FEATURE_ENDPOINTS = ("layer_15/expansion_output", "layer_19")
#: Depths of the four extra feature layers (reference configuration ``layer_depth``).
EXTRA_DEPTHS = (512, 256, 256, 128)
#: The extra layers' depths are scaled by the width multiplier but never below this.
MIN_DEPTH = 16
#: Anchor generator of the reference configuration.
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
#: Scale factors of the box coder (y, x, h, w), as in the reference configuration.
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)


class AnchorSpec(NamedTuple):
    """One anchor shape on one feature map, relative to the image side."""

    scale: float  #: square root of the box area, as a fraction of the image side
    aspect_ratio: float  #: width / height


def anchor_specs(num_maps: int = 6, *, reduce_lowest: bool = True) -> list[list[AnchorSpec]]:
    """The anchor shapes of each feature map, as the reference ``ssd_anchor_generator``
    builds them (``create_ssd_anchors``).

    Scales are spaced linearly from :data:`MIN_SCALE` to :data:`MAX_SCALE` over the maps.
    With ``reduce_lowest`` (the reference default, ``reduce_boxes_in_lowest_layer``) the
    lowest map gets 3 boxes: (0.1, 1), (s_0, 2), (s_0, 1/2). Every other map k (and,
    without ``reduce_lowest``, the lowest too) gets the five :data:`ASPECT_RATIOS` at
    scale s_k, plus a square box at sqrt(s_k s_{k+1}) (with s = 1 after the last map):
    6 boxes.
    """
    num_maps = positive_int("num_maps", num_maps)
    if not isinstance(reduce_lowest, bool):
        raise TypeError(f"reduce_lowest must be True or False, got {reduce_lowest!r}")
    if num_maps < 2:
        raise ValueError(f"num_maps must be at least 2, got {num_maps}")
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (num_maps - 1) for i in range(num_maps)]
    scales.append(1.0)
    specs = []
    for k in range(num_maps):
        if k == 0 and reduce_lowest:
            specs.append([AnchorSpec(0.1, 1.0), AnchorSpec(scales[0], 2.0), AnchorSpec(scales[0], 0.5)])
        else:
            layer = [AnchorSpec(scales[k], r) for r in ASPECT_RATIOS]
            layer.append(AnchorSpec(math.sqrt(scales[k] * scales[k + 1]), 1.0))
            specs.append(layer)
    return specs


class ExtraLayer(nn.Sequential):
    """One extra feature layer: ``reduce`` (1x1 conv to ``out_channels // 2``), then a
    3x3 stride-2 conv to ``out_channels``: ``conv`` (regular, SSD) or ``depthwise`` and
    ``pointwise`` (separable, SSDLite). Batch norm and ReLU6 after each convolution."""

    def __init__(self, in_channels: int, out_channels: int, separable: bool) -> None:
        in_channels = positive_int("in_channels", in_channels)
        out_channels = positive_int("out_channels", out_channels)
        mid = max(out_channels // 2, 1)
        layers = OrderedDict(reduce=ConvBNAct(in_channels, mid, 1, activation=nn.ReLU6))
        if separable:
            layers["depthwise"] = ConvBNAct(mid, mid, 3, stride=2, groups=mid, activation=nn.ReLU6)
            layers["pointwise"] = ConvBNAct(mid, out_channels, 1, activation=nn.ReLU6)
        else:
            layers["conv"] = ConvBNAct(mid, out_channels, 3, stride=2, activation=nn.ReLU6)
        super().__init__(layers)


class Predictor(nn.Sequential):
    """A box or class predictor on one feature map, with ``out_channels`` outputs per location.

    Regular (SSD): ``conv``, a 3x3 conv with bias. Separable (SSDLite): ``depthwise``, a
    3x3 depthwise conv with batch norm and ReLU6, then ``conv``, a 1x1 conv with bias.
    """

    def __init__(self, in_channels: int, out_channels: int, separable: bool) -> None:
        in_channels = positive_int("in_channels", in_channels)
        out_channels = positive_int("out_channels", out_channels)
        if separable:
            super().__init__(OrderedDict(
                depthwise=ConvBNAct(in_channels, in_channels, 3, groups=in_channels, activation=nn.ReLU6),
                conv=nn.Conv2d(in_channels, out_channels, 1),
            ))
        else:
            super().__init__(OrderedDict(conv=nn.Conv2d(in_channels, out_channels, 3, padding=1)))


def feature_map_sizes(resolution: int, num_extra: int = len(EXTRA_DEPTHS)) -> list[int]:
    """Sides of the six feature maps for a square input of side ``resolution``:
    ceil(r / 16), ceil(r / 32), then each extra layer halves (rounding up)."""
    resolution = positive_int("resolution", resolution)
    side = resolution
    for _ in range(4):  # stem and the stride-2 blocks before layer_15
        side = conv_output_size(side, 2)
    sizes = [side, conv_output_size(side, 2)]
    for _ in range(num_extra):
        sizes.append(conv_output_size(sizes[-1], 2))
    return sizes


def min_resolution() -> int:
    """The smallest input side for which every stride-2 layer of the detector halves a map
    of at least 2 x 2 (below it the last extra layers would turn a 1 x 1 map into a 1 x 1
    map): 257 pixels. The reference sizes 300 and 320 are above it."""
    r = 32
    while feature_map_sizes(r)[-2] < 2:
        r += 1
    return r


class SSD(nn.Module):
    """SSD (``separable=False``) or SSDLite (``separable=True``) on MobileNetV2.

    Attributes: ``backbone`` (the :class:`~mbv2.model.MobileNetV2`, without its pooling and
    classifier), ``extras`` (four :class:`ExtraLayer`), ``box_predictors`` and
    ``class_predictors`` (six :class:`Predictor` each), ``anchors_per_location``.

    ``forward(x)`` takes ``(N, 3, r, r)`` with r = ``resolution`` and returns
    ``(box_codes, class_logits)``: ``(N, A, 4)`` and ``(N, A, num_classes + 1)``, where A is
    the number of anchors (:meth:`anchors`, same order: map by map, row-major, then the
    anchors of a location). Column 0 of the class logits is the background.
    """

    def __init__(
        self,
        num_classes: int = 80,
        separable: bool = True,
        resolution: int = 320,
        width_mult: float = 1.0,
        *,
        separable_extras: bool | None = None,
        reduce_lowest: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = positive_int("num_classes", num_classes)
        if not isinstance(separable, bool):
            raise TypeError(f"separable must be True or False, got {separable!r}")
        self.separable = separable
        if separable_extras is None:
            separable_extras = separable
        if not isinstance(separable_extras, bool):
            raise TypeError(f"separable_extras must be True, False or None, got {separable_extras!r}")
        self.separable_extras = separable_extras
        self.reduce_lowest = reduce_lowest
        self.resolution = positive_int("resolution", resolution)
        if self.resolution < min_resolution():
            raise ValueError(
                f"resolution must be at least {min_resolution()} pixels, so that every "
                f"extra layer halves a map of at least 2x2, got {resolution}"
            )
        width_mult = real_at_least("width_mult", width_mult, 0.0, strict=True)
        self.backbone = MobileNetV2(width_mult=width_mult)
        self.backbone.pool = None  # not used: the heads take the maps themselves
        self.backbone.classifier = None
        block15 = self.backbone.stages[5][0]  # layer_15, the first 160-channel block
        channels = [block15.hidden_channels, self.backbone.last_channels]
        extras = []
        for depth in EXTRA_DEPTHS:
            depth = max(int(depth * width_mult), MIN_DEPTH)
            extras.append(ExtraLayer(channels[-1], depth, separable_extras))
            channels.append(depth)
        self.extras = nn.ModuleList(extras)
        self.feature_channels = tuple(channels)
        self.anchors_per_location = tuple(
            len(layer) for layer in anchor_specs(len(channels), reduce_lowest=reduce_lowest))
        self.box_predictors = nn.ModuleList(
            Predictor(c, a * 4, separable) for c, a in zip(channels, self.anchors_per_location)
        )
        self.class_predictors = nn.ModuleList(
            Predictor(c, a * (num_classes + 1), separable)
            for c, a in zip(channels, self.anchors_per_location)
        )

    def feature_map_sizes(self) -> list[int]:
        """Sides of the six feature maps at ``resolution`` (20, 10, 5, 3, 2, 1 for 320)."""
        return feature_map_sizes(self.resolution, len(self.extras))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the predictors see, for a checked input."""
        self._check_input(x)
        maps = list(self.backbone.extract(x, FEATURE_ENDPOINTS).values())
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = [], []
        for fmap, box, cls in zip(self.feature_maps(x), self.box_predictors, self.class_predictors):
            boxes.append(_flatten(box(fmap), 4))
            scores.append(_flatten(cls(fmap), self.num_classes + 1))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def anchors(self) -> torch.Tensor:
        """All anchors as ``(A, 4)`` rows (y_center, x_center, height, width), as fractions
        of the image side, in the order of the forward pass's outputs. Centres sit at
        (i + 0.5) / side; a box of scale s and aspect ratio a is s / sqrt(a) high and
        s * sqrt(a) wide."""
        rows = []
        specs_per_map = anchor_specs(len(self.extras) + 2, reduce_lowest=self.reduce_lowest)
        for side, specs in zip(self.feature_map_sizes(), specs_per_map):
            centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
            cy, cx = torch.meshgrid(centres, centres, indexing="ij")
            hw = torch.tensor([[s / math.sqrt(a), s * math.sqrt(a)] for s, a in specs], dtype=torch.float64)
            grid = torch.stack([cy, cx], -1).reshape(-1, 1, 2).expand(-1, len(specs), 2)
            rows.append(torch.cat([grid, hw.expand(side * side, -1, -1)], -1).reshape(-1, 4))
        return torch.cat(rows).float()

    def _check_input(self, x: torch.Tensor) -> None:
        image_batch(x, self.resolution)
        if isinstance(x, torch.Tensor) and tuple(x.shape[2:]) != (self.resolution,) * 2:
            raise ValueError(
                f"input must be {self.resolution}x{self.resolution} (the anchors are laid out "
                f"for the resolution the detector was built with), got {tuple(x.shape[2:])}"
            )


def _flatten(prediction: torch.Tensor, per_anchor: int) -> torch.Tensor:
    n = prediction.shape[0]
    return prediction.permute(0, 2, 3, 1).reshape(n, -1, per_anchor)


def decode_boxes(box_codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (y_min, x_min, y_max, x_max) from box codes and anchors, both ``(..., 4)``.

    The Faster R-CNN box coder of the reference configuration: codes (t_y, t_x, t_h, t_w)
    are scaled by :data:`BOX_CODER_SCALES`; the centre moves by t_y h_a / 10, t_x w_a / 10
    and the size becomes h_a exp(t_h / 5), w_a exp(t_w / 5). Zero codes give the anchors.
    """
    if box_codes.shape[-1] != 4 or anchors.shape[-1] != 4:
        raise ValueError(
            f"box_codes and anchors must end in 4 values, got {tuple(box_codes.shape)} and {tuple(anchors.shape)}"
        )
    sy, sx, sh, sw = BOX_CODER_SCALES
    ya, xa, ha, wa = anchors.unbind(-1)
    ty, tx, th, tw = box_codes.unbind(-1)
    yc, xc = ty / sy * ha + ya, tx / sx * wa + xa
    h, w = torch.exp(th / sh) * ha, torch.exp(tw / sw) * wa
    return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)


def build_ssd(
    num_classes: int = 80,
    separable: bool = True,
    resolution: int = 320,
    width_mult: float = 1.0,
    *,
    separable_extras: bool | None = None,
    reduce_lowest: bool = True,
    backbone_state_dict: dict | None = None,
) -> SSD:
    """SSDLite (``separable=True``, the paper's Section 6.2) or SSD on MobileNetV2.

    Args:
        num_classes: object classes, without the background, which the class predictors
            add as one more output: 80 for the paper's COCO tables (81 outputs), 90 for
            the reference configuration's COCO label ids (91 outputs).
        separable: SSDLite's separable predictors and extra layers, or SSD's regular ones.
        resolution: the square input side: 320 in the paper, 300 in the public
            configuration; at least :func:`min_resolution`.
        width_mult: the backbone's width multiplier; the extra layers' depths are scaled
            by it too (never below :data:`MIN_DEPTH`).
        separable_extras: keyword only; separable 3x3 convs in the extra layers. ``None``
            (the default) follows ``separable``, as the reference code's
            ``use_depthwise`` does; ``False`` with ``separable=True`` gives separable
            predictors on regular extra layers, the literal reading of Section 6.2.
        reduce_lowest: keyword only; 3 anchors per location on the lowest map (the
            reference default) rather than 6 (torchvision's SSDLite).
        backbone_state_dict: keyword only; a ``MobileNetV2.state_dict()`` of the same
            width (e.g. ``mbv2.load_pretrained().state_dict()``) loaded into the backbone;
            its pooling and classifier entries are ignored.
    """
    model = SSD(num_classes, separable, resolution, width_mult,
                separable_extras=separable_extras, reduce_lowest=reduce_lowest)
    if backbone_state_dict is not None:
        load_backbone(model.backbone, backbone_state_dict)
    return model


def load_backbone(backbone: MobileNetV2, state_dict: dict) -> MobileNetV2:
    """Load a full MobileNetV2's ``state_dict`` into a backbone cut for a detector or a
    segmentation model: every key the backbone has must be there, and the keys of the
    parts cut away (classifier, and possibly the 1x1 head) are ignored."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    own = backbone.state_dict()
    missing = [key for key in own if key not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks {len(missing)} backbone keys, e.g. {missing[:3]}")
    backbone.load_state_dict({key: state_dict[key] for key in own})
    return backbone

