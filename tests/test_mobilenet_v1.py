import pytest
import torch
import torchinfo

from mbv2 import DepthwiseSeparableConv
from mbv2.cost import conv2d_params
from mbv2.mobilenet_v1 import MOBILENET_V1_TABLE, MobileNetV1


def test_thirteen_units_with_the_channels_of_table_1():
    model = MobileNetV1()
    assert len(model.units) == 13
    assert all(isinstance(unit, DepthwiseSeparableConv) for unit in model.units)
    assert [u.pointwise.conv.out_channels for u in model.units] == [64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    # Five stride-2 layers in all (the stem and four units): 224 -> 7.
    assert sum(u.depthwise.conv.stride[0] == 2 for u in model.units) == 4


def test_parameter_count_from_the_layers_by_hand():
    convs = conv2d_params(3, 32, 3) + 2 * 32
    channels = 32
    for c, _ in MOBILENET_V1_TABLE:
        convs += conv2d_params(channels, channels, 3, groups=channels) + 2 * channels
        convs += conv2d_params(channels, c, 1) + 2 * c
        channels = c
    expected = convs + 1024 * 1000 + 1000
    assert sum(p.numel() for p in MobileNetV1().parameters()) == expected


def test_counts_agree_with_the_published_figures():
    stats = torchinfo.summary(MobileNetV1(), input_size=(1, 3, 224, 224), verbose=0)
    # 4,231,976 parameters and 568.76M mult-adds by torchinfo (the MobileNetV1 walkthrough
    # article); the paper gives 4.2M and 569M.
    assert stats.total_params == 4_231_976
    assert stats.total_mult_adds == pytest.approx(568.76e6, abs=0.01e6)


def test_forward_and_input_checks():
    model = MobileNetV1(num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 32 pixels"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        MobileNetV1(num_classes=0)
