"""SSD and SSDLite on MobileNetV2 (Section 6.2): structure, shapes, anchors, counts."""

import math

import pytest
import torch
import torchinfo
from torch import nn

import mbv2
from mbv2 import MobileNetV2
from mbv2.cost import group_totals, ssd_cost_table
from mbv2.detection import (
    SSD, anchor_specs, build_ssd, decode_boxes, feature_map_sizes, min_resolution,
)


@pytest.fixture(scope="module")
def ssdlite():
    return build_ssd().eval()


@pytest.fixture(scope="module")
def ssd():
    return build_ssd(separable=False).eval()


def test_anchor_specs_are_the_reference_generators():
    specs = anchor_specs()
    assert [len(layer) for layer in specs] == [3, 6, 6, 6, 6, 6]
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    scales = [layer[0].scale for layer in specs[1:]]
    assert scales == pytest.approx([0.35, 0.5, 0.65, 0.8, 0.95])
    assert specs[-1][-1].scale == pytest.approx(math.sqrt(0.95 * 1.0))
    assert sorted({round(s.aspect_ratio, 6) for s in specs[1]}) == pytest.approx([1 / 3, 0.5, 1, 2, 3])


@pytest.mark.parametrize("resolution, sides", [(320, [20, 10, 5, 3, 2, 1]), (300, [19, 10, 5, 3, 2, 1])])
def test_feature_map_sizes(resolution, sides):
    assert feature_map_sizes(resolution) == sides


def test_ssdlite_structure_and_shapes(ssdlite):
    assert isinstance(ssdlite.backbone, MobileNetV2)
    assert ssdlite.backbone.classifier is None and ssdlite.backbone.pool is None
    assert ssdlite.feature_channels == (576, 1280, 512, 256, 256, 128)
    assert ssdlite.anchors_per_location == (3, 6, 6, 6, 6, 6)
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        maps = ssdlite.feature_maps(x)
        boxes, scores = ssdlite(x)
    assert [m.shape[1:] for m in maps] == [(c, s, s) for c, s in zip(ssdlite.feature_channels, [20, 10, 5, 3, 2, 1])]
    num_anchors = 20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6
    assert boxes.shape == (2, num_anchors, 4)
    assert scores.shape == (2, num_anchors, 81)  # 80 classes + background
    assert ssdlite.anchors().shape == (num_anchors, 4)
    # Separable: every 3x3 conv of the heads is depthwise.
    heads = [ssdlite.extras, ssdlite.box_predictors, ssdlite.class_predictors]
    for module in heads:
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                assert conv.groups == conv.in_channels


def test_ssd_uses_regular_3x3_convs(ssd):
    for conv in list(ssd.box_predictors.modules()) + list(ssd.extras.modules()):
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            assert conv.groups == 1
    assert ssd(torch.randn(1, 3, 320, 320))[1].shape[-1] == 81


def test_300_and_90_classes_as_the_public_config():
    model = build_ssd(num_classes=90, resolution=300).eval()
    boxes, scores = model(torch.randn(1, 3, 300, 300))
    assert boxes.shape[1] == 19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6
    assert scores.shape[-1] == 91


def test_anchor_order_matches_the_predictions(ssdlite):
    anchors = ssdlite.anchors()
    # First map: 3 anchors per location, row-major, centres at (i + 0.5) / 20.
    assert anchors[:3, :2].flatten().tolist() == pytest.approx([0.025] * 6)
    assert anchors[3, :2].tolist() == pytest.approx([0.025, 0.075])
    assert anchors[1, 2:].tolist() == pytest.approx([0.2 / math.sqrt(2), 0.2 * math.sqrt(2)])
    # Last anchor: the 1x1 map, centred, square, scale sqrt(0.95).
    assert anchors[-1].tolist() == pytest.approx([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)])
    # A prediction placed on one location of one map lands on its anchors' rows.
    feature = ssdlite.feature_maps(torch.randn(1, 3, 320, 320))
    assert sum(f.shape[-1] ** 2 * a for f, a in zip(feature, ssdlite.anchors_per_location)) == len(anchors)


def test_decode_boxes():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert decode_boxes(torch.zeros(1, 4), anchors)[0].tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])
    shifted = decode_boxes(torch.tensor([[10.0, 0.0, 5 * math.log(2), 0.0]]), anchors)
    assert shifted[0].tolist() == pytest.approx([0.5, 0.3, 0.9, 0.7])
    with pytest.raises(ValueError, match="must end in 4 values"):
        decode_boxes(torch.zeros(3), anchors)


