import time

import pytest
import torch
from torch import nn

from mbv2.benchmark import NoisyTimingError, Spread, Timings, compare, compare_modules, median_seconds


def test_a_large_convolution_takes_longer_than_an_identity():
    x = torch.randn(1, 128, 56, 56)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    slow = median_seconds(conv, x, rounds=3, calls=3)
    fast = median_seconds(nn.Identity(), x, rounds=3, calls=3)
    assert 0 < fast < slow


def test_ratio_of_sleeps():
    timings = compare({"long": lambda: time.sleep(0.004), "short": lambda: time.sleep(0.002)},
                      rounds=3, calls=2, warmup=1)
    ratio = timings.ratio("long", "short", max_relative_range=10)
    assert 1.3 < ratio.median < 2.2
    assert ratio.low <= ratio.median <= ratio.high
    assert timings.fastest() == "short"
    assert timings.seconds("long").median >= 0.004


def test_variants_are_interleaved_and_rotated():
    order = []
    compare({name: (lambda name=name: order.append(name)) for name in "abc"},
            rounds=3, calls=1, warmup=1)
    timed = order[3:]  # after one warm-up call each
    assert timed == list("abc") + list("bca") + list("cab")


def test_a_ratio_whose_rounds_disagree_raises():
    # Hand-made rounds: the per-round ratio swings between 1 and 3 (quartiles 1 and 3).
    timings = Timings({"a": [1.0, 3.0, 2.0, 1.0, 3.0], "b": [1.0] * 5}, calls=1, warmup=1, num_threads=1)
    with pytest.raises(NoisyTimingError, match="ranged from 1 to 3 over 5 rounds"):
        timings.ratio("a", "b")
    assert timings.ratio("a", "b", max_relative_range=1.5) == Spread(2.0, 1.0, 3.0)


def test_one_stalled_round_is_tolerated_and_reported():
    timings = Timings({"a": [2.0, 2.0, 9.0, 2.0, 2.0], "b": [1.0] * 5}, calls=1, warmup=1, num_threads=1)
    assert timings.ratio("a", "b") == Spread(2.0, 2.0, 9.0)


def test_a_slow_spell_in_one_round_does_not_move_the_ratio():
    # Round 2 is five times slower for both variants: the per-round ratios stay 2.
    timings = Timings({"a": [2.0, 10.0, 2.0], "b": [1.0, 5.0, 1.0]}, calls=1, warmup=1, num_threads=1)
    assert timings.ratio("a", "b") == Spread(2.0, 2.0, 2.0)
    assert timings.seconds("a") == Spread(2.0, 2.0, 10.0)


def test_restores_mode_threads_and_grad_mode():
    module = nn.Sequential(nn.Linear(4, 4), nn.Dropout()).train()
    threads = torch.get_num_threads()
    seen = []
    module.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    compare_modules({"m": module}, torch.randn(2, 4), rounds=1, calls=1, warmup=1, num_threads=1)
    assert set(seen) == {(False, False)}
    assert module.training and torch.get_num_threads() == threads and torch.is_grad_enabled()


def test_grad_true_times_training_steps():
    seen = []
    compare({"step": lambda: seen.append(torch.is_grad_enabled())}, rounds=1, calls=1, warmup=1, grad=True)
    assert all(seen)


def test_describe_states_the_conditions():
    timings = compare({"a": lambda: None}, rounds=2, calls=3, warmup=1, num_threads=1)
    text = timings.describe()
    assert "2 interleaved rounds of 3 calls" in text and "1 CPU thread," in text and torch.__version__ in text


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(module=lambda x: x), TypeError, "module must be a torch.nn.Module"),
    (dict(rounds=0), ValueError, "rounds must be an integer >= 1"),
    (dict(calls=0), ValueError, "calls must be an integer >= 1"),
    (dict(num_threads=0), ValueError, "num_threads must be an integer >= 1"),
])
def test_bad_arguments(kwargs, error, match):
    arguments = dict(module=nn.Identity(), x=torch.zeros(1)) | kwargs
    with pytest.raises(error, match=match):
        median_seconds(**arguments)


def test_bad_variants_and_names():
    with pytest.raises(ValueError, match="variants must be a non-empty mapping"):
        compare({})
    with pytest.raises(TypeError, match=r"variants\['a'\] must be a callable"):
        compare({"a": 3})
    with pytest.raises(TypeError, match=r"modules\['a'\] must be a torch.nn.Module"):
        compare_modules({"a": 3}, torch.zeros(1))
    timings = Timings({"a": [1.0]}, calls=1, warmup=1, num_threads=1)
    with pytest.raises(KeyError, match="no variant named 'b'; the variants are 'a'"):
        timings.seconds("b")
    with pytest.raises(ValueError, match="max_relative_range must be a number > 0"):
        timings.ratio("a", "a", max_relative_range=0)


def test_an_infinite_range_never_refuses():
    timings = Timings({"a": [1.0, 3.0, 2.0, 1.0, 3.0], "b": [1.0] * 5}, calls=1, warmup=1, num_threads=1)
    assert timings.ratio("a", "b", max_relative_range=float("inf")) == Spread(2.0, 1.0, 3.0)


def test_the_allocator_is_settled_once_before_timing(monkeypatch):
    import mbv2.benchmark as benchmark

    calls = []
    monkeypatch.setattr(benchmark, "_allocator_settled", False)
    original = torch.empty
    monkeypatch.setattr(benchmark.torch, "empty", lambda *a, **k: calls.append(a) or original(*a, **k))
    compare({"a": lambda: None}, rounds=1, calls=1, warmup=1)
    compare({"a": lambda: None}, rounds=1, calls=1, warmup=1)
    assert calls == [(28 * 2**20,)] and benchmark._allocator_settled
