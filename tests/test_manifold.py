"""mbv2.manifold: the spiral, the round trips, and the collapsed fraction against its theory."""

import math

import numpy as np
import pytest

from mbv2 import manifold as M


def test_spiral_shape_radius_and_determinism():
    points = M.make_spiral(300, turns=2.0, inner_radius=0.1)
    assert points.shape == (300, 2)
    radius = np.linalg.norm(points, axis=1)
    assert radius[0] == pytest.approx(0.1) and radius[-1] == pytest.approx(1.0)
    assert np.all(np.diff(radius) > 0)
    # Two turns: the angle, unwrapped, goes from 0 to 4π.
    angle = np.unwrap(np.arctan2(points[:, 1], points[:, 0]))
    assert angle[0] == pytest.approx(0.0) and angle[-1] == pytest.approx(4 * np.pi)
    np.testing.assert_array_equal(points, M.make_spiral(300, turns=2.0, inner_radius=0.1))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_points": 0}, "num_points must be an integer >= 1"),
    ({"turns": 0}, "turns must be a finite number > 0"),
    ({"inner_radius": 1.0}, "inner_radius must be in"),
])
def test_spiral_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.make_spiral(**kwargs)


def test_activations_and_their_linear_ranges():
    z = np.array([-1.0, 0.0, 0.5, 6.0, 7.0])
    np.testing.assert_array_equal(M.activate(z, "relu"), [0, 0, 0.5, 6, 7])
    np.testing.assert_array_equal(M.activate(z, "relu6"), [0, 0, 0.5, 6, 6])
    np.testing.assert_array_equal(M.activate(z, "linear"), z)
    np.testing.assert_array_equal(M.linear_units(z, "relu"), [False, False, True, True, True])
    # A unit at the cap of 6 is flat: it counts as lost, like one at 0.
    np.testing.assert_array_equal(M.linear_units(z, "relu6"), [False, False, True, False, False])
    assert M.linear_units(z, "linear").all()
    with pytest.raises(ValueError, match="activation must be one of 'relu', 'relu6', 'linear'"):
        M.activate(z, "gelu")


def test_embedding_is_gaussian_and_seeded():
    T = M.random_embedding(4000, seed=3, scale=2.0)
    assert T.shape == (4000, 2)
    assert T.std() == pytest.approx(2.0, rel=0.03) and abs(T.mean()) < 0.1
    np.testing.assert_array_equal(T, M.random_embedding(4000, seed=3, scale=2.0))
    assert not np.array_equal(T, M.random_embedding(4000, seed=4, scale=2.0))


def test_round_trip_matches_a_direct_computation():
    points = M.make_spiral(50)
    T = M.random_embedding(2, seed=5)
    expected = np.linalg.solve(T, np.maximum(T @ points.T, 0)).T  # n = 2: T is square
    np.testing.assert_allclose(M.relu_round_trip(points, 2, seed=5), expected, atol=1e-12)
    # Without an activation the round trip is the identity.
    np.testing.assert_allclose(M.relu_round_trip(points, 7, activation="linear"), points, atol=1e-12)


def test_wide_round_trip_through_relu_halves_the_spiral():
    # pinv(T) ReLU(T x) = x/2 + pinv(T)|T x|/2, and the second term vanishes as n grows.
    points = M.make_spiral(100)
    back = M.relu_round_trip(points, 20_000, seed=1)
    assert M.reconstruction_error(0.5 * points, back) < 0.05
    assert M.reconstruction_error(points, back) == pytest.approx(0.5, abs=0.03)


def test_active_set_inverse_is_exact_where_two_units_are_linear():
    points = M.make_spiral(400)
    for activation, scale in [("relu", 1.0), ("relu6", 10.0)]:
        T = M.random_embedding(3, seed=2, scale=scale)
        linear = M.linear_units(points @ T.T, activation).sum(axis=1)
        back = M.active_set_inverse(points, 3, activation=activation, seed=2, scale=scale)
        error = np.linalg.norm(back - points, axis=1)
        assert (linear >= 2).any() and (linear < 2).any()
        assert error[linear >= 2].max() < 1e-9
        assert error[linear < 2].min() > 1e-6
        # One linear unit: the minimum-norm solution, the projection on that unit's row.
        for i in np.flatnonzero(linear == 1)[:20]:
            t = T[M.linear_units(T @ points[i], activation)][0]
            np.testing.assert_allclose(back[i], t * (t @ points[i]) / (t @ t), atol=1e-9)
        np.testing.assert_array_equal(back[linear == 0], 0.0)


