"""Output stride by atrous convolution (Section 6.3), and the named feature maps of MobileNetV2."""

import math

import pytest
import torch
import torchinfo
from torch import nn

import mbv2
from mbv2 import ConvBNAct, InvertedResidual, MobileNetV2
from mbv2.cost import cost_table, count_madds, count_params
from mbv2.model import OUTPUT_STRIDES, atrous_schedule


def block_schedule(model):
    return [(block.stride, block.dilation) for block in model.blocks()]


def test_schedule_follows_the_reference_rule_for_table_2():
    # layer_2 ... layer_18: the strides of Table 2's blocks.
    strides = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert block_schedule(MobileNetV2()) == [(s, 1) for s in strides]
    # OS 16: layer_15 (index 13) loses its stride at rate 1; layer_16-18 get rate 2.
    assert block_schedule(MobileNetV2(output_stride=16)) == (
        [(s, 1) for s in strides[:13]] + [(1, 1)] + [(1, 2)] * 3
    )
    # OS 8: layer_8 (index 6) loses its stride at rate 1; layer_9-14 rate 2;
    # layer_15 loses its stride at the rate before it, 2; layer_16-18 rate 4.
    assert block_schedule(MobileNetV2(output_stride=8)) == (
        [(s, 1) for s in strides[:6]] + [(1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3
    )
    # The stem is never affected, and the rule works on any list of strides.
    assert atrous_schedule([2, 2, 2, 2], 4) == [(2, 1), (2, 1), (1, 1), (1, 2)]
    assert atrous_schedule([2, 1, 2], 32) == [(2, 1), (1, 1), (2, 1)]


def test_dilation_goes_to_the_depthwise_conv_only():
    model = MobileNetV2(output_stride=8)
    for block in model.blocks():
        assert block.depthwise.conv.dilation == (block.dilation,) * 2
        assert block.depthwise.conv.padding == (block.dilation,) * 2
        assert block.projection.conv.dilation == (1, 1)
    assert model.stem.conv.dilation == (1, 1) and model.head.conv.dilation == (1, 1)


def test_default_is_exactly_the_undilated_model():
    torch.manual_seed(3)
    default = MobileNetV2().eval()
    torch.manual_seed(3)
    explicit = MobileNetV2(output_stride=32).eval()
    assert repr(default) == repr(explicit) and "dilation" not in repr(default)
    assert all(
        m.dilation == (1, 1) and m.padding == (m.kernel_size[0] // 2,) * 2
        for m in default.modules() if isinstance(m, nn.Conv2d)
    )
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(default(x), explicit(x))
    assert default.min_input_size == 32 and default.output_stride == 32
    # ... and still torchvision's network, weight for weight.
    difference, _, _ = mbv2.torchvision_difference(1.0, torch.randn(1, 3, 64, 64))
    assert difference < 1e-4


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_every_output_stride_has_the_same_modules_and_parameters(output_stride):
    reference = MobileNetV2().state_dict()
    model = MobileNetV2(output_stride=output_stride)
    state = model.state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    model.load_state_dict(reference)  # strict
    assert count_params(model) == count_params(MobileNetV2())


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("resolution", [33, 161, 320])
def test_map_sides_are_the_input_side_over_the_output_stride(output_stride, resolution):
    model = MobileNetV2(output_stride=output_stride).eval()
    maps = model.extract(torch.randn(1, 3, resolution, resolution),
                         ["layer_15/expansion_output", "layer_18", "layer_19"])
    assert maps["layer_15/expansion_output"].shape[1:] == (576, *[math.ceil(resolution / min(output_stride, 16))] * 2)
    side = math.ceil(resolution / output_stride)
    assert maps["layer_18"].shape[1:] == (320, side, side)
    assert maps["layer_19"].shape[1:] == (1280, side, side)
    assert model(torch.randn(1, 3, resolution, resolution)).shape == (1, 1000)


@pytest.fixture(scope="module")
def pretrained():
    return mbv2.load_pretrained()


def test_pretrained_weights_load_and_classify_as_before(pretrained):
    reference = mbv2.load_pretrained()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(pretrained(x), reference(x))
    dense = MobileNetV2(output_stride=16)
    dense.load_state_dict(pretrained.state_dict())
    assert dense.eval()(x).shape == (1, 1000)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_the_dense_map_contains_the_coarse_one(pretrained, output_stride):
    # The reference rule keeps the taps where they were: on an input whose sides stay
    # even until the last stride, every (32 / os)-th position of the dense map is the
    # undilated map, exactly up to rounding. (A layer that lost its stride getting the
    # *new* rate, as in torchvision's MobileNetV3, would break this.)
    dense = MobileNetV2(output_stride=output_stride)
    dense.load_state_dict(pretrained.state_dict())
    dense.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        coarse = pretrained.extract(x, ["layer_19"])["layer_19"]
        fine = dense.extract(x, ["layer_19"])["layer_19"]
    step = 32 // output_stride
    assert fine.shape[-1] == 7 * step
    assert torch.allclose(fine[..., ::step, ::step], coarse, atol=1e-4)
    assert not torch.allclose(fine[..., 1::step, 1::step], coarse, atol=1e-2)


def test_torchvision_style_rate_breaks_the_correspondence(pretrained):
    # The same check with the alternative rule (layer_15 already at rate 2) fails.
    dense = MobileNetV2(output_stride=16)
    dense.load_state_dict(pretrained.state_dict())
    conv = dense.stages[5][0].depthwise.conv
    conv.dilation, conv.padding = (2, 2), (2, 2)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        coarse = pretrained.extract(x, ["layer_19"])["layer_19"]
        fine = dense.eval().extract(x, ["layer_19"])["layer_19"]
    assert not torch.allclose(fine[..., ::2, ::2], coarse, atol=1e-2)


def test_extract_names_and_order():
    model = MobileNetV2().eval()
    names = model.endpoints()
    assert list(names)[:3] == ["layer_1", "layer_2/depthwise_output", "layer_2"]
    assert "layer_2/expansion_output" not in names  # t = 1: no expansion layer
    assert names["layer_15/expansion_output"] == "stages.5.0.expansion"
    assert names["layer_18"] == "stages.6.0" and names["layer_19"] == "head"
    x = torch.randn(1, 3, 64, 64)
    out = model.extract(x, ["layer_19", "layer_1"])
    assert list(out) == ["layer_19", "layer_1"]
    assert out["layer_1"].shape == (1, 32, 32, 32)
    full = nn.Sequential(model.stem, model.stages, model.head)
    with torch.no_grad():
        assert torch.equal(model.extract(x, ["layer_19"])["layer_19"], full(x))


def test_extract_stops_at_the_deepest_map_and_keeps_gradients():
    model = MobileNetV2()
    calls = []
    model.head.register_forward_hook(lambda *args: calls.append("head"))
    model.stages[6].register_forward_hook(lambda *args: calls.append("layer_18"))
    x = torch.randn(2, 3, 64, 64)
    out = model.extract(x, ["layer_15/expansion_output"])
    assert calls == []
    out["layer_15/expansion_output"].sum().backward()
    assert model.stem.conv.weight.grad is not None


@pytest.mark.parametrize("names, match", [
    ([], "names must be a non-empty list"),
    ("layer_19", "names must be a non-empty list"),
    (["layer_20"], "names must be endpoints of this model"),
    (["layer_2/expansion_output"], "names must be endpoints of this model"),
])
def test_extract_rejects_bad_names(names, match):
    with pytest.raises(ValueError, match=match):
        MobileNetV2().extract(torch.randn(1, 3, 32, 32), names)


@pytest.mark.parametrize("output_stride", [4, 12, 64, 1, "16", 16.0 + 0.5, True, None])
def test_output_stride_must_be_8_16_or_32(output_stride):
    with pytest.raises(ValueError, match="output_stride must be one of 32, 16, 8"):
        MobileNetV2(output_stride=output_stride)


@pytest.mark.parametrize("output_stride, ok, too_small", [(16, 16, 15), (8, 8, 7), (32, 32, 31)])
def test_smallest_input_is_the_output_stride(output_stride, ok, too_small):
    model = MobileNetV2(output_stride=output_stride).eval()
    assert model.min_input_size == output_stride
    model(torch.randn(1, 3, ok, ok))
    with pytest.raises(ValueError, match=f"at least {ok} pixels"):
        model(torch.randn(1, 3, too_small, too_small))
    with pytest.raises(ValueError, match=f"at least {ok} pixels"):
        model.extract(torch.randn(1, 3, too_small, too_small), ["layer_1"])


@pytest.mark.parametrize("output_stride", [16, 8])
def test_counts_of_dilated_models_agree_with_torchinfo(output_stride):
    model = MobileNetV2(output_stride=output_stride).eval()
    resolution = 96
    stats = torchinfo.summary(model, input_size=(1, 3, resolution, resolution), verbose=0)
    layers = [s for s in stats.summary_list if s.class_name in ("Conv2d", "Linear")]
    assert count_madds(model, resolution) == sum(s.macs for s in layers) - 1000
    assert count_params(model) == stats.total_params
    assert cost_table(model, resolution)[-3].output_shape == (1280, 96 // output_stride, 96 // output_stride)
    # Dilation costs nothing per output value; the saving of the stride is what is lost.
    assert count_madds(model, resolution) > count_madds(MobileNetV2(), resolution)


def test_dilated_layers_keep_the_size_and_take_the_rate():
    conv = ConvBNAct(8, 8, 3, groups=8, dilation=3)
    assert conv.conv.dilation == (3, 3) and conv.conv.padding == (3, 3)
    assert conv(torch.randn(1, 8, 11, 11)).shape == (1, 8, 11, 11)
    block = InvertedResidual(16, 16, 1, 6, dilation=2)
    assert block.use_shortcut and "dilation=2" in repr(block)
    assert block(torch.randn(1, 16, 9, 9)).shape == (1, 16, 9, 9)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
            ConvBNAct(8, 8, 3, dilation=bad)
        with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
            InvertedResidual(8, 8, 1, 6, dilation=bad)


def test_table_2_rows_of_a_dilated_model_show_the_strides_it_runs():
    from mbv2 import table_2_rows

    rows = table_2_rows(MobileNetV2(output_stride=16), 224)
    assert [row.s for row in rows[1:8]] == [1, 2, 2, 2, 1, 1, 1]
    assert rows[8].input_shape == (320, 14, 14) and rows[9].operator == "avgpool 14×14"
    assert table_2_rows(MobileNetV2(), 224) == table_2_rows(MobileNetV2(output_stride=32), 224)
