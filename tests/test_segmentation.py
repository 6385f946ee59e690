"""Mobile DeepLabv3 (Section 6.3, Table 7): structure, shapes, counts."""

import pytest
import torch
import torchinfo
from torch import nn

import mbv2
from mbv2 import MobileNetV2
from mbv2.cost import bilinear_madds, deeplab_cost_table, space_to_batch_side
from mbv2.segmentation import DeepLabV3, build_deeplabv3


def params(model):
    return sum(p.numel() for p in model.parameters())


def madds(model, resolution, **kwargs):
    return sum(r.madds for r in deeplab_cost_table(model, resolution, **kwargs))


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("aspp", [False, True])
def test_output_is_the_input_size_and_the_map_is_denser(output_stride, aspp):
    model = build_deeplabv3(aspp=aspp, output_stride=output_stride).eval()
    assert isinstance(model.backbone, MobileNetV2) and model.backbone.output_stride == output_stride
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        assert model(x).shape == (1, 21, 97, 130)
        fmap = model.feature_map(x)
    assert fmap.shape == (1, 320, -(-97 // output_stride), -(-130 // output_stride))
    assert len(model.aspp) == (3 if aspp else 0)
    if aspp:
        rates = [branch.conv.dilation[0] for branch in model.aspp]
        assert rates == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])


def test_mnet_v2_star_has_no_1x1_to_1280_and_features_layer_19_has():
    star = build_deeplabv3()
    assert star.backbone.head is None and star.backbone.classifier is None
    full = build_deeplabv3(features="layer_19").eval()
    assert full.branch_1x1.conv.in_channels == 1280
    assert params(full) - params(star) == 320 * 1280 + 2 * 1280 + 2 * (1280 - 320) * 256
    assert full(torch.randn(1, 3, 64, 64)).shape == (1, 21, 64, 64)


def test_separable_aspp():
    model = build_deeplabv3(aspp=True, separable_aspp=True).eval()
    branch = model.aspp[0]
    assert branch.depthwise.conv.groups == 320 and branch.depthwise.conv.dilation == (6, 6)
    assert branch.pointwise.conv.kernel_size == (1, 1)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 21, 64, 64)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(aspp=True), dict(aspp=True, output_stride=8), dict(aspp=True, separable_aspp=True),
    dict(features="layer_19", aspp=True),
])
def test_counts_agree_with_torchinfo(kwargs):
    model = build_deeplabv3(**kwargs).eval()
    resolution = 128
    stats = torchinfo.summary(model, input_size=(1, 3, resolution, resolution), verbose=0)
    rows = deeplab_cost_table(model, resolution)
    assert sum(r.params for r in rows) == stats.total_params == params(model)
    convs = [s for s in stats.summary_list if s.class_name == "Conv2d"]
    side = -(-resolution // model.output_stride)
    # torchinfo counts the classifier's bias once per output value; the paper does not.
    assert sum(r.madds for r in rows) == sum(s.macs for s in convs) - 21 * side * side
    for row in rows:
        if not row.name.startswith("backbone"):
            assert row.params == sum(p.numel() for p in model.get_submodule(row.name).parameters()), row.name


def test_table_7_parameters():
    # 2.11M without ASPP and 4.52M with it: the printed counts need *regular* 3x3 ASPP.
    assert params(build_deeplabv3()) == pytest.approx(2.11e6, abs=5e3)
    assert params(build_deeplabv3(aspp=True)) == pytest.approx(4.52e6, abs=5e3)
    assert params(build_deeplabv3(aspp=True, separable_aspp=True)) < 2.6e6


def test_table_7_multiply_adds_with_tensorflows_atrous_convolution():
    no_aspp, aspp = build_deeplabv3(), build_deeplabv3(aspp=True)
    assert madds(no_aspp, 513) == pytest.approx(2.75e9, rel=4e-3)
    assert madds(aspp, 513, space_to_batch=True) == pytest.approx(5.8e9, rel=1e-2)
    assert madds(aspp, 513) < 5.5e9  # counting only the kept outputs falls short
    scales = [0.5, 0.75, 1, 1.25, 1.5, 1.75]
    sizes = [int(512 * s) + 1 for s in scales]  # DeepLab's scaled 513-pixel crops
    for kwargs, printed in ((dict(), 152.6e9), (dict(aspp=True), 387e9)):
        model = build_deeplabv3(output_stride=8, **kwargs)
        total = 2 * sum(madds(model, r, space_to_batch=True) for r in sizes)
        assert total == pytest.approx(printed, rel=2e-3)


def test_space_to_batch_side():
    assert space_to_batch_side(33, 6) == 36 and space_to_batch_side(33, 1) == 33
    assert space_to_batch_side(65, 36) == 72 and space_to_batch_side(12, 12) == 12
    model = build_deeplabv3(aspp=True)
    plain = deeplab_cost_table(model, 513)
    padded = deeplab_cost_table(model, 513, space_to_batch=True)
    extra = {a.name: b.madds - a.madds for a, b in zip(plain, padded) if b.madds != a.madds}
    assert set(extra) == {"backbone.stages.5.1", "backbone.stages.5.2", "backbone.stages.6.0",
                          "aspp.0", "aspp.1", "aspp.2"}
    assert extra["aspp.0"] == 9 * 320 * 256 * (36 * 36 - 33 * 33)
    assert extra["backbone.stages.6.0"] == 960 * 9 * (34 * 34 - 33 * 33)


def test_bilinear_madds():
    assert bilinear_madds(21, 512, 512) == 4 * 21 * 512 * 512


def test_pretrained_backbone_at_output_stride_16():
    state = mbv2.load_pretrained().state_dict()
    model = build_deeplabv3(backbone_state_dict=state)
    assert torch.equal(model.backbone.stages[6][0].projection.conv.weight,
                       state["stages.6.0.projection.conv.weight"])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_stride=32), ValueError, "output_stride must be one of 16, 8"),
    (dict(output_stride=4), ValueError, "output_stride must be one of 16, 8"),
    (dict(num_classes=0), ValueError, "num_classes must be an integer >= 1"),
    (dict(num_classes=21.5), ValueError, "num_classes must be an integer >= 1"),
    (dict(aspp=1), TypeError, "aspp must be True or False"),
    (dict(separable_aspp="no"), TypeError, "separable_aspp must be True or False"),
    (dict(features="layer_15"), ValueError, "features must be one of 'layer_18', 'layer_19'"),
])
def test_build_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_deeplabv3(**kwargs)


@pytest.mark.parametrize("output_stride, side", [(16, 15), (8, 7)])
def test_input_smaller_than_the_output_stride_is_refused(output_stride, side):
    model = build_deeplabv3(output_stride=output_stride).eval()
    with pytest.raises(ValueError, match=f"at least {output_stride} pixels"):
        model(torch.randn(1, 3, side, side))
    with pytest.raises(ValueError, match=f"resolution must be at least {output_stride} pixels"):
        deeplab_cost_table(model, side)
    with pytest.raises(TypeError, match="DeepLabV3"):
        deeplab_cost_table(MobileNetV2(), 64)
    assert isinstance(model, DeepLabV3) and isinstance(model.classifier, nn.Conv2d)
