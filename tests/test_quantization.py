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


def test_relative_error_is_accurate_in_float64_and_close_in_float32():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(1_000_000, generator=g, dtype=torch.float64)
    approximation = reference + 0.01 * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    r, a = reference.numpy(), approximation.numpy()
    exact = math.sqrt(math.fsum((a - r) ** 2)) / math.sqrt(math.fsum(r**2))
    assert relative_error(reference, approximation) == pytest.approx(exact, rel=1e-12)
    # float32: the rounding of the inputs plus float32 sums, a few parts in 10^5.
    assert relative_error(reference.float(), approximation.float()) == pytest.approx(exact, rel=2e-4)


@pytest.mark.parametrize("args, error, match", [
    ((torch.ones(2), torch.ones(3)), ValueError, "must have the same shape"),
    ((torch.zeros(2), torch.ones(2)), ValueError, "reference must have a nonzero value"),
    ((torch.ones(2), [1.0, 1.0]), TypeError, "approximation must be a torch.Tensor"),
])
def test_relative_error_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        relative_error(*args)


# fake_quantize_signed ----------------------------------------------------------------

from collections import OrderedDict  # noqa: E402

import mbv2  # noqa: E402
from mbv2.quantization import (  # noqa: E402
    CalibratedRange,
    Quantizer,
    calibrate_ranges,
    compare_logits,
    fake_quantize_signed,
    layer_statistics,
    quantized_forward,
    quantized_outputs,
    relative_errors,
)


def test_fake_quantize_signed_worked_example():
    # bound = 1.27 with 8 bits: levels -127 ... 127 steps of 0.01.
    x = torch.tensor([-5.0, -1.27, -0.006, -0.004, 0.0, 0.004, 0.006, 1.234, 1.3],
                     dtype=torch.float64)
    expected = torch.tensor([-1.27, -1.27, -0.01, 0.0, 0.0, 0.0, 0.01, 1.23, 1.27],
                            dtype=torch.float64)
    torch.testing.assert_close(fake_quantize_signed(x, 1.27), expected, rtol=0, atol=1e-12)


def test_fake_quantize_signed_has_255_symmetric_levels():
    bound = 3.0
    x = torch.linspace(-4, 4, 200_001, dtype=torch.float64)
    q = fake_quantize_signed(x, bound)
    step = bound / 127
    levels = torch.unique(q)
    assert len(levels) == 255
    torch.testing.assert_close(levels, torch.arange(-127, 128, dtype=torch.float64) * step)
    assert torch.equal(fake_quantize_signed(-x, bound), -q)  # symmetric
    inside = x.abs() <= bound
    assert (q[inside] - x[inside]).abs().max() <= step / 2 + 1e-12
    assert torch.all(q[x > bound] == bound) and torch.all(q[x < -bound] == -bound)
    assert torch.equal(fake_quantize_signed(q, bound), q)
    # 2 bits: the levels -1, 0, 1 (in steps of the bound).
    assert fake_quantize_signed(torch.tensor([-0.7, -0.2, 0.4, 0.6]), 1.0, bits=2).tolist() == [
        -1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("args, error, match", [
    (([1.0], 1.0), TypeError, "x must be a torch.Tensor"),
    ((torch.ones(2), -1.0), ValueError, "bound must be a finite number > 0"),
    ((torch.ones(2), 1.0, 1), ValueError, "bits must be an integer from 2 to 16"),
    ((torch.ones(2), 1.0, 17), ValueError, "bits must be an integer from 2 to 16"),
])
def test_fake_quantize_signed_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        fake_quantize_signed(*args)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_a_range_that_covers_every_value_moves_each_by_at_most_half_a_step(signed, bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(50_000, generator=g, dtype=torch.float64) * 3
    if not signed:
        x = x.relu()
    quantizer = Quantizer(calibrate_range(x, "max", signed=signed), signed=signed, bits=bits)
    q = quantizer(x)
    assert (q - x).abs().max() <= quantizer.step / 2 + 1e-12
    # and the error is not trivially small: rounding does move the values.
    assert (q - x).abs().max() > quantizer.step / 4


# calibrate_range, signed -------------------------------------------------------------


def test_calibrate_range_signed_uses_absolute_values():
    x = torch.tensor([[0.5, -7.0], [3.25, 1.0]])
    assert calibrate_range(x, signed=True) == 7.0
    assert calibrate_range(x) == 3.25
    y = torch.randn(12_345, dtype=torch.float64)
    expected = np.percentile(y.abs().numpy(), 99.9, method="inverted_cdf")
    assert calibrate_range(y, "percentile", 99.9, signed=True) == expected
    with pytest.raises(ValueError, match="x must have nonzero values to calibrate a signed range"):
        calibrate_range(torch.zeros(4), signed=True)
    with pytest.raises(TypeError, match="signed must be True or False"):
        calibrate_range(y, signed="yes")


# Quantizer ---------------------------------------------------------------------------


def test_quantizer_calls_the_right_scheme():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Quantizer(2.0)(x), fake_quantize(x, 2.0))
    assert torch.equal(Quantizer(2.0, signed=True)(x), fake_quantize_signed(x, 2.0))
    assert torch.equal(Quantizer(2.0, bits=4)(x), fake_quantize(x, 2.0, bits=4))
    assert Quantizer(6.0).step == pytest.approx(6 / 255)
    assert Quantizer(1.27, signed=True).step == pytest.approx(0.01)
    assert Quantizer(6.0) == Quantizer(6) and Quantizer(6.0) != Quantizer(6.0, signed=True)
    assert repr(Quantizer(6.0)) == "Quantizer(6)"
    assert repr(Quantizer(1.5, signed=True, bits=4)) == "Quantizer(1.5, signed=True, bits=4)"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(high=0.0), ValueError, "high must be a finite number > 0"),
    (dict(high=1.0, signed=1), TypeError, "signed must be True or False"),
    (dict(high=1.0, signed=True, bits=1), ValueError, "bits must be an integer from 2 to 16"),
    (dict(high=1.0, bits=0), ValueError, "bits must be an integer >= 1"),
])
def test_quantizer_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Quantizer(**kwargs)


