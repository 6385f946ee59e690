"""mbv2.activation_patterns: Figure 7's sign patterns, the bottleneck signs, the ReLU probe."""

import copy

import pytest
import scipy.stats
import torch
from torch import nn

import mbv2
from mbv2 import activation_patterns as A


def hand_built_block():
    """A 4 -> 24 -> 4 block whose expansion makes a known number of channels positive.

    Expanded channels 0-2 copy input channel 0, channels 3-23 copy its negative, the
    depthwise convolution passes them through; batch norm is left at its initial
    (identity) statistics. Where input channel 0 is positive, 3 of the 24 channels are
    positive (below Lemma 2's threshold of n = 4); where it is negative, 21 are.
    """
    block = mbv2.InvertedResidual(4, 4, stride=1, expand_ratio=6).eval()
    with torch.no_grad():
        weight = torch.zeros(24, 4, 1, 1)
        weight[:3, 0] = 1.0
        weight[3:, 0] = -1.0
        block.expansion.conv.weight.copy_(weight)
        # the depthwise convolution passes each channel through (centre tap 1)
        block.depthwise.conv.weight.zero_()
        block.depthwise.conv.weight[:, :, 1, 1] = 1.0
        # projection channel 0 sums the expanded channels (never negative), channel 1
        # is minus that sum (negative wherever a channel is positive, i.e. everywhere).
        projection = torch.randn(4, 24, 1, 1)
        projection[0] = 1.0
        projection[1] = -1.0
        block.projection.conv.weight.copy_(projection)
    return block


def hand_built_input():
    x = torch.randn(2, 4, 5, 6)
    x[:, 0, :, :3] = 1.0  # 3 positive channels
    x[:, 0, :, 3:] = -1.0  # 21 positive channels
    x[1, 0, 0, 0] = 10.0  # 3 positive channels, all three beyond the cap of 6
    return x


def test_counts_on_a_hand_built_block_are_exact():
    block, x = hand_built_block(), hand_built_input()
    result = A.activation_patterns(block, x)
    (pattern,) = result.expansion
    assert (pattern.layer, pattern.name, pattern.in_channels, pattern.channels) == (0, "expansion", 4, 24)
    expected = torch.where(x[:, 0] > 0, 3, 21)
    torch.testing.assert_close(pattern.positive, expected)
    saturated = torch.zeros(2, 5, 6, dtype=torch.long)
    saturated[1, 0, 0] = 3
    torch.testing.assert_close(pattern.saturated, saturated)
    assert pattern.threshold == pytest.approx(1 / 6)
    # the block's output is the model's output
    torch.testing.assert_close(result.output, block(x))

    (summary,) = A.summarize(result.expansion)
    assert summary.minimum == pytest.approx(3 / 24) and summary.maximum == pytest.approx(21 / 24)
    assert summary.mean == pytest.approx(12 / 24)  # half the pixels each way
    assert summary.min_positive == 3 and summary.pixels == 60
    assert summary.below == pytest.approx(0.5)  # the pixels with 3 < n = 4 positive channels
    assert summary.saturated == pytest.approx(3 / (60 * 24))

    (signs,) = result.projection
    assert signs.name == "projection" and signs.channels == 4
    assert signs.negative[0] == 0 and signs.negative[1] == 1


def test_a_pixel_with_exactly_n_positive_channels_is_not_below_the_threshold():
    block = hand_built_block()
    with torch.no_grad():
        block.expansion.conv.weight[3, 0] = 1.0  # now 4 channels copy input channel 0
    pattern = A.activation_patterns(block, torch.ones(1, 4, 2, 2)).expansion[0]
    assert pattern.positive.unique().tolist() == [4]
    assert A.summarize([pattern])[0].below == 0.0


