"""How far an approximation is from a reference: the relative error used across the book.

The reconstructed spirals of the linear-bottlenecks chapter and the quantized activations
of the ReLU6 chapter are judged by the same number, ``||approximation - reference|| /
||reference||``: 0 is exact, 1 is what answering 0 everywhere would score.
"""

from __future__ import annotations

import torch


def relative_errors(reference: torch.Tensor, approximation: torch.Tensor) -> torch.Tensor:
    """:func:`relative_error` of each item along the first dimension (image by image).

    Returns a float64 tensor of shape ``(N,)`` for inputs of shape ``(N, ...)``. As in
    :func:`relative_error`, the sums of squares accumulate in the inputs' own dtype.
    """
    _check_tensor("reference", reference)
    _check_tensor("approximation", approximation)
    if reference.shape != approximation.shape or reference.dim() == 0:
        raise ValueError(
            f"reference and approximation must have the same shape (N, ...), got "
            f"{tuple(reference.shape)} and {tuple(approximation.shape)}"
        )
    reference = reference.detach().reshape(reference.shape[0], -1)
    difference = approximation.detach().reshape(reference.shape) - reference
    norms = torch.linalg.vector_norm(reference, dim=1)
    if not bool((norms > 0).all()):
        raise ValueError("reference must have a nonzero value in every item (its norm is the denominator)")
    return (torch.linalg.vector_norm(difference, dim=1) / norms).double()


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``||approximation - reference|| / ||reference||`` in the Euclidean norm over all values.

    For quantization noise this is the inverse square root of the signal-to-noise power
    ratio: 0.01 (1 %) is 40 dB.

    The sums of squares accumulate in the inputs' own dtype, for speed: with float32
    tensors the result can be off by a few parts in 10**5 of itself for a million values
    (a few parts in 10**4 for five million), far below the digits the book shows. Pass
    float64 tensors where more digits matter.
    """
    _check_tensor("reference", reference)
    _check_tensor("approximation", approximation)
    if reference.shape != approximation.shape:
        raise ValueError(
            f"reference and approximation must have the same shape, got "
            f"{tuple(reference.shape)} and {tuple(approximation.shape)}"
        )
    norm = torch.linalg.vector_norm(reference.detach()).item()
    if not norm > 0:
        raise ValueError("reference must have a nonzero value (its norm is the denominator)")
    difference = approximation.detach() - reference.detach()
    return torch.linalg.vector_norm(difference).item() / norm


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")