def test_calibrated_range_gives_its_quantizers():
    r = CalibratedRange(max=4.0, percentile=3.0, signed=True)
    assert r.quantizer("max") == Quantizer(4.0, signed=True)
    assert r.quantizer("percentile", bits=4) == Quantizer(3.0, signed=True, bits=4)
    with pytest.raises(ValueError, match="method must be one of 'max', 'percentile'"):
        r.quantizer("mean")


# A small network for the hook-based functions ----------------------------------------


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1),
        act1=nn.ReLU6(),
        conv2=nn.Conv2d(8, 4, 1),
        act2=nn.ReLU6(),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        linear=nn.Linear(4, 5),
    ))
    with torch.no_grad():  # scale the first layer so that act1 reaches 6 sometimes
        net.conv1.weight.mul_(8)
    return net


def images(n, seed=0, size=6):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_calibrate_ranges_equals_calibrate_range_on_all_outputs_at_once(batch_size):
    net, x = small_net(), images(7)
    names = ["conv1", "act1", "conv2"]
    # All the outputs at once (captured with the same batches: a convolution's
    # last bits can depend on the batch size).
    captured = [mbv2.capture(net, batch, names)[1] for batch in x.split(batch_size)]
    outputs = {name: torch.cat([c[name] for c in captured]) for name in names}
    for percentile in [75, 99, 99.99, 100]:
        ranges = calibrate_ranges(net, x, names, percentile, signed=["conv1", "conv2"],
                                  batch_size=batch_size)
        for name in names:
            signed = name != "act1"
            assert ranges[name] == CalibratedRange(
                calibrate_range(outputs[name], "max", signed=signed),
                calibrate_range(outputs[name], "percentile", percentile, signed=signed),
                signed)