def test_reconstruction_error_by_hand():
    points = np.array([[3.0, 4.0], [0.0, 1.0]])  # sum of squares 26
    assert M.reconstruction_error(points, points) == 0
    assert M.reconstruction_error(points, np.zeros((2, 2))) == pytest.approx(1.0)
    shifted = points + [[1.0, 0.0], [0.0, 0.0]]
    assert M.reconstruction_error(points, shifted) == pytest.approx(math.sqrt(1 / 26))
    assert M.reconstruction_error(points, 0.5 * points) == pytest.approx(0.5)
    assert M.reconstruction_error(points, 0.5 * points, rescale=True) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="reconstructed must have the shape of points"):
        M.reconstruction_error(points, points[:1])
    with pytest.raises(ValueError, match=r"points must have shape \(P, 2\)"):
        M.reconstruction_error(np.zeros((3, 3)), np.zeros((3, 3)))


def test_theory_closed_form_and_exact_values():
    for n in range(1, 40):
        assert M.collapsed_fraction_theory(n) == pytest.approx((1 + n) / 2**n, rel=1e-15)
    # With 2d - 1 units, fewer than d are active exactly half the time (symmetry).
    for d in (1, 3, 10, 160):
        assert M.collapsed_fraction_theory(2 * d - 1, manifold_dim=d) == pytest.approx(0.5, rel=1e-14)
    # Tiny probabilities survive: 1921 / 2^1920 would underflow, 3.2e-205 does not.
    assert 0 < M.collapsed_fraction_theory(1920, manifold_dim=320) < 1e-200
    assert M.collapsed_fraction_theory(5, active_probability=1.0) == 0
    assert M.collapsed_fraction_theory(1, active_probability=1.0) == 1
    # An array of probabilities gives the mean: p = 0 always collapses, p = 1 never (n >= 2).
    assert M.collapsed_fraction_theory(4, active_probability=[0.0, 1.0, 1.0, 1.0]) == 0.25
    with pytest.raises(ValueError, match="active_probability must be in"):
        M.collapsed_fraction_theory(4, active_probability=1.5)
    with pytest.raises(ValueError, match="manifold_dim must be an integer >= 1"):
        M.collapsed_fraction_theory(4, manifold_dim=0)


def _standard_error_bound(p, trials):
    """Each trial's collapsed fraction f lies in [0, 1] and has mean p, so Var f <= p (1 - p):
    points on one spiral share T and are not independent, but the trials are. Hence the
    mean over ``trials`` has standard error at most sqrt(p (1 - p) / trials)."""
    return math.sqrt(p * (1 - p) / trials)


def _trials_to_resolve(p):
    """Enough independent samples that 4 standard errors are at most p / 2: a measured
    fraction of 0 (or of 2p) then fails the 4-standard-error check."""
    return max(1000, math.ceil(64 * (1 - p) / p))


@pytest.mark.parametrize("dim", range(1, 17))
def test_collapsed_fraction_agrees_with_theory_on_independent_samples(dim):
    # One point (num_points=1) and one fresh T per trial: the trials are independent
    # Bernoulli(p) samples, so the standard error is exactly sqrt(p (1 - p) / trials).
    theory = M.collapsed_fraction_theory(dim)
    trials = _trials_to_resolve(theory)
    tolerance = 4 * math.sqrt(theory * (1 - theory) / trials)
    assert tolerance <= theory / 2  # the check below can fail, even for a result of 0
    measured = M.collapsed_fraction(dim, trials=trials, num_points=1, seed=dim)
    assert abs(measured - theory) <= tolerance + 1e-12


@pytest.mark.parametrize("dim", range(2, 12))
def test_collapsed_fraction_of_the_spiral_agrees_with_theory(dim):
    # Correlated points (the whole spiral shares T): only the bound on the standard error
    # is known, and it is small enough to fail a result of 0 up to dim = 11.
    trials = 4000
    theory = M.collapsed_fraction_theory(dim)
    tolerance = 4 * _standard_error_bound(theory, trials)
    assert tolerance < theory
    measured = M.collapsed_fraction(dim, trials=trials, num_points=50, seed=dim)
    assert abs(measured - theory) <= tolerance


def test_collapsed_fraction_per_matrix():
    per_matrix = M.collapsed_fraction_per_matrix(6, trials=3000, num_points=40, seed=1)
    assert per_matrix.shape == (3000,)
    assert np.all((per_matrix >= 0) & (per_matrix <= 1))
    np.testing.assert_array_equal(per_matrix * 40, np.round(per_matrix * 40))  # counts / 40
    # The mean is collapsed_fraction with the same arguments, to the last bit of the count.
    assert per_matrix.mean() == pytest.approx(
        M.collapsed_fraction(6, trials=3000, num_points=40, seed=1), rel=1e-12)
    # The points of one spiral share T: a matrix collapses a whole arc or nothing, so the
    # fractions vary between matrices, but less than independent 0/1 samples would
    # (standard deviation below sqrt(p (1 - p))), and their mean agrees with the theory
    # within 4 empirical standard errors.
    p = M.collapsed_fraction_theory(6)
    assert 0 < per_matrix.std() < math.sqrt(p * (1 - p))
    assert (per_matrix > 0).mean() > p  # more matrices touch the collapse than points do
    assert abs(per_matrix.mean() - p) <= 4 * per_matrix.std(ddof=1) / math.sqrt(3000)
    assert 4 * per_matrix.std(ddof=1) / math.sqrt(3000) < p / 4
    np.testing.assert_array_equal(
        per_matrix, M.collapsed_fraction_per_matrix(6, trials=3000, num_points=40, seed=1))


