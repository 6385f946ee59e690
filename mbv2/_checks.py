"""Argument checks shared by the package: each raises an error that names the argument."""

from __future__ import annotations

import math
from numbers import Integral, Real


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an integer >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an integer >= 0 (a seed, for instance), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def real_at_least(name: str, value: object, minimum: float, *, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number >= ``minimum`` (> if ``strict``)."""
    ok = (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def one_of(name: str, value: object, allowed: tuple) -> object:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``name``."""
    if isinstance(value, bool) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def conv_channels(in_channels: object, out_channels: object, groups: object) -> tuple[int, int, int]:
    """Check a convolution's channel counts and groups; ``groups`` must divide both."""
    in_channels = positive_int("in_channels", in_channels)
    out_channels = positive_int("out_channels", out_channels)
    groups = positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups must divide in_channels and out_channels, got groups={groups} "
            f"for in_channels={in_channels}, out_channels={out_channels}"
        )
    return in_channels, out_channels, groups


def image_batch(x: object, min_size: int) -> None:
    """Check that ``x`` is an (N, 3, H, W) tensor with H and W at least ``min_size``.

    A ``torch.fx.Proxy`` (the stand-in for a tensor while ``torch.fx.symbolic_trace``
    records a model) has no shape yet and passes unchecked, so that the models stay
    traceable; the traced graph then runs without the check.
    """
    import torch

    if isinstance(x, torch.fx.Proxy):
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"input must be a 4-D tensor (N, 3, H, W), got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if x.shape[1] != 3:
        raise ValueError(
            f"input must have 3 channels in dimension 1 (N, 3, H, W), got shape {tuple(x.shape)}"
        )
    if min(x.shape[2:]) < min_size:
        raise ValueError(
            f"input height and width must be at least {min_size} pixels, got {tuple(x.shape[2:])}"
        )