def test_calibrate_ranges_keeps_enough_values_when_one_batch_holds_the_tail():
    # The first image is much larger than the rest: its batch holds every value
    # above the 90th percentile, which only an exact merge gets right.
    net = small_net()
    x = images(6)
    x[0] *= 50
    for batch_size in (1, 2, 6):
        outputs = torch.cat([mbv2.capture(net, batch, ["conv2"])[1]["conv2"]
                             for batch in x.split(batch_size)])
        r = calibrate_ranges(net, x, ["conv2"], 90, signed=["conv2"], batch_size=batch_size)
        assert r["conv2"].percentile == calibrate_range(outputs, "percentile", 90, signed=True)
        assert r["conv2"].max == outputs.abs().max().item()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(names=["nope"]), ValueError, "names must be submodules of model"),
    (dict(names="act1"), TypeError, "names must be a list of submodule names"),
    (dict(names=[]), ValueError, "names must name at least one submodule"),
    (dict(signed=["conv2"]), ValueError, "signed must hold only names from names"),
    (dict(signed="act1"), TypeError, "signed must be a collection of names"),
    (dict(percentile=0), ValueError, "percentile must be a finite number > 0"),
    (dict(percentile=101), ValueError, r"percentile must be in \(0, 100\]"),
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (dict(x=torch.empty(0, 3, 6, 6)), ValueError, "x must be a batch with at least one image"),
    (dict(model="net"), TypeError, "model must be a torch.nn.Module"),
])
def test_calibrate_ranges_rejects_bad_arguments(kwargs, error, match):
    arguments = dict(model=small_net(), x=images(2), names=["act1"])
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        calibrate_ranges(**arguments)


def test_calibrate_ranges_refuses_an_empty_range():
    net = small_net()
    with torch.no_grad():
        net.conv2.weight.zero_()
        net.conv2.bias.fill_(-1.0)  # act2 is 0 everywhere
    with pytest.raises(ValueError, match="the outputs of 'act2' must have positive values"):
        calibrate_ranges(net, images(2), ["act2"])


# quantized_outputs and quantized_forward ---------------------------------------------


def test_quantized_forward_equals_a_forward_quantized_by_hand():
    net, x = small_net(), images(5)
    q_in, q1, q2, q3 = (Quantizer(2.5, signed=True), Quantizer(6.0), Quantizer(1.5),
                        Quantizer(0.7, bits=4))
    with torch.no_grad():
        y = net.act1(net.conv1(q_in(x)))
        y = net.act2(net.conv2(q1(y)))
        by_hand = net.linear(net.flat(net.pool(q3(y))))
        # conv2's output is quantized before act2: q2 on conv2, q3 on act2.
        y = net.act1(net.conv1(q_in(x)))
        y = net.act2(q2(net.conv2(q1(y))))
        by_hand = net.linear(net.flat(net.pool(q3(y))))
        plain = net(x)
    hooked = quantized_forward(net, x, {"act1": q1, "conv2": q2, "act2": q3},
                               input_quantizer=q_in)
    assert torch.equal(hooked, by_hand)
    assert not torch.allclose(hooked, plain, atol=1e-3)  # quantization did something
    # In batches of 2 the same, image by image.
    torch.testing.assert_close(
        quantized_forward(net, x, {"act1": q1, "conv2": q2, "act2": q3},
                          input_quantizer=q_in, batch_size=2), by_hand)
    # The hooks are gone afterwards.
    with torch.no_grad():
        assert torch.equal(net(x), plain)


def test_quantized_outputs_quantizes_a_projection_then_its_residual_sum():
    torch.manual_seed(0)
    block = mbv2.InvertedResidual(8, 8, stride=1, expand_ratio=6).eval()
    assert block.use_shortcut
    x = torch.randn(2, 8, 5, 5)
    q_proj, q_sum = Quantizer(0.5, signed=True), Quantizer(2.0, signed=True)
    with torch.no_grad():
        by_hand = q_sum(x + q_proj(block.projection(block.depthwise(block.expansion(x)))))
        with quantized_outputs(block, {"projection": q_proj, "": q_sum}) as same:
            assert same is block
            hooked = block(x)
        after = block(x)
    assert torch.equal(hooked, by_hand)
    assert not torch.equal(after, hooked)


def test_quantized_outputs_removes_its_hooks_after_an_error_and_restores_the_mode():
    net, x = small_net(), images(2)
    with pytest.raises(RuntimeError, match="inside"):
        with quantized_outputs(net, {"act1": Quantizer(0.1)}):
            raise RuntimeError("inside")
    assert all(not m._forward_hooks for m in net.modules())
    net.train()
    quantized_forward(net, x, {"act1": Quantizer(6.0)})
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("quantizers, error, match", [
    ({"nope": Quantizer(6.0)}, ValueError, "quantizers must name submodules of model; not found: nope"),
    ({"act1": 6.0}, TypeError, r"quantizers\['act1'\] must be callable"),
    ([("act1", Quantizer(6.0))], TypeError, "quantizers must be a mapping"),
])
def test_quantized_outputs_rejects_bad_arguments(quantizers, error, match):
    with pytest.raises(error, match=match):
        with quantized_outputs(small_net(), quantizers):
            pass