@pytest.mark.parametrize("separable", [True, False])
def test_counts_agree_with_torchinfo(separable):
    model = build_ssd(separable=separable).eval()
    rows = ssd_cost_table(model)
    stats = torchinfo.summary(model, input_size=(1, 3, 320, 320), verbose=0)
    assert sum(r.params for r in rows) == stats.total_params == sum(p.numel() for p in model.parameters())
    convs = [s for s in stats.summary_list if s.class_name == "Conv2d"]
    conv_madds = sum(s.macs for s in convs)
    biases = sum(
        conv.out_channels * side * side
        for kind in (model.box_predictors, model.class_predictors)
        for predictor, side in zip(kind, model.feature_map_sizes())
        for conv in [predictor.conv]
    )
    # torchinfo counts a bias once per output value; the paper's convention does not.
    assert sum(r.madds for r in rows) == conv_madds - biases
    # Each row is its module's own parameter count.
    for row in rows:
        module = model.get_submodule(row.name)
        assert row.params == sum(p.numel() for p in module.parameters()), row.name


def test_heads_match_table_5_and_the_total_table_6(ssd, ssdlite):
    ssd_heads = {k: v for k, v in group_totals(ssd_cost_table(ssd)).items() if k != "backbone"}
    lite = group_totals(ssd_cost_table(ssdlite))
    lite_heads = {k: v for k, v in lite.items() if k != "backbone"}
    # Table 5: SSD 14.8M / 1.25B; SSDLite 2.1M (its 0.35B is not reproduced, see the book).
    assert sum(p for p, _ in ssd_heads.values()) == pytest.approx(14.8e6, rel=5e-3)
    assert sum(m for _, m in ssd_heads.values()) == pytest.approx(1.25e9, rel=1e-2)
    assert sum(p for p, _ in lite_heads.values()) == pytest.approx(2.1e6, rel=1e-2)
    # Table 6: MNet V2 + SSDLite 4.3M / 0.8B.
    assert sum(p for p, _ in lite.values()) == pytest.approx(4.3e6, rel=1e-2)
    assert sum(m for _, m in lite.values()) == pytest.approx(0.8e9, rel=2e-2)


def test_pretrained_backbone_loads(ssdlite):
    state = mbv2.load_pretrained().state_dict()
    model = build_ssd(backbone_state_dict=state)
    assert torch.equal(model.backbone.head.conv.weight, state["head.conv.weight"])
    with pytest.raises(ValueError, match="lacks"):
        build_ssd(backbone_state_dict={k: v for k, v in state.items() if not k.startswith("stem")})


def test_width_multiplier_scales_backbone_and_extras():
    model = build_ssd(width_mult=0.5).eval()
    assert model.feature_channels == (288, 1280, 256, 128, 128, 64)
    assert model(torch.randn(1, 3, 320, 320))[0].shape == (1, 2034, 4)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_classes=0), ValueError, "num_classes must be an integer >= 1"),
    (dict(num_classes=80.0), ValueError, "num_classes must be an integer >= 1"),
    (dict(num_classes="80"), ValueError, "num_classes must be an integer >= 1"),
    (dict(num_classes=True), ValueError, "num_classes must be an integer >= 1"),
    (dict(separable="yes"), TypeError, "separable must be True or False"),
    (dict(resolution=256), ValueError, "resolution must be at least 257 pixels"),
    (dict(resolution=0), ValueError, "resolution must be an integer >= 1"),
    (dict(width_mult=0), ValueError, "width_mult must be a finite number > 0"),
])
def test_build_ssd_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_ssd(**kwargs)


def test_min_resolution_is_where_the_last_extra_layer_still_halves():
    r = min_resolution()
    assert feature_map_sizes(r)[-2] == 2 and feature_map_sizes(r - 1)[-2] == 1


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 300, 300), "at least 320 pixels"),
    ((1, 3, 352, 352), "input must be 320x320"),
    ((1, 3, 320, 352), "input must be 320x320"),
    ((1, 1, 320, 320), "3 channels"),
])
def test_forward_rejects_inputs_of_the_wrong_size(ssdlite, shape, match):
    with pytest.raises(ValueError, match=match):
        ssdlite(torch.zeros(shape))


def test_is_an_ssd():
    with pytest.raises(TypeError, match="model must be an mbv2.detection.SSD"):
        ssd_cost_table(MobileNetV2())
    assert isinstance(build_ssd(), SSD)


def test_variants_for_the_table_5_search():
    literal = build_ssd(separable_extras=False)
    assert literal.separable and not literal.separable_extras
    assert literal.extras[0].conv.conv.groups == 1 and literal.box_predictors[0].depthwise is not None
    six = build_ssd(reduce_lowest=False).eval()
    assert six.anchors_per_location == (6,) * 6
    boxes, _ = six(torch.randn(1, 3, 320, 320))
    assert boxes.shape[1] == len(six.anchors()) == (400 + 100 + 25 + 9 + 4 + 1) * 6
    assert anchor_specs(reduce_lowest=False)[0][0].scale == pytest.approx(0.2)
    with pytest.raises(TypeError, match="separable_extras must be True, False or None"):
        build_ssd(separable_extras=1)
    with pytest.raises(TypeError, match="reduce_lowest must be True or False"):
        build_ssd(reduce_lowest="no")


def test_the_cut_backbone_says_to_use_extract(ssdlite):
    with pytest.raises(RuntimeError, match="backbone without pool, classifier.*use extract"):
        ssdlite.backbone(torch.zeros(1, 3, 320, 320))
