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

The tensors between MobileNetV2's blocks (the linear projections of Section 3.2, the
residual sums, the network's input) are signed, and no activation bounds them. For those:

* :func:`fake_quantize_signed`: symmetric signed levels on ``[-bound, bound]``
  (``-127 ... 127`` steps for 8 bits), with ``bound`` calibrated by
  :func:`calibrate_range` with ``signed=True`` (on the absolute values).

To run a whole network with quantized activations:

* :class:`Quantizer`: one tensor's range (unsigned ``[0, high]`` or signed
  ``[-high, high]``) and bits, callable on a tensor.
* :func:`calibrate_ranges`: the max and percentile ranges (a :class:`CalibratedRange`) of
  each named submodule's output, from the outputs that :func:`mbv2.capture` records on
  calibration images, computed batch by batch but exactly as :func:`calibrate_range`
  would on all of them at once.
* :func:`quantized_outputs` (a context manager) and :func:`quantized_forward`: run the model
  with forward hooks that replace the outputs of named submodules by their fake-quantized
  values, so that every later layer computes on the quantized tensor.
* :func:`layer_statistics`: reduce each named submodule's output image by image (its
  maximum, its quantization error), batch by batch.
* :func:`compare_logits` and :func:`relative_errors`: how far quantized outputs are from
  the float ones, image by image (relative error, top-1 and top-k agreement).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from ._checks import one_of, positive_int, real_at_least
from .metrics import _check_tensor, relative_error, relative_errors
from .pretrained import top_k_kept
from .tracing import _submodules, capture, run_with_hooks

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
    bits = _check_bits(bits, minimum=1)
    top = _top_level(bits, signed=False)
    step = high / top
    # Round, then clamp the level: the same result as clamping x first,
    # in fewer passes over the tensor.
    return (x / step).round_().clamp_(0, top).mul_(step)


def fake_quantize_signed(
    x: torch.Tensor, bound: float, bits: int = 8
) -> torch.Tensor:
    """Round ``x`` to symmetric signed levels on ``[-bound, bound]``.

    The levels are ``k * step`` for the integers ``k`` from ``-(2**(bits-1) - 1)`` to
    ``2**(bits-1) - 1`` (-127 to 127 for 8 bits, 255 levels), with ``step = bound /
    (2**(bits-1) - 1)``: 0 is exact, the scheme is symmetric (``q(-x) = -q(x)``), values
    beyond ``±bound`` are clipped to ``±bound``, and values in between move by at most
    ``step / 2`` (halves go to the even level). This is the usual choice for a signed
    tensor with a per-tensor scale; for the same bits its step is about twice that of
    :func:`fake_quantize` on ``[0, bound]``.

    Args:
        x: any shape, floating point.
        bound: the top of the range, a finite number > 0.
        bits: bits per value, 2 to 16.
    """
    _check_tensor("x", x)
    bound = real_at_least("bound", bound, 0.0, strict=True)
    bits = _check_bits(bits, minimum=2)
    top = _top_level(bits, signed=True)
    step = bound / top
    return (x / step).round_().clamp_(-top, top).mul_(step)


def calibrate_range(
    x: torch.Tensor,
    method: str = "max",
    percentile: float = 99.99,
    *,
    signed: bool = False,
) -> float:
    """The top of a quantization range ``[0, high]`` (or ``[-high, high]``) for data like ``x``.

    Args:
        x: sample activations (a calibration set), any shape, not empty.
        method: ``"max"`` takes the largest value, so nothing in ``x`` is clipped;
            ``"percentile"`` takes the ``percentile``-th percentile by the nearest-rank rule
            (the smallest value with at least ``percentile`` % of ``x`` at or below it),
            which clips the largest ``100 - percentile`` % of ``x``.
        percentile: for ``"percentile"``, a number in (0, 100].
        signed: if True, the range is for :func:`fake_quantize_signed`: the method is
            applied to the absolute values ``|x|``.

    Raises ``ValueError`` if the range would be empty (no value of ``x`` (``|x|`` when
    signed) above 0 at the chosen rank), since a range needs ``high > 0``.
    """
    _check_tensor("x", x)
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    method, percentile, signed = _check_calibration(method, percentile, signed)
    values = x.detach().flatten()
    if signed:
        values = values.abs()
    if method == "max":
        high = values.max().item()
    else:
        rank = _nearest_rank(percentile, values.numel())
        high = values.kthvalue(rank).values.item()
    return _check_high(high, method, signed)