def test_quantized_forward_rejects_bad_arguments():
    net = small_net()
    with pytest.raises(TypeError, match="input_quantizer must be callable"):
        quantized_forward(net, images(1), {}, input_quantizer=2.0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        quantized_forward("net", images(1), {})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        quantized_forward(net, images(1), {}, batch_size=0)


# layer_statistics, compare_logits, relative_errors -----------------------------------


def test_layer_statistics_reduces_each_image_batch_by_batch():
    net, x = small_net(), images(5)
    output, outputs = mbv2.capture(net, x, ["act1", "conv2"])
    result, stats = layer_statistics(
        net, x, ["act1", "conv2"],
        lambda name, y: torch.stack([y.flatten(1).amax(1), (y.flatten(1) >= 6).sum(1)], 1),
        batch_size=2)
    torch.testing.assert_close(result, output)
    for name in ("act1", "conv2"):
        assert stats[name].shape == (5, 2)
        expected_max = [outputs[name][i].max().item() for i in range(5)]
        np.testing.assert_allclose(stats[name][:, 0], expected_max, rtol=1e-6)
    assert stats["act1"][:, 1].sum() > 0  # act1 does reach 6
    np.testing.assert_array_equal(stats["act1"][:, 1],
                                  [(outputs["act1"][i] == 6).sum().item() for i in range(5)])
    _, one = layer_statistics(net, x, ["act1"], lambda name, y: y.flatten(1).mean(1))
    assert one["act1"].shape == (5,)


def test_layer_statistics_rejects_bad_statistics():
    net, x = small_net(), images(3)
    with pytest.raises(ValueError, match=r"one value or one row per image, shape \(3,\)"):
        layer_statistics(net, x, ["act1"], lambda name, y: y.max())
    with pytest.raises(TypeError, match="statistic must be callable"):
        layer_statistics(net, x, ["act1"], None)
    with pytest.raises(ValueError, match="names must be submodules of model"):
        layer_statistics(net, x, ["nope"], lambda name, y: y.flatten(1).mean(1))


def test_compare_logits_by_hand():
    reference = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0],
                              [0.0, 1.0, 2.0, 3.0, 4.0],
                              [3.0, 0.5, 0.2, 4.0, 0.1]])
    approximation = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0],   # the same
                                  [0.0, 1.0, 5.0, 3.0, 4.0],   # top-1 moves to class 2
                                  [0.0, 3.0, 4.0, 0.1, 0.2]])  # top 2 all new
    errors, top1, overlap = compare_logits(reference, approximation, k=2)
    expected = [np.linalg.norm(a - r) / np.linalg.norm(r)
                for r, a in zip(reference.numpy(), approximation.numpy())]
    np.testing.assert_allclose(errors, expected, rtol=1e-6)
    assert errors[1] == pytest.approx(3 / math.sqrt(30))
    assert top1.tolist() == [True, False, False]
    assert overlap.tolist() == [2, 1, 0]  # row 2: {4, 3} vs {2, 4}
    _, _, overlap3 = compare_logits(reference, approximation, k=3)
    assert overlap3.tolist() == [3, 3, 1]  # row 3: {3, 0, 1} vs {2, 1, 4}
    with pytest.raises(ValueError, match="k must be at most the number of classes, 5"):
        compare_logits(reference, approximation, k=6)
    with pytest.raises(ValueError, match=r"must be \(N, classes\) tensors of the same shape"):
        compare_logits(reference, approximation[:2])


def test_relative_errors_is_relative_error_item_by_item():
    g = torch.Generator().manual_seed(3)
    reference = torch.randn(4, 16, 30, 30, generator=g)
    approximation = reference + 0.01 * torch.randn(4, 16, 30, 30, generator=g) * torch.arange(
        1, 5).view(4, 1, 1, 1)
    errors = relative_errors(reference, approximation)
    assert errors.dtype == torch.float64 and errors.shape == (4,)
    expected = [relative_error(r, a) for r, a in zip(reference, approximation)]
    np.testing.assert_allclose(errors.numpy(), expected, rtol=1e-5)
    assert relative_errors(torch.tensor([2.0, -4.0]), torch.tensor([3.0, -4.0])).tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="nonzero value in every item"):
        relative_errors(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="must have the same shape"):
        relative_errors(torch.ones(2, 3), torch.ones(3, 2))
