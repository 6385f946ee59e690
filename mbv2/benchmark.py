"""Wall-clock timing on the CPU that a busy machine cannot turn into a wrong sentence.

Timings on a shared machine are noisy: another process can stall one call for a second.
:func:`compare` therefore times several variants *interleaved*: in each of ``rounds``
rounds every variant runs ``calls`` times (after an untimed warm-up), in an order that
rotates from round to round, and the round's median is kept. A variant's time is the
median of its round medians; a ratio between two variants is the median of the
*per-round* ratios, so a slow spell that hits one round hits both variants of that round.
The spread (lowest and highest per-round value) comes with every number, and
:meth:`Timings.ratio` raises :class:`NoisyTimingError` when the middle half of the
per-round ratios is too wide for the ratio to mean anything (one stalled round is
tolerated; a machine too busy to measure is not), so that a glitch stops the build
instead of printing nonsense.

Before the first measurement of a process, :func:`compare` allocates and frees one
28 MiB block. With glibc's allocator this raises the size below which freed memory is
kept for reuse; otherwise every large tensor (a few MB) of a forward pass is served with
fresh pages from the operating system, and a fresh process times page faults, not
arithmetic. A long-running program reaches the same state by itself.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from numbers import Real
from typing import NamedTuple

import torch
from torch import nn

from ._checks import positive_int


class NoisyTimingError(RuntimeError):
    """The per-round values disagree too much for a timing to be reported."""


class Spread(NamedTuple):
    """A median with the lowest and highest of the per-round values it summarises."""

    median: float
    low: float
    high: float

    @property
    def relative_range(self) -> float:
        """``(high - low) / median``: 0 for perfectly repeatable rounds."""
        return (self.high - self.low) / self.median if self.median else float("inf")


class Timings:
    """The per-round medians of interleaved variants, with the conditions they ran under."""

    def __init__(self, rounds: Mapping[str, list[float]], *, calls: int, warmup: int, num_threads: int):
        self.rounds = {name: list(values) for name, values in rounds.items()}
        self.calls, self.warmup, self.num_threads = calls, warmup, num_threads
        self.versions = {"torch": torch.__version__, "python": platform.python_version()}
        self.machine = platform.processor() or platform.machine()

    @property
    def names(self) -> list[str]:
        return list(self.rounds)

    def seconds(self, name: str) -> Spread:
        """The median over rounds of one variant's per-round median time, in seconds."""
        values = self.rounds[self._check_name(name)]
        return Spread(statistics.median(values), min(values), max(values))

    def ratio(self, numerator: str, denominator: str, *, max_relative_range: float = 0.5) -> Spread:
        """How many times as long ``numerator`` takes as ``denominator``, round by round:
        the median of the per-round ratios, with the lowest and highest.

        Raises :class:`NoisyTimingError` when the middle half of the per-round ratios
        (from the lower to the upper quartile) spans more than ``max_relative_range``
        times their median. The default, 0.5, allows quartiles of 1.2 and 1.7 around a
        median of 1.4, but not 1.0 and 2.0; a single stalled round does not count.
        ``float("inf")`` never refuses, for a table that shows the range instead.
        """
        if isinstance(max_relative_range, bool) or not isinstance(max_relative_range, Real) or not max_relative_range > 0:
            raise ValueError(f"max_relative_range must be a number > 0 (inf never refuses), got {max_relative_range!r}")
        top, bottom = self.rounds[self._check_name(numerator)], self.rounds[self._check_name(denominator)]
        per_round = [a / b for a, b in zip(top, bottom)]
        spread = Spread(statistics.median(per_round), min(per_round), max(per_round))
        q1, q3 = _quartiles(per_round)
        if (q3 - q1) > max_relative_range * spread.median:
            raise NoisyTimingError(
                f"the ratio {numerator} / {denominator} ranged from {spread.low:.3g} to "
                f"{spread.high:.3g} over {len(per_round)} rounds (median {spread.median:.3g}, "
                f"quartiles {q1:.3g} and {q3:.3g}); the quartiles are more than "
                f"max_relative_range={max_relative_range:g} times the median apart. "
                "The machine is too busy for this timing: run it again on a quieter machine, "
                "or with more rounds or calls."
            )
        return spread

    def fastest(self) -> str:
        """The variant with the smallest median time."""
        return min(self.rounds, key=lambda name: self.seconds(name).median)

    def describe(self) -> str:
        """One line stating how the numbers were taken, for a caption or a results file."""
        return (
            f"median of {len(next(iter(self.rounds.values())))} interleaved rounds of "
            f"{self.calls} calls each (after {self.warmup} warm-up calls), "
            f"{self.num_threads} CPU thread{'s' if self.num_threads > 1 else ''}, "
            f"torch {self.versions['torch']}"
        )

    def _check_name(self, name: str) -> str:
        if name not in self.rounds:
            raise KeyError(f"no variant named {name!r}; the variants are {', '.join(map(repr, self.rounds))}")
        return name

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={self.seconds(name).median * 1e3:.3g} ms" for name in self.rounds)
        return f"Timings({parts}; {self.describe()})"


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartiles, interpolated between the sorted values (the
    "inclusive" method of :func:`statistics.quantiles`)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


