"""Wall-clock timing of a module on the CPU, for the chapters that compare speed."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ._checks import positive_int


def median_seconds(
    module: nn.Module, x: torch.Tensor, *, repeats: int = 30, warmup: int = 5, num_threads: int = 1
) -> float:
    """The median wall time of one call ``module(x)``, in seconds.

    The module runs in eval mode without gradients, ``warmup`` times untimed and then
    ``repeats`` times, each call timed on its own; the median ignores the occasional slow
    call on a shared machine. ``num_threads`` fixes the number of CPU threads for the
    measurement (and is restored afterwards) so that runs are comparable.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    repeats = positive_int("repeats", repeats)
    warmup = positive_int("warmup", warmup)
    num_threads = positive_int("num_threads", num_threads)
    was_training, threads_before = module.training, torch.get_num_threads()
    module.eval()
    torch.set_num_threads(num_threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                module(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - start)
    finally:
        module.train(was_training)
        torch.set_num_threads(threads_before)
    return statistics.median(times)
