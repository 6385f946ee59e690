"""The peak activation memory of a forward pass, measured two independent ways.

* :func:`allocator_peak` asks PyTorch's profiler (``profile_memory=True``), which records
  every allocation and free of the CPU allocator with the running total; the peak of that
  total is what the process really had to hold, kernels' scratch buffers included.
* :func:`tensor_peak` follows the tensors themselves: it sees every operation's outputs
  (through a ``TorchDispatchMode``) and adds a tensor's bytes when it is made and takes
  them off when it is freed. It cannot see memory a kernel uses internally, so it is at
  most the allocator's peak; where the two agree, the peak is made of tensors, and the
  tensors alive at that moment say what the framework kept.

Both count only what the forward pass allocates: the weights and the input exist before
it and are left out. Both run the model without autograd (``torch.inference_mode``), on
the CPU, after one untimed warm-up call.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import weakref
from typing import NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorPeak", "allocator_peak", "tensor_peak", "tensor_timeline"]


class TensorPeak(NamedTuple):
    """The largest total of live tensor bytes during a forward pass, and the moment it
    was reached: the operation that had just run and the sizes of the tensors alive."""

    bytes: int
    operation: str
    alive: tuple[int, ...]  #: bytes of each live tensor at the peak, largest first


class _LiveTensors(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.alive: dict[int, int] = {}
        self.total = 0
        self.peak = TensorPeak(0, "", ())
        self.timeline: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.alive:  # a view or an in-place result holds no new memory
                    self.alive[key] = storage.nbytes()
                    self.total += storage.nbytes()
                    weakref.finalize(tensor, self._free, key)
        self.timeline.append((str(func.overloadpacket.__name__), self.total))
        if self.total > self.peak.bytes:
            sizes = tuple(sorted(self.alive.values(), reverse=True))
            self.peak = TensorPeak(self.total, str(func.overloadpacket.__name__), sizes)
        return out

    def _free(self, key: int) -> None:
        self.total -= self.alive.pop(key, 0)


def tensor_peak(model: nn.Module, x: torch.Tensor) -> TensorPeak:
    """The peak of live tensor bytes made while ``model(x)`` runs (see the module doc)."""
    return _run(model, x).peak


def tensor_timeline(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int]]:
    """The live tensor bytes after each operation of ``model(x)``, in order: a list of
    (operation name, bytes), whose largest value is :func:`tensor_peak`'s."""
    return _run(model, x).timeline


def _run(model: nn.Module, x: torch.Tensor) -> _LiveTensors:
    _check(model, x)
    with _eval(model), torch.inference_mode():
        model(x)
        with _LiveTensors() as live:
            model(x)
    return live


def allocator_peak(model: nn.Module, x: torch.Tensor) -> int:
    """The peak bytes the CPU allocator held during ``model(x)``, from PyTorch's profiler.

    The profiler's own progress lines on stderr are silenced while it runs.
    """
    _check(model, x)
    from torch.profiler import ProfilerActivity, profile

    with _eval(model), torch.inference_mode():
        model(x)
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        with _quiet_stderr():
            prof.export_chrome_trace(trace)
        with open(trace) as file:
            events = json.load(file)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    if not totals:
        raise RuntimeError("the profiler recorded no CPU allocation; cannot measure the peak")
    return max(totals)


def _check(model: object, x: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"x must be on the CPU, got device {x.device}")


@contextlib.contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side writes there directly."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
