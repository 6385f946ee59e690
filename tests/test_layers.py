import pytest
import torch
from torch import nn

from mbv2 import ConvBNAct, DepthwiseSeparableConv, InvertedResidual


def conv_params(c_in, c_out, k, groups=1):
    return c_out * (c_in // groups) * k * k


def test_conv_bn_act_layout_and_same_padding():
    layer = ConvBNAct(8, 16, kernel_size=3, stride=2)
    assert [name for name, _ in layer.named_children()] == ["conv", "bn", "act"]
    assert layer.conv.bias is None
    assert isinstance(layer.act, nn.ReLU6)
    assert layer(torch.randn(2, 8, 15, 15)).shape == (2, 16, 8, 8)
    linear = ConvBNAct(8, 16, kernel_size=1, activation=None)
    assert [name for name, _ in linear.named_children()] == ["conv", "bn"]


def test_conv_bn_act_takes_the_activation_by_keyword_only():
    # So that a call shows which activation a layer gets, and a positional argument
    # meant for another parameter cannot silently become the activation.
    with pytest.raises(TypeError):
        ConvBNAct(8, 16, 1, 1, 1, nn.ReLU)
    assert isinstance(ConvBNAct(8, 16, 1, activation=nn.ReLU).act, nn.ReLU)


def test_inverted_residual_has_relu6_after_expansion_and_depthwise_only():
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6)
    assert isinstance(block.expansion.act, nn.ReLU6)
    assert isinstance(block.depthwise.act, nn.ReLU6)
    assert not hasattr(block.projection, "act")
    t1 = InvertedResidual(32, 16, stride=1, expand_ratio=1)
    assert isinstance(t1.depthwise.act, nn.ReLU6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0, out_channels=4), "in_channels must be an integer >= 1"),
    (dict(in_channels=4, out_channels=4, kernel_size=2), "kernel_size must be odd"),
    (dict(in_channels=4, out_channels=6, groups=4), "groups must divide"),
    (dict(in_channels=4, out_channels=4, stride=0), "stride must be an integer >= 1"),
])
def test_conv_bn_act_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvBNAct(**kwargs)


def test_depthwise_separable_conv_is_depthwise_then_pointwise():
    unit = DepthwiseSeparableConv(32, 64, stride=2)
    assert unit.depthwise.conv.groups == 32
    assert unit.depthwise.conv.weight.shape == (32, 1, 3, 3)
    assert unit.pointwise.conv.weight.shape == (64, 32, 1, 1)
    assert isinstance(unit.depthwise.act, nn.ReLU) and isinstance(unit.pointwise.act, nn.ReLU)
    conv_weights = conv_params(32, 32, 3, groups=32) + conv_params(32, 64, 1)
    bn_weights = 2 * 32 + 2 * 64
    assert sum(p.numel() for p in unit.parameters()) == conv_weights + bn_weights
    assert unit(torch.randn(1, 32, 16, 16)).shape == (1, 64, 8, 8)


def test_depthwise_separable_conv_rejects_stride_3():
    with pytest.raises(ValueError, match="stride must be one of 1, 2"):
        DepthwiseSeparableConv(8, 8, stride=3)


def test_expansion_is_absent_exactly_when_t_is_1():
    block = InvertedResidual(32, 16, stride=1, expand_ratio=1)
    assert isinstance(block.expansion, nn.Identity)
    assert block.depthwise.conv.weight.shape == (32, 1, 3, 3)
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6)
    assert block.expansion.conv.weight.shape == (96, 16, 1, 1)
    assert block.depthwise.conv.weight.shape == (96, 1, 3, 3)
    assert block.projection.conv.weight.shape == (24, 96, 1, 1)


def test_parameter_count_matches_table_1():
    k, t, k_out = 24, 6, 32
    block = InvertedResidual(k, k_out, stride=2, expand_ratio=t)
    hidden = t * k
    expected = (
        conv_params(k, hidden, 1) + 2 * hidden
        + conv_params(hidden, hidden, 3, groups=hidden) + 2 * hidden
        + conv_params(hidden, k_out, 1) + 2 * k_out
    )
    assert sum(p.numel() for p in block.parameters()) == expected


