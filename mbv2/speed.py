"""Latency against multiply-adds (Section 6.1, Table 4, Figure 5), measured on this CPU.

The paper argues in multiply-adds and adds one latency column, measured on one large core
of a Google Pixel 1 phone with TensorFlow Lite (Table 4). This module measures the same
relation here:

* :data:`RELEASED_CHECKPOINTS` and :data:`TABLE_4`: the printed milliseconds, for comparison;
* :func:`latency_grid`: batch-1 latency over a grid of width multipliers and resolutions
  (Figure 5's grid), in PyTorch eager and in ONNX Runtime, all points interleaved;
* :func:`fit_latency`: ``time = overhead + madds * seconds_per_madd``, fitted to relative
  error, with each point's relative residual;
* :func:`layer_times`: the time of every convolution of one forward pass, with its
  multiply-adds and kind (full, depthwise or pointwise), to see where the time goes;
* :func:`matmul_flops`: the floating-point rate this CPU reaches on a large matrix
  product, the practical ceiling the networks' rates are compared with.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ._checks import one_of, positive_int
from .benchmark import Spread, Timings, compare
from .cost import count_madds
from .deploy import export_onnx, fold_batch_norm, onnx_session
from .model import MobileNetV2

class Checkpoint(NamedTuple):
    """A released MobileNetV2 checkpoint: its multiply-adds as printed (millions, rounded
    down) and its time per image on one large core of a Pixel 1 with TF-Lite."""

    madds_millions: int
    pixel_1_ms: float


#: The checkpoint table of the reference implementation's README (tensorflow/models,
#: research/slim/nets/mobilenet), by (width multiplier, resolution).
RELEASED_CHECKPOINTS: dict[tuple[float, int], Checkpoint] = {
    (1.4, 224): Checkpoint(582, 138.0), (1.3, 224): Checkpoint(509, 123.0),
    (1.0, 224): Checkpoint(300, 73.8), (1.0, 192): Checkpoint(221, 55.1), (1.0, 160): Checkpoint(154, 40.2),
    (1.0, 128): Checkpoint(99, 27.6), (1.0, 96): Checkpoint(56, 17.6),
    (0.75, 224): Checkpoint(209, 55.8), (0.75, 192): Checkpoint(153, 41.6), (0.75, 160): Checkpoint(107, 30.4),
    (0.75, 128): Checkpoint(69, 21.9), (0.75, 96): Checkpoint(39, 14.2),
    (0.5, 224): Checkpoint(97, 28.7), (0.5, 192): Checkpoint(71, 21.1), (0.5, 160): Checkpoint(50, 14.9),
    (0.5, 128): Checkpoint(32, 9.9), (0.5, 96): Checkpoint(18, 6.4),
    (0.35, 224): Checkpoint(59, 19.7), (0.35, 192): Checkpoint(43, 14.6), (0.35, 160): Checkpoint(30, 10.5),
    (0.35, 128): Checkpoint(20, 6.9), (0.35, 96): Checkpoint(11, 4.5),
}


class Table4Row(NamedTuple):
    """A row of the paper's Table 4 with a latency: millions of multiply-adds and ms on the Pixel 1."""

    network: str
    madds_millions: int
    pixel_1_ms: int


#: The rows of Table 4 that print a latency (ShuffleNet has none).
TABLE_4: tuple[Table4Row, ...] = (
    Table4Row("MobileNetV1", 575, 113),
    Table4Row("NasNet-A", 564, 183),
    Table4Row("MobileNetV2", 300, 75),
    Table4Row("MobileNetV2 (1.4)", 585, 143),
)

#: Figure 5's grid: every width at every resolution, and width 1.4 at 224 only.
FIGURE_5_WIDTHS = (0.35, 0.5, 0.75, 1.0)
FIGURE_5_RESOLUTIONS = (96, 128, 160, 192, 224)
RUNTIMES = ("PyTorch eager", "ONNX Runtime")


def figure_5_grid(widths: Sequence[float] = FIGURE_5_WIDTHS,
                  resolutions: Sequence[int] = FIGURE_5_RESOLUTIONS) -> list[tuple[float, int]]:
    """The (width, resolution) points of Figure 5 for the given widths and resolutions, and
    (1.4, 224), as the paper plots width 1.4 at 224 only."""
    points = [(float(w), positive_int("resolution", r)) for w in widths for r in resolutions]
    return points + [(1.4, 224)]


class GridPoint(NamedTuple):
    """One network of the grid in one runtime: its multiply-adds and its time per image."""

    width: float
    resolution: int
    runtime: str
    madds: int
    seconds: Spread


