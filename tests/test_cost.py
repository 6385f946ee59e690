import itertools

import pytest
import torch
import torchinfo
from torch import nn

from mbv2 import InvertedResidual, MobileNetV2
from mbv2.cost import (
    conv2d_madds,
    conv2d_params,
    conv_output_size,
    depthwise_separable_madds,
    inverted_residual_madds,
    inverted_residual_params,
)


def torchinfo_conv_counts(module, input_size):
    """Parameters and multiply-adds of the Conv2d layers alone, as torchinfo counts them."""
    stats = torchinfo.summary(module, input_size=input_size, verbose=0)
    convs = [layer for layer in stats.summary_list if layer.class_name == "Conv2d"]
    return sum(layer.num_params for layer in convs), sum(layer.macs for layer in convs)


SWEEP = [
    (c_in, c_out, k, depthwise, stride)
    for c_in, c_out in [(3, 16), (16, 16), (24, 144), (96, 96)]
    for k, depthwise, stride in itertools.product((1, 3, 5), (False, True), (1, 2))
    if not depthwise or c_in == c_out
]


@pytest.mark.parametrize("c_in, c_out, k, depthwise, stride", SWEEP)
def test_conv_counts_agree_with_torchinfo(c_in, c_out, k, depthwise, stride):
    groups = c_in if depthwise else 1
    size = 15
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    params, madds = torchinfo_conv_counts(conv, (1, c_in, size, size))
    out = conv_output_size(size, stride, k)
    assert conv(torch.zeros(1, c_in, size, size)).shape[-1] == out
    assert conv2d_params(c_in, c_out, k, groups) == params
    assert conv2d_madds(c_in, c_out, k, out, out, groups) == madds


def test_conv_counts_match_the_paper_formula_and_the_worked_example():
    h, w, d_i, d_j, k = 7, 5, 32, 64, 3
    assert conv2d_madds(d_i, d_j, k, h, w) == h * w * d_i * d_j * k * k
    assert conv2d_madds(d_i, d_i, k, h, w, groups=d_i) == h * w * d_i * k * k
    # A 5x5 conv from 3 to 16 channels: 1,200 weights; separable: 75 + 48.
    assert conv2d_params(3, 16, 5) == 1200
    assert conv2d_params(3, 3, 5, groups=3) + conv2d_params(3, 16, 1) == 75 + 48
    assert conv2d_params(3, 16, 5, bias=True) == 1216