@pytest.mark.parametrize("in_c, out_c, stride, shortcut", [
    (24, 24, 1, True), (24, 32, 1, False), (24, 24, 2, False), (16, 24, 2, False),
])
def test_shortcut_exactly_when_stride_1_and_same_width(in_c, out_c, stride, shortcut):
    block = InvertedResidual(in_c, out_c, stride=stride, expand_ratio=6).eval()
    assert block.use_shortcut is shortcut
    # With the projection's batch norm set to output zeros, the residual branch is zero,
    # so the block returns its input if and only if there is a shortcut.
    nn.init.zeros_(block.projection.bn.weight)
    nn.init.zeros_(block.projection.bn.bias)
    x = torch.randn(2, in_c, 8, 8)
    out = block(x)
    assert out.shape == (2, out_c, 8 // stride, 8 // stride)
    if shortcut:
        assert torch.equal(out, x)
    else:
        assert torch.count_nonzero(out) == 0


def test_projection_is_linear_by_default_and_can_take_an_activation():
    x = torch.randn(4, 16, 8, 8)
    linear = InvertedResidual(16, 24, stride=1, expand_ratio=6).eval()
    assert not hasattr(linear.projection, "act")
    assert (linear(x) < 0).any()  # a linear projection outputs negative values too
    nonlinear = InvertedResidual(16, 24, stride=1, expand_ratio=6, projection_activation=nn.ReLU6)
    nonlinear.eval()
    assert isinstance(nonlinear.projection.act, nn.ReLU6)
    out = nonlinear(x)
    assert out.min() >= 0 and out.max() <= 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=3), "stride must be one of 1, 2, got 3"),
    (dict(stride=True), "stride must be one of 1, 2, got True"),
    (dict(expand_ratio=0), "expand_ratio must be a finite number > 0, got 0"),
    (dict(expand_ratio=-0.5), "expand_ratio must be a finite number > 0"),
    (dict(expand_ratio=float("nan")), "expand_ratio must be a finite number > 0"),
    (dict(shortcut="identity"), "shortcut must be one of 'bottleneck', 'expansion', 'none'"),
    (dict(in_channels=0), "in_channels must be an integer >= 1, got 0"),
    (dict(out_channels=2.5), "out_channels must be an integer >= 1, got 2.5"),
])
def test_inverted_residual_rejects_bad_arguments(kwargs, match):
    arguments = dict(in_channels=16, out_channels=16, stride=1, expand_ratio=6) | kwargs
    with pytest.raises(ValueError, match=match):
        InvertedResidual(**arguments)


# --- t < 1 (Section 3.4) and the shortcut placements (Section 6.4, Figure 6b) -------------

from mbv2.layers import SHORTCUTS, expansion_links_possible, hidden_channels, link_expansion_shortcuts


@pytest.mark.parametrize("k, t, hidden", [(16, 0.5, 8), (24, 0.25, 6), (3, 0.2, 1), (5, 0.01, 1), (16, 1, 16)])
def test_t_below_1_reduces_the_channels(k, t, hidden):
    block = InvertedResidual(k, k, stride=1, expand_ratio=t)
    assert block.hidden_channels == hidden_channels(k, t) == hidden
    if t == 1:
        assert isinstance(block.expansion, nn.Identity)
    else:
        assert block.expansion.conv.weight.shape == (hidden, k, 1, 1)
    assert block.depthwise.conv.weight.shape == (hidden, 1, 3, 3)
    assert block.projection.conv.weight.shape == (k, hidden, 1, 1)
    expected = (conv_params(k, hidden, 1) + 2 * hidden if t != 1 else 0) + conv_params(
        hidden, hidden, 3, groups=hidden) + 2 * hidden + conv_params(hidden, k, 1) + 2 * k
    assert sum(p.numel() for p in block.parameters()) == expected
    # With the default shortcut this is the classic residual bottleneck: wide ends, narrow inside.
    assert block.use_shortcut
    assert block(torch.randn(2, k, 6, 6)).shape == (2, k, 6, 6)


def linked_pair(t=6, stride=2, out=24, shortcut="expansion"):
    torch.manual_seed(0)
    first = InvertedResidual(16, 16, stride=1, expand_ratio=t, shortcut=shortcut)
    second = InvertedResidual(16, out, stride=stride, expand_ratio=t, shortcut=shortcut)
    for block in (first, second):  # non-trivial batch norm, in eval mode
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.normal_(bn.bias, 0.0, 0.5)
    return first.eval(), second.eval()