def latency_grid(
    points: Sequence[tuple[float, int]],
    runtimes: Sequence[str] = RUNTIMES,
    *,
    num_threads: int = 1,
    rounds: int = 5,
    calls: int = 3,
    workdir: str | Path | None = None,
) -> tuple[list[GridPoint], Timings]:
    """Time MobileNetV2 (batch 1, random weights: the time does not depend on the values)
    at every (width, resolution) of ``points`` in each of ``runtimes`` ("PyTorch eager":
    the model as it is; "ONNX Runtime": BN folded, one export per width with a free input
    size). All networks and runtimes are interleaved in one :func:`~mbv2.benchmark.compare`
    call, so a busy spell slows all of them alike.
    """
    import tempfile

    if not points:
        raise ValueError("points must name at least one (width, resolution)")
    for runtime in runtimes:
        one_of("runtimes", runtime, RUNTIMES)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mbv2-grid-"))
    models, files, variants, madds = {}, {}, {}, {}
    generator = torch.Generator().manual_seed(0)
    for width, resolution in points:
        if width not in models:
            models[width] = MobileNetV2(width_mult=width).eval()
            if "ONNX Runtime" in runtimes:
                files[width] = export_onnx(fold_batch_norm(models[width]), folder / f"width-{width:g}.onnx",
                                           resolution, dynamic_size=True)
        x = torch.randn(1, 3, resolution, resolution, generator=generator)
        madds[width, resolution] = count_madds(models[width], resolution)
        if "PyTorch eager" in runtimes:
            variants["PyTorch eager", width, resolution] = lambda m=models[width], x=x: m(x)
        if "ONNX Runtime" in runtimes:
            # One session per input size: a session plans its memory for the sizes it sees.
            session, feed = onnx_session(files[width], num_threads=num_threads), {"images": x.numpy()}
            variants["ONNX Runtime", width, resolution] = lambda s=session, f=feed: s.run(None, f)
    names = {key: " | ".join(map(str, key)) for key in variants}
    timings = compare({names[key]: run for key, run in variants.items()}, rounds=rounds, calls=calls,
                      warmup=2, num_threads=num_threads)
    grid = [GridPoint(w, r, runtime, madds[w, r], timings.seconds(names[runtime, w, r]))
            for (runtime, w, r) in variants]
    return grid, timings


class LatencyFit(NamedTuple):
    """``seconds = overhead + madds * seconds_per_madd``, fitted to relative error."""

    overhead: float  #: seconds per image that do not grow with the multiply-adds
    seconds_per_madd: float
    relative_residuals: np.ndarray  #: (measured - fitted) / fitted, point by point

    def predict(self, madds) -> np.ndarray:
        return self.overhead + np.asarray(madds, dtype=float) * self.seconds_per_madd

    @property
    def madds_per_second(self) -> float:
        """The rate at which the multiply-adds beyond the overhead are done."""
        return 1 / self.seconds_per_madd


def fit_latency(madds: Sequence[float], seconds: Sequence[float]) -> LatencyFit:
    """Least squares fit of a line to time against multiply-adds, each point weighted by
    one over its time, so that a 2-ms network counts as much as a 100-ms one (the errors
    minimised are relative)."""
    m, t = np.asarray(madds, dtype=float), np.asarray(seconds, dtype=float)
    if m.ndim != 1 or m.shape != t.shape or len(m) < 2:
        raise ValueError(f"madds and seconds must be two equally long sequences of at least 2 numbers, "
                         f"got shapes {m.shape} and {t.shape}")
    if not (np.all(t > 0) and np.all(m > 0)):
        raise ValueError("madds and seconds must be positive")
    design = np.stack([np.ones_like(m), m], axis=1) / t[:, None]
    (overhead, slope), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    fitted = overhead + slope * m
    return LatencyFit(float(overhead), float(slope), (t - fitted) / fitted)


class LayerTime(NamedTuple):
    """One convolution of a forward pass: where it is, what kind, its cost and its time."""

    name: str  #: the ConvBNAct's name in the model, e.g. ``stages.1.0.depthwise``
    kind: str  #: "full" (the stem), "depthwise" or "pointwise" (1x1)
    madds: int
    seconds: float  #: median over the calls, batch norm and activation included


def conv_kind(weight_shape: Sequence[int], groups: int) -> str:
    """'depthwise' (one filter per channel), 'pointwise' (1x1) or 'full', from a
    convolution's weight shape (out, in / groups, kh, kw) and its group count."""
    out_channels, per_group, kh, kw = weight_shape
    if groups > 1 and per_group == 1 and groups == out_channels:
        return "depthwise"
    return "pointwise" if (kh, kw) == (1, 1) else "full"