_allocator_settled = False


def _settle_allocator() -> None:
    """Allocate, touch and free one 28 MiB block, once per process (see the module doc)."""
    global _allocator_settled
    if not _allocator_settled:
        block = torch.empty(28 * 2**20, dtype=torch.uint8)
        block.fill_(0)
        del block
        _allocator_settled = True


def compare(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 7,
    calls: int = 10,
    warmup: int = 3,
    num_threads: int = 1,
    grad: bool = False,
) -> Timings:
    """Time each variant, a callable without arguments, interleaved with the others.

    Every variant is first called ``warmup`` times untimed. Then, in each of ``rounds``
    rounds, the variants take turns (the order rotates by one each round) and each runs
    ``calls`` times, each call timed on its own; the round keeps the median call. Runs
    without autograd unless ``grad=True`` (to time training steps), with the CPU thread
    count fixed to ``num_threads`` and restored afterwards. The first call in a process
    settles the memory allocator first (see the module doc).
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping from names to callables")
    for name, run in variants.items():
        if not callable(run):
            raise TypeError(f"variants[{name!r}] must be a callable taking no arguments, got {type(run).__name__}")
    rounds = positive_int("rounds", rounds)
    calls = positive_int("calls", calls)
    warmup = positive_int("warmup", warmup)
    num_threads = positive_int("num_threads", num_threads)
    names = list(variants)
    _settle_allocator()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with contextlib.nullcontext() if grad else torch.no_grad():
            for name in names:
                for _ in range(warmup):
                    variants[name]()
            per_round: dict[str, list[float]] = {name: [] for name in names}
            for r in range(rounds):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    run, times = variants[name], []
                    for _ in range(calls):
                        start = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - start)
                    per_round[name].append(statistics.median(times))
    finally:
        torch.set_num_threads(threads_before)
    return Timings(per_round, calls=calls, warmup=warmup, num_threads=num_threads)


def compare_modules(
    modules: Mapping[str, nn.Module], x: torch.Tensor, **options
) -> Timings:
    """:func:`compare` for modules called on the same input, in eval mode (modes restored)."""
    if not isinstance(modules, Mapping) or not modules:
        raise ValueError("modules must be a non-empty mapping from names to torch.nn.Module")
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{name!r}] must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    modes = {name: module.training for name, module in modules.items()}
    try:
        for module in modules.values():
            module.eval()
        return compare({name: (lambda m=module: m(x)) for name, module in modules.items()}, **options)
    finally:
        for name, module in modules.items():
            module.train(modes[name])


def median_seconds(module: nn.Module, x: torch.Tensor, **options) -> float:
    """The median time of one call ``module(x)`` in eval mode, in seconds (see :func:`compare`)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return compare_modules({"module": module}, x, **options).seconds("module").median


def main(argv: list[str] | None = None) -> None:
    """``python -m mbv2.benchmark``: the runtime table of MobileNetV2 on this machine's CPU."""
    import argparse

    from .deploy import compiler_available, runtimes

    parser = argparse.ArgumentParser(
        prog="python -m mbv2.benchmark",
        description="Time MobileNetV2 (batch 1) in several runtimes on this CPU, interleaved "
        "in rounds; print the median time per image, the range of the round medians and the "
        "speed-up over PyTorch eager.",
    )
    parser.add_argument("--resolution", type=int, default=224, help="input side in pixels (224)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (1 2)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per round (10)")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile (needs a C++ compiler; compiling takes a minute)")
    args = parser.parse_args(argv)
    if args.compile and not compiler_available():
        parser.error("--compile needs a C++ compiler (c++, g++ or clang++) on the PATH")

    from .model import MobileNetV2

    model = MobileNetV2(width_mult=args.width).eval()
    for threads in args.threads:
        torch.set_num_threads(threads)  # export and session creation use the same count
        variants = runtimes(model, args.resolution, num_threads=threads, compile=args.compile, int8=True)
        timings = compare(variants, rounds=args.rounds, calls=args.calls, num_threads=threads)
        print(f"\nMobileNetV2 {args.width:g}, {args.resolution}×{args.resolution}, batch 1: "
              f"{timings.describe()}")
        print(f"{'runtime':36} {'ms':>7} {'range (ms)':>15} {'speed-up over eager':>22}")
        for name in timings.names:
            time = timings.seconds(name)
            # Per-round ratios; reported with their range rather than refused when noisy.
            speedup = timings.ratio("PyTorch eager", name, max_relative_range=float("inf"))
            print(f"{name:36} {time.median * 1e3:7.2f} {time.low * 1e3:7.2f}–{time.high * 1e3:<7.2f} "
                  f"{speedup.median:8.2f} ({speedup.low:.2f}–{speedup.high:.2f})")


if __name__ == "__main__":
    main()