def test_shortcut_between_expansions_adds_the_expanded_tensors():
    first, second = linked_pair()
    assert link_expansion_shortcuts([first, second]) == 1
    assert first.passes_expansion and second.receives_expansion
    assert not first.use_shortcut and not second.use_shortcut
    x = torch.randn(2, 16, 8, 8)
    # By hand: E1 enters the first depthwise conv; the second block's depthwise conv gets
    # its own expansion of the first block's output plus E1 (after ReLU6, no activation after).
    e1 = first.expansion(x)
    x1 = first.projection(first.depthwise(e1))
    e2 = second.expansion(x1) + e1
    expected = second.projection(second.depthwise(e2))
    assert torch.allclose(nn.Sequential(first, second)(x), expected, atol=1e-6)
    # The first block alone returns (output, E1).
    out, passed = first(x)
    assert torch.allclose(out, x1) and torch.allclose(passed, e1)
    # Linking again is idempotent; a lone, unlinked block has no shortcut at all.
    assert link_expansion_shortcuts([first, second]) == 1
    link_expansion_shortcuts([first])
    assert not first.passes_expansion and torch.allclose(first(x), x1)


@pytest.mark.parametrize("first_kwargs, second_kwargs, linked", [
    (dict(), dict(), True),                                      # stride 1, same width
    (dict(stride=2), dict(), False),                             # the spatial sizes differ
    (dict(), dict(expand_ratio=4), False),                       # 96 vs 64 expanded channels
    (dict(out_channels=24), dict(in_channels=24, expand_ratio=4), True),  # 96 = 96: same shape
    (dict(shortcut="bottleneck"), dict(), False),
    (dict(), dict(shortcut="none"), False),
])
def test_expansion_links_exactly_where_the_expanded_tensors_have_the_same_shape(
        first_kwargs, second_kwargs, linked):
    a = dict(in_channels=16, out_channels=16, stride=1, expand_ratio=6, shortcut="expansion") | first_kwargs
    b = dict(in_channels=a["out_channels"], out_channels=32, stride=1, expand_ratio=6,
             shortcut="expansion") | second_kwargs
    first, second = InvertedResidual(**a), InvertedResidual(**b)
    assert expansion_links_possible(first, second) is linked
    assert link_expansion_shortcuts([first, second]) == int(linked)
    x = torch.randn(1, 16, 8, 8)
    out = nn.Sequential(first, second)(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 32, 8 // a["stride"], 8 // a["stride"])


def test_with_t_1_the_two_placements_compute_the_same_function():
    # E_i is then the block's input, so adding E_i to the next block's input is the paper's shortcut.
    bottleneck = nn.Sequential(*linked_pair(t=1, stride=1, out=16, shortcut="bottleneck"))
    expansion = nn.Sequential(*linked_pair(t=1, stride=1, out=16, shortcut="expansion"))
    expansion.load_state_dict(bottleneck.state_dict())
    assert link_expansion_shortcuts(list(expansion)) == 1
    x = torch.randn(2, 16, 8, 8)
    # The last block of the "bottleneck" chain has its own shortcut, which has no partner
    # block in the "expansion" chain; compare the chains without it.
    bottleneck[1].use_shortcut = False
    assert torch.allclose(bottleneck(x), expansion(x), atol=1e-6)


def test_no_shortcut_and_same_parameters_for_every_placement():
    counts, keys = set(), set()
    for shortcut in SHORTCUTS:
        block = InvertedResidual(16, 16, stride=1, expand_ratio=6, shortcut=shortcut).eval()
        counts.add(sum(p.numel() for p in block.parameters()))
        keys.add(tuple(block.state_dict()))
        assert block.use_shortcut is (shortcut == "bottleneck")
        nn.init.zeros_(block.projection.bn.weight)
        nn.init.zeros_(block.projection.bn.bias)
        out = block(torch.randn(2, 16, 8, 8))
        assert bool(torch.count_nonzero(out) == 0) is (shortcut != "bottleneck")
    assert len(counts) == 1 and len(keys) == 1  # an identity shortcut has no weights


def test_default_block_is_todays_block():
    torch.manual_seed(0)
    default = InvertedResidual(16, 16, stride=1, expand_ratio=6).eval()
    explicit = InvertedResidual(16, 16, stride=1, expand_ratio=6, shortcut="bottleneck").eval()
    explicit.load_state_dict(default.state_dict())
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(default(x), explicit(x))
    assert torch.equal(default(x), x + default.projection(default.depthwise(default.expansion(x))))
    assert "shortcut='" not in repr(default) and "shortcut='none'" in repr(
        InvertedResidual(16, 16, 1, 6, shortcut="none"))
