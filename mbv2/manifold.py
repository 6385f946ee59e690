"""The ReLU spiral of Section 3.2 and Figure 1 (Sandler et al. 2018), measured.

A 2-D spiral x is embedded in n dimensions by a random Gaussian matrix T (n x 2),
passed through an activation, and mapped back to 2-D. The paper maps back with the
pseudo-inverse of T (:func:`relu_round_trip`); the best inverse that knows which units
are in their linear range (:func:`active_set_inverse`) recovers x exactly wherever at
least two units are, and nowhere else can any inverse do so locally. How often fewer than
two units are left is measured by :func:`collapsed_fraction` (matrix by matrix, for a
standard error, by :func:`collapsed_fraction_per_matrix`) and derived in closed form by
:func:`collapsed_fraction_theory`.

A unit is *in its linear range* where its derivative is 1: z > 0 for ReLU, 0 < z < 6 for
ReLU6 (a unit at the cap of 6 is as flat as one at 0, so it carries no local information
either), everywhere for the identity ("linear"). All functions are deterministic given
``seed``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch

from ._checks import non_negative_int, one_of, positive_int, real_at_least
from .metrics import relative_errors

#: The activations the round trip can apply.
ACTIVATIONS = ("relu", "relu6", "linear")
#: Where ReLU6 saturates.
RELU6_CAP = 6.0


def make_spiral(num_points: int = 500, *, turns: float = 2.0, inner_radius: float = 0.1) -> np.ndarray:
    """An Archimedean spiral in the plane, as an array of shape ``(num_points, 2)``.

    Point i is at angle ``2π · turns · s`` and radius ``inner_radius + (1 - inner_radius) · s``
    with ``s = i / (num_points - 1)``: the radius grows evenly from ``inner_radius`` to 1
    (the origin, where every unit of T x is exactly 0, is avoided).
    """
    num_points = positive_int("num_points", num_points)
    turns = real_at_least("turns", turns, 0.0, strict=True)
    inner_radius = real_at_least("inner_radius", inner_radius, 0.0, strict=True)
    if inner_radius >= 1:
        raise ValueError(f"inner_radius must be in (0, 1), got {inner_radius!r}")
    s = np.linspace(0.0, 1.0, num_points)
    radius = inner_radius + (1.0 - inner_radius) * s
    angle = 2 * np.pi * turns * s
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def random_embedding(dim: int, *, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """The ``dim`` x 2 matrix T with independent N(0, scale²) entries used by the round trips."""
    return _embeddings(dim, 1, seed=seed, scale=scale)[0]


def activate(z: np.ndarray, activation: str) -> np.ndarray:
    """ReLU max(z, 0), ReLU6 min(max(z, 0), 6), or the identity ("linear")."""
    activation = one_of("activation", activation, ACTIVATIONS)
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "relu6":
        return np.clip(z, 0.0, RELU6_CAP)
    return np.asarray(z, dtype=float)


def linear_units(z: np.ndarray, activation: str) -> np.ndarray:
    """Boolean mask of the units whose activation has derivative 1 at ``z``.

    ReLU: z > 0. ReLU6: 0 < z < 6 (a saturated unit is flat, like an inactive one).
    Linear: every unit.
    """
    activation = one_of("activation", activation, ACTIVATIONS)
    z = np.asarray(z, dtype=float)
    if activation == "relu":
        return z > 0
    if activation == "relu6":
        return (z > 0) & (z < RELU6_CAP)
    return np.ones(z.shape, dtype=bool)


def relu_round_trip(
    points: np.ndarray, dim: int, *, activation: str = "relu", seed: int = 0, scale: float = 1.0
) -> np.ndarray:
    """The paper's round trip (Figure 1): ``pinv(T) · activation(T x)`` for every point x.

    T is :func:`random_embedding` ``(dim, seed=seed, scale=scale)``; ``points`` has shape
    (P, 2) and so has the result.
    """
    points = _check_points(points)
    T = random_embedding(dim, seed=seed, scale=scale)
    return activate(points @ T.T, activation) @ np.linalg.pinv(T).T


def active_set_inverse(
    points: np.ndarray, dim: int, *, activation: str = "relu", seed: int = 0, scale: float = 1.0
) -> np.ndarray:
    """The best local inverse: for each point, solve T_A x = y_A by least squares, where A is
    the set of units in their linear range (:func:`linear_units`) and y = activation(T x).

    With at least two such units T_A has rank 2 (almost surely) and x comes back exactly.
    With one, the minimum-norm solution is the projection of x on that unit's row of T;
    with none, it is 0: every point of a cone gives the same output.
    """
    points = _check_points(points)
    T = random_embedding(dim, seed=seed, scale=scale)
    return _round_trips(points, T[None], activation).active_set[0]


def reconstruction_error(points: np.ndarray, reconstructed: np.ndarray, *, rescale: bool = False) -> float:
    """Relative root-mean-square error ``sqrt(Σ|x̂ - x|² / Σ|x|²)`` over the points.

    0 is perfect; 1 is what returning the origin for every point would score. With
    ``rescale`` the reconstruction is first multiplied by the single number c that
    minimises the error, so that only the *shape* is judged (the pseudo-inverse round trip
    through ReLU shrinks the spiral by about half, see the chapter).
    """
    points = _check_points(points)
    reconstructed = _check_points(reconstructed, "reconstructed")
    if reconstructed.shape != points.shape:
        raise ValueError(
            f"reconstructed must have the shape of points {points.shape}, got {reconstructed.shape}"
        )
    return float(_relative_error(points, reconstructed[None], rescale)[0])


class RoundTripErrors(NamedTuple):
    """Mean relative errors (see :func:`reconstruction_error`) over random matrices T."""

    pinv: float  #: the paper's pseudo-inverse round trip
    pinv_rescaled: float  #: the same after the best rescaling (shape only)
    active_set: float  #: :func:`active_set_inverse`


def round_trip_errors(
    dim: int,
    *,
    activation: str = "relu",
    num_points: int = 200,
    trials: int = 200,
    scale: float = 1.0,
    seed: int = 0,
) -> RoundTripErrors:
    """Reconstruction errors of the spiral (:func:`make_spiral` ``(num_points)``) embedded in
    ``dim`` dimensions, averaged over ``trials`` random matrices T."""
    points = make_spiral(num_points)
    T = _embeddings(dim, trials, seed=seed, scale=scale)
    trips = _round_trips(points, T, activation)
    return RoundTripErrors(
        pinv=float(_relative_error(points, trips.pinv, False).mean()),
        pinv_rescaled=float(_relative_error(points, trips.pinv, True).mean()),
        active_set=float(_relative_error(points, trips.active_set, False).mean()),
    )


def collapsed_fraction(
    dim: int,
    *,
    activation: str = "relu",
    num_points: int = 200,
    trials: int = 1000,
    scale: float = 1.0,
    seed: int = 0,
) -> float:
    """The fraction of spiral points at which fewer than two units of activation(T x) are in
    their linear range, over ``trials`` random matrices T (:func:`make_spiral` ``(num_points)``).

    At such a point no inverse can recover x from the output, even locally: the map
    x -> activation(T x) has rank below 2 there. For "relu6" a unit at the cap of 6 counts
    as lost, like a unit at 0, so the fraction depends on ``scale`` (the standard deviation
    of T's entries); for "relu" it does not, and "linear" never collapses when ``dim`` >= 2.
    The mean of :func:`collapsed_fraction_per_matrix` with the same arguments.
    """
    counts = _collapsed_counts(dim, activation, num_points, trials, scale, seed)
    return int(counts.sum()) / (len(counts) * num_points)


def collapsed_fraction_per_matrix(
    dim: int,
    *,
    activation: str = "relu",
    num_points: int = 200,
    trials: int = 1000,
    scale: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """:func:`collapsed_fraction` matrix by matrix: an array of ``trials`` fractions, one per T.

    The matrices are independent, the points of one spiral are not (they share T), so the
    standard error of :func:`collapsed_fraction` is ``std / sqrt(trials)`` of these values.
    """
    counts = _collapsed_counts(dim, activation, num_points, trials, scale, seed)
    return counts / num_points


def collapsed_fraction_theory(dim: int, *, active_probability=0.5, manifold_dim: int = 2) -> float:
    """P(Binomial(dim, p) < manifold_dim): the chance that fewer than ``manifold_dim`` of
    ``dim`` units are in their linear range when each is, independently, with probability p.

    For a fixed x ≠ 0 and T with independent Gaussian rows, the units t_i · x are
    independent and symmetric about 0, so each ReLU unit is active with p = 1/2 and the
    probability that fewer than two are is ``(1 + dim) / 2**dim``. ``active_probability``
    may also be an array (one p per point, as for ReLU6, see
    :func:`unit_linear_probability`); the result is then the mean over it. The sum is
    computed exactly with fractions, so tiny probabilities are not lost to rounding.
    """
    dim = positive_int("dim", dim)
    manifold_dim = positive_int("manifold_dim", manifold_dim)
    p = np.atleast_1d(np.asarray(active_probability, dtype=float))
    if p.size == 0 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"active_probability must be in [0, 1], got {active_probability!r}")
    values, counts = np.unique(p, return_counts=True)
    total = sum(
        count * _binomial_below(dim, Fraction(value), manifold_dim)
        for value, count in zip(values.tolist(), counts.tolist())
    )
    return float(total / p.size)


def unit_linear_probability(points: np.ndarray, *, activation: str = "relu", scale: float = 1.0) -> np.ndarray:
    """For each point x, the probability that one unit t · x (t ~ N(0, scale² I)) is in its
    linear range: 1/2 for ReLU, Φ(6 / (scale |x|)) - 1/2 for ReLU6, 1 for linear."""
    points = _check_points(points)
    activation = one_of("activation", activation, ACTIVATIONS)
    scale = real_at_least("scale", scale, 0.0, strict=True)
    norm = np.linalg.norm(points, axis=1)
    if activation == "linear":
        return np.ones(len(points))
    if activation == "relu":
        return np.where(norm > 0, 0.5, 0.0)
    with np.errstate(divide="ignore"):
        z = RELU6_CAP / (scale * norm)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    return np.where(norm > 0, cdf - 0.5, 0.0)


# --- internals ------------------------------------------------------------------------


def _binomial_below(n: int, p: Fraction, d: int) -> Fraction:
    """P(Binomial(n, p) < d), exactly."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(min(d, n + 1)))


def _collapsed_counts(dim, activation, num_points, trials, scale, seed) -> np.ndarray:
    """For each of ``trials`` matrices T, how many spiral points have < 2 linear units."""
    activation = one_of("activation", activation, ACTIVATIONS)
    points = make_spiral(num_points)
    trials = positive_int("trials", trials)
    dim = positive_int("dim", dim)
    scale = real_at_least("scale", scale, 0.0, strict=True)
    chunk = max(1, 2_000_000 // (len(points) * dim))  # bound the memory of T x
    rng = _rng(seed)
    counts = []
    for start in range(0, trials, chunk):
        T = _draw(rng, dim, min(chunk, trials - start), scale)
        z = T @ points.T  # (count, dim, P)
        counts.append((linear_units(z, activation).sum(axis=1) < 2).sum(axis=1))
    return np.concatenate(counts)


class _Trips(NamedTuple):
    pinv: np.ndarray  # (trials, P, 2)
    active_set: np.ndarray  # (trials, P, 2)


def _rng(seed: object) -> np.random.Generator:
    return np.random.default_rng(non_negative_int("seed", seed))


def _draw(rng: np.random.Generator, dim: int, trials: int, scale: float) -> np.ndarray:
    return scale * rng.standard_normal((trials, dim, 2))


def _embeddings(dim: int, trials: int, *, seed: int, scale: float) -> np.ndarray:
    dim = positive_int("dim", dim)
    trials = positive_int("trials", trials)
    scale = real_at_least("scale", scale, 0.0, strict=True)
    return _draw(_rng(seed), dim, trials, scale)


def _check_points(points: object, name: str = "points") -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(f"{name} must have shape (P, 2) with P >= 1, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _round_trips(points: np.ndarray, T: np.ndarray, activation: str) -> _Trips:
    """Both inverses for a stack of matrices T of shape (trials, n, 2)."""
    z = np.swapaxes(T @ points.T, 1, 2)  # (trials, P, n)
    y = activate(z, activation)
    pinv = y @ np.swapaxes(np.linalg.pinv(T), 1, 2)
    # Least squares on the linear units: G x = b with G = T_A^T T_A and b = T_A^T y_A,
    # one 2x2 system a point, solved in closed form. G has rank 2 when two rows of T_A
    # are independent; rank 1 (one linear unit t) gives the minimum-norm solution
    # t (t . x) / |t|^2 = b / trace(G); rank 0 gives 0.
    mask = linear_units(z, activation).astype(float)
    outer = (T[:, :, :, None] * T[:, :, None, :]).reshape(len(T), -1, 4)  # t_k t_l per row
    g00, g01, _, g11 = np.moveaxis(mask @ outer, -1, 0)  # each (trials, P)
    b0, b1 = np.moveaxis((mask * y) @ T, -1, 0)
    trace, det = g00 + g11, g00 * g11 - g01 * g01
    full_rank = det > 1e-10 * trace**2
    safe_det = np.where(full_rank, det, 1.0)
    safe_trace = np.where(trace > 0, trace, 1.0)
    x0 = np.where(full_rank, (g11 * b0 - g01 * b1) / safe_det, b0 / safe_trace)
    x1 = np.where(full_rank, (g00 * b1 - g01 * b0) / safe_det, b1 / safe_trace)
    return _Trips(pinv, np.stack([x0, x1], axis=-1))


def _relative_error(points: np.ndarray, reconstructed: np.ndarray, rescale: bool) -> np.ndarray:
    """:func:`mbv2.metrics.relative_errors` of each reconstruction in a stack (trials, P, 2)."""
    if rescale:
        dot = np.einsum("tpk,pk->t", reconstructed, points)
        energy = np.einsum("tpk,tpk->t", reconstructed, reconstructed)
        factor = np.divide(dot, energy, out=np.zeros_like(dot), where=energy > 0)
        reconstructed = reconstructed * factor[:, None, None]
    reference = np.broadcast_to(points, reconstructed.shape)
    return relative_errors(torch.tensor(reference), torch.tensor(reconstructed)).numpy()
