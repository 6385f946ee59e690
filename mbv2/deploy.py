"""Preparing a trained network for inference: batch norm folded, ONNX export, and the
ways to run it that the speed chapter compares (:func:`runtimes`).

In inference, batch norm is a fixed affine map per channel,
``bn(y) = γ (y − μ) / √(σ² + ε) + β``, and it follows a convolution, which is linear. The two
fold into one convolution with a bias: each output channel's weights are scaled by
``s = γ / √(σ² + ε)`` and the bias is ``β − s μ``. The folded network computes the same
function with fewer operations and no batch-norm layers, which is why the paper (and this
book's :mod:`mbv2.cost`) counts no multiply-adds for batch norm.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ._checks import positive_int
from .layers import ConvBNAct
from .metrics import relative_error

__all__ = [
    "compiler_available", "export_onnx", "fold_batch_norm", "fold_conv_bn", "onnx_session", "runtimes",
    "torchscript_frozen",
]

#: The ONNX operator set :func:`export_onnx` writes (supported by onnxruntime >= 1.14).
ONNX_OPSET = 18
#: How far (relative error of the logits) the int8 variant of :func:`runtimes` may be
#: from the eager model: the trained network's int8 logits are typically 0.1 to 0.2 away;
#: a broken graph (wrong layout, lost scale) is near 1 or beyond.
INT8_TOLERANCE = 0.5
#: The largest height and width of an export with ``dynamic_size=True``.
MAX_DYNAMIC_SIZE = 1024


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution, with a bias, equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"bn has {bn.num_features} channels but conv has {conv.out_channels} outputs")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn must track running statistics (track_running_stats=True)")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        bias = shift if conv.bias is None else shift + scale * conv.bias
        folded = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
            padding_mode=conv.padding_mode,
        ).to(conv.weight.dtype)
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_(bias)
    return folded


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model``, in eval mode, with every ``ConvBNAct``'s batch norm folded into
    its convolution (the batch norm becomes ``nn.Identity``, so module names are kept).

    The copy's outputs equal those of ``model.eval()`` up to float rounding. ``model``
    itself is not changed. Works for :class:`mbv2.MobileNetV2` and
    :class:`mbv2.mobilenet_v1.MobileNetV1`, which build every convolution as a
    ``ConvBNAct``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    layers = [m for m in folded.modules() if isinstance(m, ConvBNAct)]
    if not layers:
        raise ValueError("model has no mbv2.ConvBNAct layer whose batch norm could be folded")
    for layer in layers:
        if isinstance(layer.bn, nn.BatchNorm2d):
            layer.conv = fold_conv_bn(layer.conv, layer.bn)
            layer.bn = nn.Identity()
    return folded


def export_onnx(model: nn.Module, path: str | Path, resolution: int = 224, *, dynamic_size: bool = False) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file at ``path`` and return the path.

    The graph takes a float32 batch of shape (N, 3, resolution, resolution) with N free
    (a dynamic batch dimension) and uses ONNX opset :data:`ONNX_OPSET`; it is written by
    PyTorch's ``torch.export``-based exporter (``dynamo=True``), weights included (no
    separate data file). With ``dynamic_size=True`` the height and width are free too (from one pixel more than
    ``model.min_input_size``, or 33, up to 1,024), so that one file serves every input
    resolution; ``resolution`` is then only the size of the example that is traced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    resolution = positive_int("resolution", resolution)
    if not isinstance(dynamic_size, bool):
        raise TypeError(f"dynamic_size must be True or False, got {dynamic_size!r}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    (name,) = _forward_argument_names(model)
    axes = {0: torch.export.Dim("batch")}
    if dynamic_size:
        # At model.min_input_size the last feature map is 1×1, a case torch.export
        # specialises; starting one pixel above keeps the sizes symbolic.
        smallest = getattr(model, "min_input_size", 32) + 1
        axes[2] = torch.export.Dim("height", min=smallest, max=MAX_DYNAMIC_SIZE)
        axes[3] = torch.export.Dim("width", min=smallest, max=MAX_DYNAMIC_SIZE)
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(2, 3, resolution, resolution)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports its steps
            torch.onnx.export(
                model, (example,), path, dynamo=True, verbose=False, opset_version=ONNX_OPSET,
                dynamic_shapes={name: axes}, input_names=["images"], output_names=["logits"],
                external_data=False,  # one self-contained file
            )
    finally:
        model.train(was_training)
    return path


def onnx_session(path: str | Path, *, num_threads: int = 1, profile_prefix: str | Path | None = None):
    """An ONNX Runtime session for the file at ``path`` on the CPU, with all graph
    optimisations and ``num_threads`` threads for each operator (one inter-op thread).
    With ``profile_prefix``, ONNX Runtime's profiler records every run to a JSON file
    starting with that path (``session.end_profiling()`` returns its name).

    Idle worker threads sleep instead of spinning: a spinning session keeps a core busy
    for a while after each run, which slows whatever runs next, another session timed
    side by side in particular (with two sessions on two threads, int8 ran at twice its
    time). A program that only ever runs one session may gain a few percent by allowing
    spinning (``session.intra_op.allow_spinning``).
    """
    import onnxruntime

    num_threads = positive_int("num_threads", num_threads)
    if not Path(path).is_file():
        raise FileNotFoundError(f"path must be an existing ONNX file, got {str(path)!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torchscript_frozen(model: nn.Module, resolution: int = 224) -> torch.jit.ScriptModule:
    """``model`` traced by TorchScript, frozen (weights become constants, batch norm is
    folded) and optimised for inference (on CPUs with oneDNN, convolutions are rewritten
    to its blocked layout). TorchScript is deprecated in favour of ``torch.export`` and
    ``torch.compile``; it is here because it is still the fastest way PyTorch 2 runs this
    network on a CPU without a compiler, and its deprecation warnings are silenced."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    resolution = positive_int("resolution", resolution)
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        traced = torch.jit.trace(model, torch.zeros(1, 3, resolution, resolution))
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def compiler_available() -> bool:
    """Whether ``torch.compile``'s CPU back end can run here: it needs a C++ compiler."""
    import shutil

    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def _forward_argument_names(model: nn.Module) -> list[str]:
    import inspect

    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) != 1:
        raise ValueError(f"model.forward must take one tensor, it takes {names}")
    return names