def test_counts_match_the_captured_outputs_of_a_whole_network():
    model = mbv2.MobileNetV2().eval()
    x = torch.randn(2, 3, 64, 64)
    result = A.activation_patterns(model, x)
    blocks = model.blocks()
    # Table 2: block 0 has t = 1 and no expansion layer; the other 16 have one.
    assert [p.layer for p in result.expansion] == list(range(1, 17))
    assert [s.layer for s in result.projection] == list(range(17))
    names = [p.name for p in result.expansion] + [s.name for s in result.projection]
    output, captured = mbv2.capture(model, x, names)
    torch.testing.assert_close(result.output, output)
    for pattern in result.expansion:
        block = blocks[pattern.layer]
        assert (pattern.in_channels, pattern.channels) == (block.in_channels, block.hidden_channels)
        assert pattern.name.startswith("stages.") and pattern.name.endswith(".expansion")
        torch.testing.assert_close(pattern.positive, (captured[pattern.name] > 0).sum(dim=1))
    for signs in result.projection:
        expected = (captured[signs.name] < 0).double().mean(dim=(0, 2, 3))
        torch.testing.assert_close(signs.negative, expected)
        assert signs.negative_fraction == pytest.approx(float((captured[signs.name] < 0).double().mean()))


def test_batch_statistics_normalise_with_the_batch_and_leave_the_model_alone():
    torch.manual_seed(1)
    block = mbv2.InvertedResidual(8, 8, stride=1, expand_ratio=6)
    block.expansion.bn.running_mean.fill_(5.0)  # eval mode would make every channel negative
    before = copy.deepcopy(block.state_dict())
    x = torch.randn(3, 8, 6, 6) + 2.0
    pattern = A.activation_patterns(block, x, batch_statistics=True).expansion[0]
    # independent: batch norm by hand with the batch's mean and (biased) variance
    z = block.expansion.conv(x).detach()
    mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = ((z - mean) / torch.sqrt(var + block.expansion.bn.eps) > 0).sum(dim=1)
    torch.testing.assert_close(pattern.positive, expected)
    assert A.activation_patterns(block, x).expansion[0].positive.max() == 0
    for key, value in block.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert block.training  # the mode is restored


def test_a_random_sign_symmetric_network_has_half_its_channels_positive():
    """At initialisation each expanded channel is positive with probability 1/2, so the
    per-pixel count is close to Binomial(m, 1/2): mean 1/2, spread about 1/(2 sqrt(m))."""
    torch.manual_seed(0)
    model = mbv2.MobileNetV2()
    summaries = A.summarize(A.activation_patterns(
        model, torch.randn(4, 3, 96, 96), batch_statistics=True).expansion)
    for s in summaries:
        assert s.mean == pytest.approx(0.5, abs=0.03), s
        binomial_std = 0.5 / s.channels ** 0.5
        assert 0.6 * binomial_std < s.std < 1.6 * binomial_std, s
        assert s.below == 0.0 and s.minimum > s.threshold


def test_relu_on_projections_equals_a_block_built_with_relu():
    torch.manual_seed(2)
    linear = mbv2.InvertedResidual(16, 16, stride=1, expand_ratio=6).eval()
    nonlinear = mbv2.InvertedResidual(16, 16, stride=1, expand_ratio=6,
                                      projection_activation=nn.ReLU).eval()
    nonlinear.load_state_dict(linear.state_dict())
    model = nn.Sequential(linear, mbv2.InvertedResidual(16, 24, stride=2, expand_ratio=6)).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        plain = model(x)
        with A.relu_on_projections(model) as hooked:
            assert hooked is model
            torch.testing.assert_close(linear(x), nonlinear(x))  # with the shortcut: x + ReLU(.)
            relu_out = model(x)
        second = model[1]
        by_hand = torch.relu(second.projection(second.depthwise(second.expansion(nonlinear(x)))))
        torch.testing.assert_close(relu_out, by_hand)  # no shortcut in the stride-2 block
        assert not torch.allclose(relu_out, plain)
        torch.testing.assert_close(model(x), plain)  # the hooks are gone