@pytest.mark.parametrize("dim", [2, 5, 10, 15])
def test_relu6_collapsed_fraction_counts_saturated_units(dim):
    trials, scale = 4000, 8.0
    spiral = M.make_spiral(50)
    p = M.unit_linear_probability(spiral, activation="relu6", scale=scale)
    theory = M.collapsed_fraction_theory(dim, active_probability=p)
    tolerance = 4 * _standard_error_bound(theory, trials)
    assert tolerance < theory
    measured = M.collapsed_fraction(dim, activation="relu6", trials=trials, num_points=50,
                                    scale=scale, seed=dim)
    assert abs(measured - theory) <= tolerance
    # Saturation loses more than ReLU alone, which does not depend on the scale. With the
    # same seed, the matrices are the same: a point that ReLU collapses, ReLU6 collapses too.
    relu = M.collapsed_fraction(dim, trials=trials, num_points=50, scale=scale, seed=dim)
    assert relu == M.collapsed_fraction(dim, trials=trials, num_points=50, seed=dim)
    assert measured > relu and theory > M.collapsed_fraction_theory(dim)


def test_unit_linear_probability_matches_sampling():
    points = np.array([[0.3, 0.4], [3.0, 4.0]])  # |x| = 0.5 and 5
    p = M.unit_linear_probability(points, activation="relu6", scale=2.0)
    # 0 < 2 |x| Z < 6  <=>  0 < Z < 6 / (2 |x|):  Φ(6) - 1/2 and Φ(0.6) - 1/2.
    assert p == pytest.approx([0.5 * math.erf(6 / math.sqrt(2)), 0.5 * math.erf(0.6 / math.sqrt(2))])
    z = 2.0 * np.linalg.norm(points, axis=1)[:, None] * np.random.default_rng(0).standard_normal((2, 200_000))
    np.testing.assert_allclose(M.linear_units(z, "relu6").mean(axis=1), p, atol=0.005)
    np.testing.assert_array_equal(M.unit_linear_probability(points), [0.5, 0.5])
    np.testing.assert_array_equal(M.unit_linear_probability(points, activation="linear"), [1, 1])


def test_linear_never_collapses_and_is_exact():
    assert M.collapsed_fraction(2, activation="linear") == 0
    assert M.collapsed_fraction(1, activation="linear") == 1
    errors = M.round_trip_errors(3, activation="linear", trials=20)
    assert max(errors) < 1e-12


def test_round_trip_errors_fall_with_width():
    narrow = M.round_trip_errors(3, trials=50)
    wide = M.round_trip_errors(40, trials=50)
    assert narrow.active_set > 0.2 and wide.active_set < 1e-9
    assert wide.pinv == pytest.approx(0.5, abs=0.1)  # the halving, see above
    assert wide.pinv_rescaled < narrow.pinv_rescaled


@pytest.mark.parametrize("call, match", [
    (lambda: M.collapsed_fraction(0), "dim must be an integer >= 1"),
    (lambda: M.collapsed_fraction(3, trials=0), "trials must be an integer >= 1"),
    (lambda: M.collapsed_fraction(3, scale=-1), "scale must be a finite number > 0"),
    (lambda: M.collapsed_fraction(3, seed=-1), "seed must be an integer >= 0"),
    (lambda: M.collapsed_fraction(3, activation="tanh"), "activation must be one of"),
    (lambda: M.collapsed_fraction_per_matrix(3, trials=0), "trials must be an integer >= 1"),
    (lambda: M.collapsed_fraction_per_matrix(3, num_points=0), "num_points must be an integer >= 1"),
    (lambda: M.relu_round_trip(np.zeros(5), 3), r"points must have shape \(P, 2\)"),
    (lambda: M.relu_round_trip([[np.nan, 0.0]], 3), "points must be finite"),
    (lambda: M.active_set_inverse(M.make_spiral(5), 3, activation="elu"), "activation must be one of"),
    (lambda: M.round_trip_errors(3, num_points=0), "num_points must be an integer >= 1"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
