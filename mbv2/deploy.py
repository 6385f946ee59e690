"""Preparing a trained network for inference: batch norm folded, ONNX export.

In inference, batch norm is a fixed affine map per channel,
``bn(y) = γ (y − μ) / √(σ² + ε) + β``, and it follows a convolution, which is linear. The two
fold into one convolution with a bias: each output channel's weights are scaled by
``s = γ / √(σ² + ε)`` and the bias is ``β − s μ``. The folded network computes the same
function with fewer operations and no batch-norm layers, which is why the paper (and this
book's :mod:`mbv2.cost`) counts no multiply-adds for batch norm.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ._checks import positive_int
from .layers import ConvBNAct

__all__ = ["export_onnx", "fold_batch_norm", "fold_conv_bn", "runtimes"]

#: The ONNX operator set :func:`export_onnx` writes (supported by onnxruntime >= 1.14).
ONNX_OPSET = 18


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


def export_onnx(model: nn.Module, path: str | Path, resolution: int = 224) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file at ``path`` and return the path.

    The graph takes a float32 batch of shape (N, 3, resolution, resolution) with N free
    (a dynamic batch dimension) and uses ONNX opset :data:`ONNX_OPSET`; it is written by
    PyTorch's ``torch.export``-based exporter (``dynamo=True``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    resolution = positive_int("resolution", resolution)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(2, 3, resolution, resolution)
        (name,) = _forward_argument_names(model)
        torch.onnx.export(
            model, (example,), path, dynamo=True, verbose=False, opset_version=ONNX_OPSET,
            dynamic_shapes={name: {0: torch.export.Dim("batch")}}, input_names=["images"],
            output_names=["logits"],
        )
    finally:
        model.train(was_training)
    return path


def _forward_argument_names(model: nn.Module) -> list[str]:
    import inspect

    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) != 1:
        raise ValueError(f"model.forward must take one tensor, it takes {names}")
    return names


def runtimes(model: nn.Module, resolution: int = 224, *, num_threads: int = 1, workdir: str | Path | None = None) -> dict:
    """Ways to run ``model`` on one image, as callables without arguments for
    :func:`mbv2.benchmark.compare`, each checked to agree with the eager model.

    * ``"PyTorch eager"``: the model as trained, batch norm and all;
    * ``"PyTorch, BN folded"``: :func:`fold_batch_norm`;
    * ``"PyTorch, BN folded, channels-last"``: the same with NHWC tensors, the layout
      PyTorch's CPU convolutions prefer;
    * ``"ONNX Runtime"``: the folded model exported by :func:`export_onnx` and run by
      onnxruntime with all its graph optimisations, on ``num_threads`` threads.

    ``workdir`` holds the ONNX file (a temporary folder by default).
    """
    import tempfile

    import onnxruntime

    resolution = positive_int("resolution", resolution)
    num_threads = positive_int("num_threads", num_threads)
    model = copy.deepcopy(model).eval()
    folded = fold_batch_norm(model)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    nhwc_model = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mbv2-onnx-"))
    path = export_onnx(folded, folder / "model.onnx", resolution)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    variants = {
        "PyTorch eager": lambda: model(x),
        "PyTorch, BN folded": lambda: folded(x),
        "PyTorch, BN folded, channels-last": lambda: nhwc_model(nhwc),
        "ONNX Runtime": lambda: session.run(None, feed)[0],
    }
    with torch.no_grad():
        reference = model(x)
        for name, run in variants.items():
            out = torch.as_tensor(run())
            if not torch.allclose(out, reference, rtol=1e-3, atol=1e-3):
                raise RuntimeError(f"{name} disagrees with the eager model: the runtimes cannot be compared")
    return variants
