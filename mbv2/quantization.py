"""Uniform 8-bit quantization of activations, to test why MobileNetV2 uses ReLU6.

The paper chooses ReLU6 for its robustness in low-precision computation (Sandler et al.
2018, Section 4, citing MobileNetV1). This module holds what the ReLU6 chapter needs to
measure that claim:

* :func:`fake_quantize`: round a non-negative activation to one of ``2**bits`` evenly
  spaced levels on ``[0, high]`` and return the level as a float ("fake" quantization:
  the arithmetic stays in floating point, the values are those an integer kernel sees).
* :func:`calibrate_range`: choose ``high`` from sample activations, by their maximum or
  by a percentile.
* :func:`relative_error`: the size of an approximation error relative to the signal.

The scheme is per-tensor, unsigned and uniform: level ``k`` stands for ``k * high /
(2**bits - 1)``, so 0 is exact, the step is ``high / 255`` for 8 bits, and anything above
``high`` is clipped to ``high``. ReLU6 outputs fit ``high = 6`` by construction; ReLU
outputs have no bound, so ``high`` must be calibrated on data.
"""

from __future__ import annotations

import math

import torch

from ._checks import one_of, positive_int, real_at_least

MAX_BITS = 16


def fake_quantize(
    x: torch.Tensor, high: float, bits: int = 8
) -> torch.Tensor:
    """Round ``x`` to ``2**bits`` uniform levels on ``[0, high]``.

    With ``step = high / (2**bits - 1)``, each value becomes
    ``round(clamp(x, 0, high) / step) * step``: values below 0 become 0,
    values above ``high`` become ``high`` (clipping), and values in between
    move by at most ``step / 2`` (rounding; halves go to the even level).

    Args:
        x: the activations, any shape, floating point.
        high: the top of the range, a finite number > 0 (6 for ReLU6).
        bits: bits per value, 1 to 16; 8 gives 256 levels.
    """
    _check_tensor("x", x)
    high = real_at_least("high", high, 0.0, strict=True)
    bits = positive_int("bits", bits)
    if bits > MAX_BITS:
        raise ValueError(
            f"bits must be an integer from 1 to {MAX_BITS}, got {bits}"
        )
    top = 2**bits - 1
    step = high / top
    # Round, then clamp the level: the same result as clamping x first,
    # in fewer passes over the tensor.
    return (x / step).round_().clamp_(0, top).mul_(step)


def calibrate_range(x: torch.Tensor, method: str = "max", percentile: float = 99.99) -> float:
    """The top of a quantization range ``[0, high]`` for activations like ``x``.

    Args:
        x: sample activations (a calibration set), any shape, not empty.
        method: ``"max"`` takes the largest value, so nothing in ``x`` is clipped;
            ``"percentile"`` takes the ``percentile``-th percentile by the nearest-rank rule
            (the smallest value with at least ``percentile`` % of ``x`` at or below it),
            which clips the largest ``100 - percentile`` % of ``x``.
        percentile: for ``"percentile"``, a number in (0, 100].

    Raises ``ValueError`` if the range would be empty (no value of ``x`` above 0 at the
    chosen rank), since an unsigned range needs ``high > 0``.
    """
    _check_tensor("x", x)
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    method = one_of("method", method, ("max", "percentile"))
    values = x.detach().flatten()
    if method == "max":
        high = values.max().item()
    else:
        percentile = real_at_least("percentile", percentile, 0.0, strict=True)
        if percentile > 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        # Nearest rank; the rounding keeps e.g. 99.99 % of 10,000 at rank 9,999.
        rank = max(1, math.ceil(round(percentile / 100 * values.numel(), 6)))
        high = values.kthvalue(rank).values.item()
    if not high > 0:
        raise ValueError(
            f"x must have positive values to calibrate an unsigned range; the {method} "
            f"of x is {high:g}"
        )
    return high


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``||approximation - reference|| / ||reference||`` in the Euclidean norm over all values.

    For quantization noise this is the inverse square root of the signal-to-noise power
    ratio: 0.01 (1 %) is 40 dB.
    """
    _check_tensor("reference", reference)
    _check_tensor("approximation", approximation)
    if reference.shape != approximation.shape:
        raise ValueError(
            f"reference and approximation must have the same shape, got "
            f"{tuple(reference.shape)} and {tuple(approximation.shape)}"
        )
    # The sums of squares accumulate in float64.
    norm = torch.linalg.vector_norm(reference.detach(), dtype=torch.float64).item()
    if not norm > 0:
        raise ValueError("reference must have a nonzero value (its norm is the denominator)")
    difference = approximation.detach() - reference.detach()
    return torch.linalg.vector_norm(difference, dtype=torch.float64).item() / norm


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