def layer_times(model: nn.Module, x: torch.Tensor, *, calls: int = 10, num_threads: int = 1
                ) -> tuple[list[LayerTime], float]:
    """Time every convolution (with its batch norm and activation) of ``model(x)``, in
    eager mode, over ``calls`` forward passes (after one untimed), and the whole pass.

    Returns the layers, in the order they run, and the median time of a whole pass; the
    part of that time outside the layers is the rest (residual additions, pooling, the
    classifier, Python). Multiply-adds come from each layer's own output shape, so they
    do not rely on :mod:`mbv2.cost` (the tests check the two agree). The timing hooks
    cost about a microsecond per layer.
    """
    from .layers import ConvBNAct

    calls = positive_int("calls", calls)
    num_threads = positive_int("num_threads", num_threads)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ConvBNAct)}
    if not layers:
        raise ValueError("model has no mbv2.ConvBNAct layer to time")
    started, seconds, madds = {}, {name: [] for name in layers}, {}

    def before(name):
        def hook(module, inputs):
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(module, inputs, output):
            seconds[name].append(time.perf_counter() - started[name])
            conv = module.conv
            per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
            madds[name] = output[0].numel() * per_output
        return hook

    handles = [h for name, m in layers.items()
               for h in (m.register_forward_pre_hook(before(name)), m.register_forward_hook(after(name)))]
    threads_before, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(num_threads)
    model.eval()
    totals = []
    try:
        with torch.no_grad():
            model(x)
            for times in seconds.values():
                times.clear()
            for _ in range(calls):
                start = time.perf_counter()
                model(x)
                totals.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(threads_before)
        model.train(was_training)
    rows = [LayerTime(name, conv_kind(m.conv.weight.shape, m.conv.groups), madds[name],
                      statistics.median(seconds[name]))
            for name, m in layers.items()]
    return rows, statistics.median(totals)


def onnx_layer_times(path: str | Path, x: torch.Tensor, *, model: nn.Module | None = None, calls: int = 10,
                     num_threads: int = 1) -> tuple[list[LayerTime], float]:
    """:func:`layer_times` for the ONNX file at ``path`` run by ONNX Runtime: every
    convolution node (with the bias and activation that ONNX Runtime fuses into it), timed
    by ONNX Runtime's own profiler over ``calls`` runs after one untimed, and the median
    time of a whole run as the profiler sees it.

    Names are ONNX Runtime's node names, and kinds and multiply-adds come from the shapes
    its profiler records; these are the shapes it computes, with channel counts rounded
    up to its blocked layout (for example 24 channels computed as 32). With ``model`` (the
    network the file was exported from), each node takes the name and the multiply-adds
    of the model's layer at the same place instead, after a check that the kinds agree.
    """
    import json
    import tempfile

    calls = positive_int("calls", calls)
    with tempfile.TemporaryDirectory(prefix="mbv2-ort-profile-") as folder:
        session = onnx_session(path, num_threads=num_threads, profile_prefix=Path(folder) / "profile")
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(calls + 1):
            session.run(None, feed)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    runs = [e["dur"] * 1e-6 for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    nodes: dict[str, list] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and args.get("op_name") in ("Conv", "FusedConv"):
            nodes.setdefault(event["name"][: -len("_kernel_time")], []).append(event)
    if not runs or not nodes:
        raise RuntimeError("ONNX Runtime's profile has no run or no convolution to time")
    rows = []
    for name, seen in nodes.items():
        inputs = seen[0]["args"]["input_type_shape"]
        in_shape, weight = inputs[0]["float"], inputs[1]["float"]
        out_shape = seen[0]["args"]["output_type_shape"][0]["float"]
        groups = in_shape[1] // weight[1]
        madds = math.prod(out_shape[1:]) * weight[1] * weight[2] * weight[3]
        seconds = statistics.median(e["dur"] * 1e-6 for e in seen[1:])  # the first run is the warm-up
        rows.append(LayerTime(name, conv_kind(weight, groups), madds, seconds))
    if model is not None:
        layers, _ = layer_times(model, x, calls=1)
        if [row.kind for row in rows] != [layer.kind for layer in layers]:
            raise ValueError("the ONNX file's convolutions do not match model's, layer by layer")
        rows = [row._replace(name=layer.name, madds=layer.madds) for row, layer in zip(rows, layers)]
    return rows, statistics.median(runs[1:])


def matmul_flops(*, size: int = 1024, num_threads: int = 1, rounds: int = 5, calls: int = 5) -> Spread:
    """Floating-point operations per second of a float32 ``size`` x ``size`` matrix product
    (2 size³ operations) on ``num_threads`` threads: the rate a well-tuned kernel reaches on
    this CPU, the practical ceiling for convolutions (a multiply-add is 2 operations)."""
    size = positive_int("size", size)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    timings = compare({"matmul": lambda: torch.mm(a, b)}, rounds=rounds, calls=calls, num_threads=num_threads)
    t = timings.seconds("matmul")
    operations = 2 * size**3
    return Spread(operations / t.median, operations / t.high, operations / t.low)