def runtimes(
    model: nn.Module, resolution: int = 224, *, num_threads: int = 1, workdir: str | Path | None = None,
    compile: bool = False, int8: bool = False, image: torch.Tensor | None = None,
) -> dict:
    """Ways to run ``model`` on one image, as callables without arguments for
    :func:`mbv2.benchmark.compare`, each checked to agree with the eager model.

    * ``"PyTorch eager"``: the model as trained, batch norm and all;
    * ``"PyTorch, BN folded"``: :func:`fold_batch_norm`;
    * ``"PyTorch, BN folded, channels-last"``: the same with NHWC tensors, the layout
      PyTorch's CPU convolutions prefer;
    * ``"TorchScript, frozen"``: :func:`torchscript_frozen`;
    * ``"torch.compile"`` (only with ``compile=True``, which needs a C++ compiler, see
      :func:`compiler_available`): the folded model compiled by TorchInductor; compiling
      takes tens of seconds;
    * ``"ONNX Runtime"``: the folded model exported by :func:`export_onnx` and run by
      onnxruntime with all its graph optimisations (:func:`onnx_session`);
    * ``"ONNX Runtime, int8"`` (only with ``int8=True``): that file quantized to 8-bit
      integers by :func:`mbv2.int8.quantize_onnx` (per-channel weights, the classifier
      kept in float32, activation ranges from :func:`mbv2.int8.calibration_crops`). Its
      outputs only approximate the others': its logits are checked to be within a relative
      error of :data:`INT8_TOLERANCE` of the eager model's, not to equal them.

    Each variant runs the model on ``image`` (one image, ``(1, 3, resolution,
    resolution)``; random by default) and on ``num_threads`` threads when timed with the
    same count. ``workdir`` holds the ONNX files ``model.onnx`` and ``model.int8.onnx``
    (a temporary folder by default).
    """
    import tempfile

    resolution = positive_int("resolution", resolution)
    num_threads = positive_int("num_threads", num_threads)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    if compile and not compiler_available():
        raise RuntimeError("compile=True needs a C++ compiler (c++, g++ or clang++) on the PATH")
    if not isinstance(int8, bool):
        raise TypeError(f"int8 must be True or False, got {int8!r}")
    if image is None:
        x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    elif not isinstance(image, torch.Tensor) or tuple(image.shape) != (1, 3, resolution, resolution):
        raise ValueError(f"image must be a tensor of shape (1, 3, {resolution}, {resolution}), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    else:
        x = image
    model = copy.deepcopy(model).eval()
    folded = fold_batch_norm(model)
    nhwc_model = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    scripted = torchscript_frozen(folded, resolution)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mbv2-onnx-"))
    float_path = export_onnx(folded, folder / "model.onnx", resolution)
    session = onnx_session(float_path, num_threads=num_threads)
    feed = {"images": x.numpy()}
    variants = {
        "PyTorch eager": lambda: model(x),
        "PyTorch, BN folded": lambda: folded(x),
        "PyTorch, BN folded, channels-last": lambda: nhwc_model(nhwc),
        "TorchScript, frozen": lambda: scripted(x),
    }
    if compile:
        compiled = torch.compile(folded)
        variants["torch.compile"] = lambda: compiled(x)
    variants["ONNX Runtime"] = lambda: session.run(None, feed)[0]
    with torch.no_grad():
        reference = model(x)
        for name, run in variants.items():
            out = torch.as_tensor(run())
            if not torch.allclose(out, reference, rtol=1e-3, atol=1e-3):
                raise RuntimeError(f"{name} disagrees with the eager model: the runtimes cannot be compared")
    if int8:
        from . import int8 as int8_module

        calibration = int8_module.calibration_crops(size=resolution).images
        path = int8_module.quantize_onnx(folded, calibration, folder / "model.int8.onnx", per_channel=True,
                                         keep_float=int8_module.CLASSIFIER, float_path=float_path)
        session_int8 = onnx_session(path, num_threads=num_threads)
        variants["ONNX Runtime, int8"] = lambda: session_int8.run(None, feed)[0]
        error = relative_error(reference, torch.as_tensor(variants["ONNX Runtime, int8"]()))
        if not error < INT8_TOLERANCE:
            raise RuntimeError(f"ONNX Runtime, int8 is too far from the eager model (relative error of the "
                               f"logits {error:.3g}, more than {INT8_TOLERANCE}): something is broken")
    return variants
