import math

import numpy as np
import pytest
import torch
from torch import nn

from mbv2.quantization import calibrate_range, fake_quantize, relative_error


# ReLU6 ------------------------------------------------------------------------------


def test_relu6_is_clamp_to_0_6_in_value_and_gradient():
    x = torch.cat([
        torch.arange(-1000, 1601) / 100,  # -10 to 16 in steps of 0.01, 0 and 6 exactly
        torch.tensor([-math.inf, math.inf, 1e30, -1e30, 5.999999, 6.000001]),
    ])
    assert {0.0, 6.0} <= set(x.tolist())
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    relu6, clamped = nn.ReLU6()(a), torch.clamp(b, 0, 6)
    assert torch.equal(relu6, clamped)
    assert relu6.min() == 0 and relu6.max() == 6
    relu6.sum().backward()
    clamped.sum().backward()
    assert torch.equal(a.grad, b.grad)
    # The derivative is 1 strictly inside (0, 6) and 0 elsewhere, kinks included.
    inside = (x > 0) & (x < 6)
    assert torch.equal(a.grad, inside.float())


def test_relu6_differs_from_relu_exactly_above_6():
    x = torch.linspace(-3, 9, 1201)
    differs = nn.ReLU6()(x) != nn.ReLU()(x)
    assert torch.equal(differs, x > 6)


# fake_quantize ------------------------------------------------------------------------


def test_fake_quantize_worked_example():
    # high = 2.55 with 8 bits: 255 steps of 0.01.
    x = torch.tensor([-1.0, 0.0, 0.004, 0.006, 1.234, 2.549, 2.55, 3.0], dtype=torch.float64)
    expected = torch.tensor([0, 0, 0, 0.01, 1.23, 2.55, 2.55, 2.55], dtype=torch.float64)
    torch.testing.assert_close(fake_quantize(x, 2.55), expected, rtol=0, atol=1e-12)


def test_fake_quantize_two_bits_has_four_levels():
    x = torch.tensor([0.2, 0.9, 1.2, 2.4, 2.6, 7.0])
    assert fake_quantize(x, 3.0, bits=2).tolist() == [0.0, 1.0, 1.0, 2.0, 3.0, 3.0]


def test_fake_quantize_8_bits_uses_256_levels_and_rounds_to_nearest():
    high = 6.0
    x = torch.linspace(-1, 7, 100_001, dtype=torch.float64)
    q = fake_quantize(x, high)
    step = high / 255
    levels = torch.unique(q)
    assert len(levels) == 256
    torch.testing.assert_close(levels, torch.arange(256, dtype=torch.float64) * step)
    inside = (x >= 0) & (x <= high)
    assert (q[inside] - x[inside]).abs().max() <= step / 2 + 1e-12
    assert torch.equal(q[x < 0], torch.zeros_like(q[x < 0]))
    assert torch.all(q[x > high] == high)
    # Quantizing twice changes nothing; the dtype and shape are kept.
    assert torch.equal(fake_quantize(q, high), q)
    y = torch.rand(2, 3, 4)
    assert fake_quantize(y, 1.0).shape == y.shape and fake_quantize(y, 1.0).dtype == y.dtype


def test_fake_quantize_noise_is_step_over_sqrt_12_for_a_uniform_input():
    # The textbook result for rounding a value spread over many steps.
    x = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    error = fake_quantize(x, 1.0) - x
    assert error.pow(2).mean().sqrt().item() == pytest.approx((1 / 255) / math.sqrt(12), rel=0.01)


@pytest.mark.parametrize("args, error, match", [
    (([1.0], 6.0), TypeError, "x must be a torch.Tensor"),
    ((torch.tensor([1, 2]), 6.0), TypeError, "x must be a floating-point tensor"),
    ((torch.ones(2), 0.0), ValueError, "high must be a finite number > 0"),
    ((torch.ones(2), math.inf), ValueError, "high must be a finite number > 0"),
    ((torch.ones(2), 6.0, 0), ValueError, "bits must be an integer >= 1"),
    ((torch.ones(2), 6.0, 17), ValueError, "bits must be an integer from 1 to 16"),
    ((torch.ones(2), 6.0, 8.0), ValueError, "bits must be an integer >= 1"),
])
def test_fake_quantize_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        fake_quantize(*args)


# calibrate_range ---------------------------------------------------------------------


def test_calibrate_range_max():
    x = torch.tensor([[0.5, -2.0], [3.25, 1.0]])
    assert calibrate_range(x) == 3.25
    assert calibrate_range(x, "max") == 3.25


# Sizes where percentile * n / 100 is not a whole number: there numpy's float rounding
# can pick the next rank (99.9 % of 1,000 is 999.0000000000001 in floating point).
@pytest.mark.parametrize("n", [10, 999, 12_345, 100_003])
@pytest.mark.parametrize("percentile", [50, 90, 99, 99.9, 99.99, 100])
def test_calibrate_range_percentile_is_numpys_nearest_rank(n, percentile):
    x = torch.randn(n, dtype=torch.float64).abs()
    expected = np.percentile(x.numpy(), percentile, method="inverted_cdf")
    assert calibrate_range(x, "percentile", percentile) == expected


def test_calibrate_range_percentile_by_hand():
    x = torch.arange(1, 101, dtype=torch.float32)  # 1, 2, ..., 100
    assert calibrate_range(x, "percentile", 99) == 99
    assert calibrate_range(x, "percentile", 98.5) == 99
    assert calibrate_range(x, "percentile", 100) == 100
    assert calibrate_range(x, "percentile", 0.5) == 1
    # Whole-number ranks are not nudged up by floating-point error.
    assert calibrate_range(torch.arange(1.0, 1001), "percentile", 99.9) == 999
    assert calibrate_range(torch.arange(1.0, 10_001), "percentile", 99.99) == 9999


@pytest.mark.parametrize("args, error, match", [
    ((np.ones(3),), TypeError, "x must be a torch.Tensor"),
    ((torch.empty(0),), ValueError, "x must not be empty"),
    ((torch.ones(3), "mean"), ValueError, "method must be one of 'max', 'percentile'"),
    ((torch.ones(3), "percentile", 0), ValueError, "percentile must be a finite number > 0"),
    ((torch.ones(3), "percentile", 100.5), ValueError, r"percentile must be in \(0, 100\]"),
    ((torch.tensor([-1.0, 0.0]),), ValueError, "x must have positive values"),
    ((torch.tensor([0.0] * 99 + [5.0]), "percentile", 99), ValueError,
     "x must have positive values"),
])
def test_calibrate_range_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        calibrate_range(*args)


# relative_error ----------------------------------------------------------------------


def test_relative_error_by_hand():
    reference = torch.tensor([3.0, 4.0])
    assert relative_error(reference, torch.tensor([3.0, 4.5])) == pytest.approx(0.1)
    assert relative_error(reference, reference) == 0
    assert relative_error(reference, torch.zeros(2)) == pytest.approx(1.0)
    matrix = torch.tensor([[1.0, 2.0], [2.0, 0.0]])  # norm 3 over all values
    assert relative_error(matrix, matrix + torch.tensor([[0.0, 0.0], [0.0, 0.3]])) == pytest.approx(0.1)


@pytest.mark.parametrize("args, error, match", [
    ((torch.ones(2), torch.ones(3)), ValueError, "must have the same shape"),
    ((torch.zeros(2), torch.ones(2)), ValueError, "reference must have a nonzero value"),
    ((torch.ones(2), [1.0, 1.0]), TypeError, "approximation must be a torch.Tensor"),
])
def test_relative_error_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        relative_error(*args)