class Quantizer:
    """The 8-bit (or ``bits``-bit) quantization of one tensor: its range and its scheme.

    ``Quantizer(high)`` rounds with :func:`fake_quantize` on ``[0, high]`` (for ReLU and
    ReLU6 outputs; ``Quantizer(6.0)`` is ReLU6's fixed range); ``Quantizer(high,
    signed=True)`` with :func:`fake_quantize_signed` on ``[-high, high]``. Calling it on a
    tensor returns the quantized tensor; ``step`` is the distance between two levels.
    """

    __slots__ = ("high", "signed", "bits")

    def __init__(self, high: float, *, signed: bool = False, bits: int = 8) -> None:
        if not isinstance(signed, bool):
            raise TypeError(f"signed must be True or False, got {signed!r}")
        self.high = real_at_least("high", high, 0.0, strict=True)
        self.signed = signed
        self.bits = _check_bits(bits, minimum=2 if signed else 1)

    @property
    def step(self) -> float:
        """The distance between two neighbouring levels."""
        return self.high / _top_level(self.bits, self.signed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed:
            return fake_quantize_signed(x, self.high, self.bits)
        return fake_quantize(x, self.high, self.bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantizer):
            return NotImplemented
        return (self.high, self.signed, self.bits) == (other.high, other.signed, other.bits)

    def __hash__(self) -> int:
        return hash((self.high, self.signed, self.bits))

    def __repr__(self) -> str:
        signed = ", signed=True" if self.signed else ""
        bits = f", bits={self.bits}" if self.bits != 8 else ""
        return f"Quantizer({self.high:g}{signed}{bits})"


class CalibratedRange(NamedTuple):
    """The ranges that :func:`calibrate_ranges` found for one tensor."""

    max: float  #: the largest value (of ``|x|`` if signed): nothing is clipped
    percentile: float  #: the nearest-rank percentile (of ``|x|`` if signed)
    signed: bool  #: True for a signed range ``[-high, high]``

    def quantizer(self, method: str, bits: int = 8) -> "Quantizer":
        """The :class:`Quantizer` with this tensor's ``"max"`` or ``"percentile"`` range."""
        method = one_of("method", method, ("max", "percentile"))
        return Quantizer(getattr(self, method), signed=self.signed, bits=bits)


def calibrate_ranges(
    model: nn.Module,
    x: torch.Tensor,
    names: Iterable[str],
    percentile: float = 99.99,
    *,
    signed: Collection[str] = (),
    batch_size: int = 8,
) -> dict[str, CalibratedRange]:
    """The ranges of the outputs of named submodules of ``model`` on the images ``x``.

    Runs ``model`` on ``x`` once, in batches of ``batch_size`` (with :func:`mbv2.capture`:
    eval mode, no gradients), and gives for each name both ranges that
    :func:`calibrate_range` computes, ``"max"`` and ``"percentile"``, exactly as it would
    on that submodule's outputs for all of ``x`` at once; but without holding them all in
    memory: of each batch it keeps only the largest values that the percentile's rank can
    reach.

    Args:
        model: the network, e.g. :func:`mbv2.load_pretrained`.
        x: the calibration images, one ``(N, C, H, W)`` tensor.
        names: submodules as in ``model.named_modules()``, e.g. ``"stages.3.1.depthwise.act"``.
        percentile: the percentile, a number in (0, 100].
        signed: the names (among ``names``) whose outputs are signed: their ranges are
            computed on the absolute values, for :func:`fake_quantize_signed`.
        batch_size: images per forward pass, an integer >= 1 (memory, not the result).
    """
    _check_module("model", model)
    _check_batch(x)
    names = _check_names(names)
    _, percentile, _ = _check_calibration("percentile", percentile, False)
    if isinstance(signed, str) or not isinstance(signed, Collection):
        raise TypeError(f"signed must be a collection of names, got {signed!r}")
    stray = [name for name in signed if name not in names]
    if stray:
        raise ValueError(f"signed must hold only names from names; not in names: {', '.join(map(str, stray))}")
    batch_size = positive_int("batch_size", batch_size)

    images = x.shape[0]
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    keep: dict[str, int] = {}  # how many of the largest values the rank can reach
    for start in range(0, images, batch_size):
        batch = x[start:start + batch_size]
        outputs = _capture_all(model, batch, names)
        for name in names:
            values = outputs[name].detach().flatten()
            if name in signed:
                values = values.abs()
            if name not in keep:
                total = values.numel() // batch.shape[0] * images
                keep[name] = total - _nearest_rank(percentile, total) + 1
            kept[name].append(values.topk(min(keep[name], values.numel())).values)
    ranges = {}
    for name in names:
        top = torch.cat(kept[name]).topk(keep[name]).values  # sorted, largest first
        subject = f"the outputs of {name!r}"
        ranges[name] = CalibratedRange(
            _check_high(top[0].item(), "max", name in signed, subject),
            _check_high(top[-1].item(), "percentile", name in signed, subject),
            name in signed,
        )
    return ranges


@contextlib.contextmanager
def quantized_outputs(
    model: nn.Module, quantizers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
) -> Iterator[nn.Module]:
    """Inside the ``with`` block, the outputs of the named submodules are quantized.

    This is how the book runs MobileNetV2 with 8-bit activations to test the paper's
    reason for ReLU6 (Sandler et al. 2018, Section 4: robustness in low-precision
    computation).

    ``quantizers`` maps submodule names (as in ``model.named_modules()``) to a callable,
    usually a :class:`Quantizer`. A forward hook on each submodule returns the quantized
    output in place of the float one, so every later layer computes on the quantized
    tensor, as in an integer network that stores each of these tensors in 8 bits. A
    submodule inside another is quantized first (a block's projection, then the block's
    residual sum). The hooks are removed when the block ends, also on an error.
    """
    _check_module("model", model)
    if not isinstance(quantizers, Mapping):
        raise TypeError(f"quantizers must be a mapping from submodule names to quantizers, "
                        f"got {type(quantizers).__name__}")
    modules = _submodules(model, quantizers, "quantizers must name submodules of model")
    for name, quantizer in quantizers.items():
        if not callable(quantizer):
            raise TypeError(f"quantizers[{name!r}] must be callable (a Quantizer), got {type(quantizer).__name__}")

    def hook_for(name: str, quantizer: Callable):
        def hook(module: nn.Module, inputs: tuple, output: object):
            # A forward hook that returns a value replaces the output.
            if not isinstance(output, torch.Tensor):
                kind = type(output).__name__
                raise TypeError(f"the output of {name} is a {kind}, not a tensor")
            return quantizer(output)

        return hook

    handles = []
    try:
        for name, quantizer in quantizers.items():
            hook = hook_for(name, quantizer)
            handles.append(modules[name].register_forward_hook(hook))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def quantized_forward(
    model: nn.Module,
    x: torch.Tensor,
    quantizers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    *,
    input_quantizer: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """``model(x)`` with the outputs in ``quantizers`` quantized (see :func:`quantized_outputs`).

    ``input_quantizer``, if given, quantizes ``x`` itself before the first layer (the
    network's input is a tensor too). Runs in eval mode without gradients, in batches of
    ``batch_size`` images (memory, not the result), and puts the model back in the mode it
    was in.
    """
    _check_batch(x)
    if input_quantizer is not None and not callable(input_quantizer):
        raise TypeError(f"input_quantizer must be callable (a Quantizer) or None, "
                        f"got {type(input_quantizer).__name__}")
    batch_size = positive_int("batch_size", batch_size)
    with quantized_outputs(model, quantizers):
        return torch.cat([
            run_with_hooks(model, batch if input_quantizer is None else input_quantizer(batch), [])
            for batch in x.split(batch_size)
        ])


def layer_statistics(
    model: nn.Module,
    x: torch.Tensor,
    names: Iterable[str],
    statistic: Callable[[str, torch.Tensor], object],
    *,
    batch_size: int = 8,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The model's output on ``x``, and ``statistic(name, outputs)`` for each named submodule.

    The model runs in float (with :func:`mbv2.capture`) in batches of ``batch_size``, so
    that the outputs of all the submodules for all of ``x`` are never in memory at once.
    ``outputs`` is the submodule's output for one batch, ``(B, ...)``, and ``statistic``
    returns one number per image, or one row of numbers per image: anything that
    ``numpy.asarray`` makes into shape ``(B,)`` or ``(B, k)``. Returns ``(output,
    statistics)``: the model's output for all of ``x`` and, for each name, an array with
    one row per image, shape ``(N,)`` or ``(N, k)``.
    """
    _check_module("model", model)
    _check_batch(x)
    names = _check_names(names)
    if not callable(statistic):
        raise TypeError(f"statistic must be callable as statistic(name, outputs), got {type(statistic).__name__}")
    batch_size = positive_int("batch_size", batch_size)
    results: list[torch.Tensor] = []
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size]
        output, outputs = capture(model, batch, names)
        results.append(output)
        for name in names:
            _check_outputs(name, outputs)
            value = np.asarray(statistic(name, outputs[name]), dtype=np.float64)
            if value.ndim not in (1, 2) or value.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"statistic must return one value or one row per image, shape ({batch.shape[0]},) "
                    f"or ({batch.shape[0]}, k), got shape {value.shape} for {name!r}"
                )
            rows[name].append(value)
    return torch.cat(results), {name: np.concatenate(values) for name, values in rows.items()}


def compare_logits(
    reference: torch.Tensor, approximation: torch.Tensor, k: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each row of ``approximation`` is from ``reference``, both ``(N, classes)``.

    Returns three arrays with one value per row (image):

    * the relative error ``||a - r|| / ||r||`` of the row (:func:`relative_errors`);
    * whether the top-1 class is the same (bool);
    * how many of the ``k`` classes with the largest reference logits are also among the
      ``k`` largest of the approximation (an int from 0 to ``k``; order not counted).
    """
    _check_tensor("reference", reference)
    _check_tensor("approximation", approximation)
    if reference.dim() != 2 or reference.shape != approximation.shape:
        raise ValueError(
            f"reference and approximation must be (N, classes) tensors of the same shape, got "
            f"{tuple(reference.shape)} and {tuple(approximation.shape)}"
        )
    k = positive_int("k", k)
    if k > reference.shape[1]:
        raise ValueError(f"k must be at most the number of classes, {reference.shape[1]}, got {k}")
    errors = relative_errors(reference, approximation).numpy()
    top1 = (reference.argmax(dim=1) == approximation.argmax(dim=1)).numpy()
    overlap = top_k_kept(reference, approximation, k).numpy()
    return errors, top1, overlap


def _top_level(bits: int, signed: bool) -> int:
    """The largest integer level: 2**bits - 1 unsigned (0 ... 255 for 8 bits), 2**(bits-1) - 1
    signed (-127 ... 127)."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def _check_bits(bits: object, minimum: int) -> int:
    bits = positive_int("bits", bits)
    if not minimum <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {minimum} to {MAX_BITS}, got {bits}")
    return bits


def _check_calibration(method: object, percentile: object, signed: object) -> tuple[str, float, bool]:
    method = one_of("method", method, ("max", "percentile"))
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True or False, got {signed!r}")
    if method == "percentile":
        percentile = real_at_least("percentile", percentile, 0.0, strict=True)
        if percentile > 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    return method, percentile, signed


def _nearest_rank(percentile: float, n: int) -> int:
    """The 1-based rank of the nearest-rank percentile among ``n`` sorted values."""
    # The rounding keeps e.g. 99.99 % of 10,000 at rank 9,999.
    return max(1, math.ceil(round(percentile / 100 * n, 6)))


def _check_high(high: float, method: str, signed: bool, subject: str = "x") -> float:
    if not high > 0:
        kind, of = ("nonzero", f"the absolute values of {subject}") if signed else ("positive", subject)
        raise ValueError(
            f"{subject} must have {kind} values to calibrate a {'signed' if signed else 'unsigned'} "
            f"range; the {method} of {of} is {high:g}"
        )
    return high


def _check_module(name: str, value: object) -> None:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")


def _check_names(names: object) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"names must be a list of submodule names, not one string ({names!r})")
    names = list(names)
    if not names:
        raise ValueError("names must name at least one submodule")
    return names


def _check_batch(x: object) -> None:
    _check_tensor("x", x)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch with at least one image, got shape {tuple(x.shape)}")


def _capture_all(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    _, outputs = capture(model, x, names)
    for name in names:
        _check_outputs(name, outputs)
    return outputs


def _check_outputs(name: str, outputs: dict) -> None:
    if name not in outputs:
        raise ValueError(f"names must be submodules that run in model's forward; {name!r} did not run")
    if not isinstance(outputs[name], torch.Tensor):
        raise TypeError(f"the output of {name!r} is a {type(outputs[name]).__name__}, not a tensor")