@pytest.mark.parametrize("d_i, d_j, k, stride", [(32, 64, 3, 1), (64, 128, 3, 2), (3, 16, 5, 1)])
def test_depthwise_separable_is_equation_1_and_matches_torchinfo(d_i, d_j, k, stride):
    size = 16
    unit = nn.Sequential(
        nn.Conv2d(d_i, d_i, k, stride, k // 2, groups=d_i, bias=False),
        nn.Conv2d(d_i, d_j, 1, bias=False),
    )
    _, madds = torchinfo_conv_counts(unit, (1, d_i, size, size))
    out = conv_output_size(size, stride, k)
    assert depthwise_separable_madds(d_i, d_j, k, out, out) == madds == out * out * d_i * (k * k + d_j)
    ratio = conv2d_madds(d_i, d_j, k, out, out) / depthwise_separable_madds(d_i, d_j, k, out, out)
    assert ratio == pytest.approx(k * k * d_j / (k * k + d_j))


@pytest.mark.parametrize("d_in, d_out, t, size, stride", [
    (16, 16, 6, 14, 1), (24, 32, 6, 28, 2), (32, 16, 1, 112, 1), (64, 96, 4, 15, 2), (8, 8, 1, 9, 2),
])
def test_inverted_residual_counts_match_torchinfo(d_in, d_out, t, size, stride):
    block = InvertedResidual(d_in, d_out, stride, t)
    params, madds = torchinfo_conv_counts(block, (1, d_in, size, size))
    assert inverted_residual_madds(d_in, d_out, t, size, size, stride) == madds
    assert inverted_residual_params(d_in, d_out, t, batch_norm=False) == params
    assert inverted_residual_params(d_in, d_out, t) == sum(p.numel() for p in block.parameters())


def test_inverted_residual_stride_1_is_the_papers_formula():
    h, w, d1, d2, t, k = 14, 14, 64, 96, 6, 3
    assert inverted_residual_madds(d1, d2, t, h, w) == h * w * d1 * t * (d1 + k * k + d2)


def test_every_block_of_the_network():
    model = MobileNetV2()
    size = 112
    for block in model.blocks():
        args = (block.in_channels, block.out_channels, block.expand_ratio)
        params, madds = torchinfo_conv_counts(block, (1, block.in_channels, size, size))
        assert inverted_residual_madds(*args, size, size, block.stride) == madds
        assert inverted_residual_params(*args, batch_norm=False) == params
        size = conv_output_size(size, block.stride)


@pytest.mark.parametrize("call, match", [
    (lambda: conv2d_params(0, 4, 3), "in_channels must be an integer >= 1"),
    (lambda: conv2d_params(4, 6, 3, groups=4), "groups must divide"),
    (lambda: conv2d_madds(4, 4, 3, 0, 4), "out_height must be an integer >= 1"),
    (lambda: depthwise_separable_madds(4, 4, 0, 4, 4), "kernel_size must be an integer >= 1"),
    (lambda: inverted_residual_madds(4, 4, 0, 4, 4), "expand_ratio must be a finite number > 0"),
    (lambda: inverted_residual_params(4, 4, -0.5), "expand_ratio must be a finite number > 0"),
    (lambda: inverted_residual_madds(4, 4, 6, 4, 4, stride=3), "stride must be one of 1, 2"),
    (lambda: inverted_residual_params(4, -1, 6), "out_channels must be an integer >= 1"),
    (lambda: conv_output_size(8, 0), "stride must be an integer >= 1"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_chain_rows_count_dilated_and_biased_convolutions_like_torchinfo():
    from mbv2 import ConvBNAct
    from mbv2.cost import chain_rows

    chain = nn.Sequential(
        ConvBNAct(8, 8, 3, groups=8, dilation=2), ConvBNAct(8, 16, 3, stride=2), nn.Conv2d(16, 5, 1)
    )
    rows, side = chain_rows("chain", chain, 15)
    assert [r.name for r in rows] == ["chain.0", "chain.1", "chain.2"] and side == 8
    params, madds = torchinfo_conv_counts(chain, (1, 8, 15, 15))
    assert sum(r.madds for r in rows) == madds - 5 * 8 * 8  # torchinfo adds the bias per output
    assert sum(r.params for r in rows) == sum(p.numel() for p in chain.parameters())
    with pytest.raises(TypeError, match="chain of ConvBNAct and Conv2d"):
        chain_rows("x", nn.Sequential(nn.ReLU()), 4)


def test_group_totals():
    from mbv2.cost import CostRow, group_totals

    rows = [CostRow("a.0", (1,), 1, 10), CostRow("b.0.x", (1,), 2, 20), CostRow("a.1", (1,), 3, 30)]
    assert group_totals(rows) == {"a": (4, 40), "b": (2, 20)}
    assert list(group_totals(rows, depth=2)) == ["a.0", "b.0", "a.1"]


# --- t < 1 (Section 3.4) and the shortcut placements (Figure 6b) ---------------------------

@pytest.mark.parametrize("d_in, d_out, t, size, stride", [
    (16, 16, 0.5, 14, 1), (24, 32, 0.25, 28, 2), (3, 8, 0.2, 9, 1), (64, 64, 0.75, 7, 1), (32, 24, 1.5, 8, 2),
])
def test_inverted_residual_counts_below_t_1_match_torchinfo(d_in, d_out, t, size, stride):
    block = InvertedResidual(d_in, d_out, stride, t)
    params, madds = torchinfo_conv_counts(block, (1, d_in, size, size))
    hidden = max(1, round(d_in * t))
    assert block.hidden_channels == hidden
    assert inverted_residual_madds(d_in, d_out, t, size, size, stride) == madds
    assert inverted_residual_params(d_in, d_out, t, batch_norm=False) == params
    assert inverted_residual_params(d_in, d_out, t) == sum(p.numel() for p in block.parameters())
    if stride == 1:  # the paper's formula holds for t < 1 too, with t d' = the hidden width
        assert madds == size * size * hidden * (d_in + 9 + d_out)


def _stages(t):
    from mbv2 import PAPER_TABLE_2, StageSpec

    return [StageSpec(row.t if row.t == 1 else t, row.c, row.n, row.s) for row in PAPER_TABLE_2]


@pytest.mark.parametrize("shortcut, t, width", [
    ("bottleneck", 6, 1.0), ("expansion", 6, 1.0), ("none", 6, 1.0),
    ("bottleneck", 0.5, 0.35), ("expansion", 0.5, 1.0), ("none", 0.25, 0.5), ("expansion", 10, 0.35),
])
def test_cost_table_agrees_with_torchinfo_for_every_shortcut_and_t(shortcut, t, width):
    from mbv2.cost import cost_table, count_madds, count_params

    model = MobileNetV2(num_classes=10, width_mult=width, stages=_stages(t), shortcut=shortcut)
    for resolution in (32, 96):
        stats = torchinfo.summary(model, input_size=(1, 3, resolution, resolution), verbose=0)
        bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert count_params(model) == stats.total_params == sum(p.numel() for p in model.parameters())
        # torchinfo also counts batch norm's scale and shift and the classifier's bias as
        # multiply-adds; without them the counts agree exactly. Shortcuts add nothing.
        assert stats.total_mult_adds == count_madds(model, resolution) + 2 * bn + 10
        rows = cost_table(model, resolution)
        assert [r.name for r in rows if r.name.startswith("stages.")] == [
            f"stages.{s}.{b}" for s, stage in enumerate(model.stages) for b in range(len(stage))]
    paper = MobileNetV2(num_classes=10, width_mult=width, stages=_stages(t))
    assert count_madds(model, 32) == count_madds(paper, 32) and count_params(model) == count_params(paper)