def test_relu_hooks_are_removed_after_an_error():
    block = mbv2.InvertedResidual(4, 4, stride=1, expand_ratio=6).eval()
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        plain = block(x)
        with pytest.raises(RuntimeError, match="inside"):
            with A.relu_on_projections(block):
                raise RuntimeError("inside")
        torch.testing.assert_close(block(x), plain)


def test_prediction_shift_against_an_independent_computation():
    torch.manual_seed(3)
    before = torch.randn(4, 10).softmax(dim=1)
    after = torch.randn(4, 10).softmax(dim=1)
    after[0] = before[0]
    after[1] = before[1].roll(1)  # the same values on shifted classes
    shift = A.prediction_shift(before, after)
    for i in range(4):
        assert shift.kl[i].item() == pytest.approx(scipy.stats.entropy(before[i], after[i]), rel=1e-5)
        top_b = set(before[i].topk(5).indices.tolist())
        top_a = set(after[i].topk(5).indices.tolist())
        assert shift.top5_kept[i] == len(top_b & top_a)
    assert shift.kl[0] == pytest.approx(0, abs=1e-6) and shift.top5_kept[0] == 5
    assert shift.top1_agrees[0] and not shift.top1_agrees[1]
    assert shift.top1_after[1] == (shift.top1_before[1] + 1) % 10
    assert shift.p_before[1] == pytest.approx(before[1].max().item())
    assert shift.p_after[1] == pytest.approx(after[1, shift.top1_before[1]].item())
    assert torch.isfinite(A.prediction_shift(torch.tensor([[1.0, 0.0]]),
                                             torch.tensor([[0.0, 1.0]]), k=1).kl).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda: A.activation_patterns(nn.Linear(2, 2), torch.randn(1, 2, 1, 1)), ValueError,
     "model must contain at least one mbv2.InvertedResidual"),
    (lambda: A.activation_patterns("model", torch.randn(1, 3, 32, 32)), TypeError, "model must be"),
    (lambda: A.activation_patterns(mbv2.MobileNetV2(), torch.randn(1, 3, 16, 16)), ValueError,
     "at least 32 pixels"),
    (lambda: A.activation_patterns(mbv2.MobileNetV2(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
     ValueError, "batch must be a float tensor"),
    (lambda: A.activation_patterns(mbv2.InvertedResidual(4, 4, 1, 6), torch.randn(1, 5, 3, 3)),
     ValueError, "4 input channels"),
    (lambda: A.activation_patterns(mbv2.InvertedResidual(4, 4, 1, 6), torch.randn(4, 3, 3)),
     ValueError, r"batch must be an \(N, C, H, W\) tensor"),
    (lambda: A.activation_patterns(mbv2.InvertedResidual(4, 4, 1, 6), torch.randn(1, 4, 3, 3),
                                   batch_statistics=1), TypeError, "batch_statistics must be"),
    (lambda: A.summarize([]), TypeError, "patterns must be a non-empty list"),
    (lambda: A.relu_on_projections(nn.ReLU()).__enter__(), ValueError, "model must contain"),
    (lambda: A.prediction_shift(torch.ones(2, 3) / 3, torch.ones(2, 4) / 4), ValueError,
     "the same shape"),
    (lambda: A.prediction_shift(torch.ones(2, 3), torch.ones(2, 3) / 3), ValueError,
     "before must hold probabilities"),
    (lambda: A.prediction_shift(torch.ones(3) / 3, torch.ones(3) / 3), ValueError,
     r"before must be a float \(N, classes\)"),
    (lambda: A.prediction_shift(torch.ones(2, 3) / 3, torch.ones(2, 3) / 3, k=4), ValueError,
     "k must be at most the number of classes, 3"),
    (lambda: A.prediction_shift(torch.ones(2, 3) / 3, torch.ones(2, 3) / 3, k=0), ValueError,
     "k must be an integer >= 1"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
