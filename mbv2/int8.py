"""8-bit post-training quantization of the trained MobileNetV2 for ONNX Runtime.

Post-training quantization stores each convolution's weights as 8-bit integers with a
scale, and each activation tensor as 8-bit integers with a scale and zero point chosen on
*calibration* images. This module builds the variants the speed chapter compares, runs
them in ONNX Runtime and measures how far their predictions move from float32:

* **Photographs.** :func:`evaluation_crops` cuts square crops (centre and corners, and
  their mirror images) from the twelve object photographs of :mod:`mbv2.photos`;
  :func:`calibration_crops` cuts them from the *separate* calibration photographs
  (:func:`mbv2.photos.calibration_photo_names`), so that no evaluation photograph
  influences a quantization range. ImageNet itself is not available to the book.
* **Quantization by ONNX Runtime** (:func:`quantize_onnx`): static quantization in the
  QDQ format, weights int8 and symmetric (``[-127, 127]``, zero point 0), per tensor or
  per output channel; activations uint8 with a zero point (asymmetric) by default, the
  pairing (u8 activations, s8 weights) that x86 integer dot products take, with ranges
  from calibration by MinMax (default), Entropy or Percentile.
* **Data-Free Quantization** (Nagel et al. 2019, "Data-Free Quantization Through Weight
  Equalization and Bias Correction", ICCV):

  - :func:`replace_relu6`: ReLU in place of ReLU6. Equalisation rescales a channel by a
    positive factor ``s`` on one side of an activation and by ``1/s`` on the other, which
    is exact only if ``f(x / s) = f(x) / s``: true for ReLU, false for ReLU6, whose
    clipping point 6 would move to ``6 / s``.
  - :func:`equalise` (cross-layer equalisation): in each chain of convolutions joined only
    by ReLUs (the stem or a block's expansion, its depthwise and its projection; the head
    and the classifier), channel ``i`` of a layer's output is divided by
    ``s_i = sqrt(r1_i / r2_i)`` and the next layer's input channel ``i`` is multiplied by
    it, where ``r1_i`` and ``r2_i`` are the ranges (largest absolute weight) of channel
    ``i`` in the two layers. Afterwards both ranges are ``sqrt(r1_i r2_i)``: the
    criterion of the paper (its Section 4.1), which maximises the summed precision of the
    two layers under per-tensor quantization. A chain of three layers is swept until the
    scales stop changing.
  - :func:`correct_bias` (empirical bias correction, the paper's Section 4.2): the
    quantized weights ``W_q`` shift each output channel's mean by ``E[(W_q - W) x]``;
    that shift, measured with the layer's float inputs on calibration images, is
    subtracted from the bias. (The paper's analytic variant computes ``E[x]`` from batch
    norm statistics instead; this module implements the empirical one.)

* **Metrics** (:func:`agreement`): top-1 agreement with float32, top-5 overlap, and the
  relative error of the logits (:func:`mbv2.metrics.relative_errors`).
* **Timing**: the int8 network is timed with the other runtimes by
  :func:`mbv2.deploy.runtimes` (``int8=True``).

onnxruntime and onnx are imported only when a function here needs them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import photos
from ._checks import one_of, positive_int, real_at_least
from .deploy import export_onnx, onnx_session
from .layers import ConvBNAct, InvertedResidual
from .metrics import relative_errors
from .model import MobileNetV2

__all__ = [
    "Agreement", "CLASSIFIER", "CropSet", "Recipe", "RECIPES", "agreement", "build", "calibration_crops",
    "channel_ranges", "correct_bias", "equalisation_chains", "equalise", "evaluation_crops",
    "normalise", "onnx_logits", "photo_crops", "prepare", "quantize_onnx", "quantize_weight",
    "record", "recorded", "replace_relu6",
]

#: Calibration methods of :func:`quantize_onnx`, by the names of ONNX Runtime's ``CalibrationMethod``.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# --- Photographs -----------------------------------------------------------------------


class CropSet(NamedTuple):
    """Preprocessed crops and where each comes from."""

    images: torch.Tensor  #: ``(N, 3, size, size)`` float32, normalised as for the trained network
    photos: list[str]  #: the photograph of each crop
    views: list[str]  #: the view of each crop, e.g. ``"0.65 top left, mirrored"``


def normalise(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB arrays ``(H, W, 3)`` of one size as an ``(N, 3, H, W)`` float32 batch,
    scaled to [0, 1] and normalised with the ImageNet mean and standard deviation of the
    trained network's preprocessing (no resizing or cropping)."""
    from .pretrained import preprocessing

    if isinstance(images, np.ndarray) or not isinstance(images, Sequence) or not images:
        raise ValueError("images must be a non-empty list of (H, W, 3) uint8 arrays")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images[{i}] must be an (H, W, 3) uint8 array")
    transform = preprocessing()
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(transform.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(transform.std).reshape(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous()


def photo_crops(names: Sequence[str], load: Callable[[str], np.ndarray], *,
                views: Sequence[photos.View] = photos.VIEWS, size: int = 224, flips: bool = True) -> CropSet:
    """The crops (:func:`mbv2.photos.crops`) of the photographs ``names`` loaded by ``load``."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"names must be a non-empty list of photograph names, got {names!r}")
    images, sources, described = [], [], []
    views = tuple(views) if isinstance(views, list) else views
    for name in names:
        cut = photos.crops(load(name), views, size=size, flips=flips)
        images += cut
        sources += [name] * len(cut)
        labels = [f"{v[0]:g} {v[1]}" for v in views]
        described += labels + ([f"{label}, mirrored" for label in labels] if flips else [])
    return CropSet(normalise(images), sources, described)


def evaluation_crops(*, views: Sequence[photos.View] = photos.VIEWS, size: int = 224,
                     flips: bool = True) -> CropSet:
    """Crops of the twelve object photographs (:func:`mbv2.photos.photo_names`): with the
    default views and flips, 10 per photograph, 120 in all."""
    return photo_crops(photos.photo_names(), photos.load_photo, views=views, size=size, flips=flips)


def calibration_crops(*, views: Sequence[photos.View] = photos.VIEWS, size: int = 224,
                      flips: bool = True) -> CropSet:
    """Crops of the calibration photographs (:func:`mbv2.photos.calibration_photo_names`),
    none of which is an evaluation photograph: 70 with the defaults."""
    return photo_crops(photos.calibration_photo_names(), photos.load_calibration_photo, views=views,
                       size=size, flips=flips)


# --- ReLU6 -> ReLU and cross-layer equalisation --------------------------------------------


def replace_relu6(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every ``nn.ReLU6`` replaced by ``nn.ReLU``.

    This changes the function wherever an activation exceeded 6 (:func:`agreement` on
    photographs measures by how much); it is what makes :func:`equalise` exact.
    """
    _check_module("model", model)
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, name, nn.ReLU())
    return model


def equalisation_chains(model: nn.Module) -> list[list[str]]:
    """The chains of layers of a :class:`mbv2.MobileNetV2` that :func:`equalise` rescales,
    as lists of module names (``named_modules``) of ``nn.Conv2d`` and ``nn.Linear`` layers.

    In each chain a layer's output reaches the next layer only through its activation
    (and, between the head and the classifier, average pooling), so a positive scale per
    channel can move from one to the other. A block gives ``[expansion, depthwise,
    projection]``; the first block, without an expansion (t = 1), takes the stem's
    convolution in its place. The head and the classifier form the last chain. The
    projections end a chain: their outputs feed the residual sums and the next block
    together.
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    names = {module: name for name, module in model.named_modules()}
    chains = []
    previous = model.stem  # the layer whose output the next block takes, if it is not a projection
    for block in model.blocks():
        first = block.expansion if isinstance(block.expansion, ConvBNAct) else previous
        chain = [first] if isinstance(first, ConvBNAct) else []
        chains.append([names[layer.conv] for layer in chain + [block.depthwise, block.projection]])
        previous = block
    chains.append([names[model.head.conv], names[model.classifier.linear]])
    return [chain for chain in chains if len(chain) > 1]


def channel_ranges(layer: nn.Module, side: str = "output") -> torch.Tensor:
    """The range (largest absolute weight) of each output or input channel of a
    convolution or linear layer (for a depthwise convolution both are the channel's
    own kernel)."""
    side = one_of("side", side, ("output", "input"))
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"layer must be a torch.nn.Conv2d or torch.nn.Linear, got {type(layer).__name__}")
    weight = layer.weight.detach()
    if side == "output" or _depthwise(layer):
        return weight.abs().flatten(1).amax(dim=1)
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError("layer must be a standard (groups=1) or depthwise convolution")
    return weight.abs().transpose(0, 1).flatten(1).amax(dim=1)


def equalise(model: nn.Module, *, tolerance: float = 1e-6, max_sweeps: int = 200) -> nn.Module:
    """Cross-layer equalisation (Nagel et al. 2019, Section 4.1) of a batch-norm-folded
    :class:`mbv2.MobileNetV2` with ReLU activations; returns an equalised copy.

    For each pair of consecutive layers of each chain of :func:`equalisation_chains`,
    output channel ``i`` of the first (its weights and bias) is divided by
    ``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of the second multiplied by it,
    with ``r1_i``, ``r2_i`` the channel's ranges (:func:`channel_ranges`); the ranges
    become equal, ``sqrt(r1_i r2_i)``, and since ``relu(x / s) = relu(x) / s`` for
    ``s > 0`` the network computes the same function up to float rounding. The pairs of a
    chain are swept in turn until no scale differs from 1 by more than ``tolerance`` (at
    most ``max_sweeps`` sweeps). A channel whose weights are all zero in either layer is
    left as it is.

    Raises ``ValueError`` if a batch norm is not folded (:func:`mbv2.deploy.fold_batch_norm`)
    or an activation inside a chain is not ReLU (:func:`replace_relu6`).
    """
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    tolerance = real_at_least("tolerance", tolerance, 0.0, strict=True)
    max_sweeps = positive_int("max_sweeps", max_sweeps)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise ValueError("model must have its batch norms folded first: use mbv2.deploy.fold_batch_norm(model)")
    model = copy.deepcopy(model).eval()
    layers = dict(model.named_modules())
    activations = _activations_after(model)
    chains = equalisation_chains(model)
    for chain in chains:
        for name in chain[:-1]:
            act = activations.get(name)
            if act is not None and not isinstance(act, nn.ReLU):
                raise ValueError(
                    f"model must have ReLU between the layers it equalises; {name} is followed by "
                    f"{type(act).__name__} (use mbv2.int8.replace_relu6(model) first: a positive scale "
                    f"commutes with ReLU but not with ReLU6)"
                )
    with torch.no_grad():
        for chain in chains:
            for _ in range(max_sweeps):
                largest = 0.0
                for first, second in zip(chain, chain[1:]):
                    scale = _equalise_pair(layers[first], layers[second])
                    largest = max(largest, (scale - 1).abs().max().item())
                if largest <= tolerance:
                    break
    return model


def _equalise_pair(first: nn.Module, second: nn.Module) -> torch.Tensor:
    r1, r2 = channel_ranges(first, "output"), channel_ranges(second, "input")
    scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(scale.reshape(shape))
    if first.bias is not None:
        first.bias.div_(scale)
    if _depthwise(second):
        second.weight.mul_(scale.reshape((-1,) + (1,) * (second.weight.dim() - 1)))
    else:
        second.weight.mul_(scale.reshape((1, -1) + (1,) * (second.weight.dim() - 2)))
    return scale


def _depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


def _activations_after(model: MobileNetV2) -> dict[str, nn.Module | None]:
    """Each ConvBNAct convolution's activation (None if linear), by the convolution's name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            out[f"{name}.conv"] = getattr(module, "act", None)
    return out


# --- Weight quantization and bias correction -----------------------------------------------


def quantize_weight(weight: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """``weight`` rounded as ONNX Runtime stores it in int8 and read back as floats
    (symmetric: levels ``k * scale`` for ``k`` in -127..127, ``scale = max|w| / 127``,
    over the whole tensor or, if ``per_channel``, over each output channel (dimension 0))."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise ValueError("weight must be a floating-point tensor with an output-channel dimension (dim >= 2)")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    w = weight.detach()
    if per_channel:
        top = w.abs().flatten(1).amax(dim=1).reshape((-1,) + (1,) * (w.dim() - 1))
    else:
        top = w.abs().amax()
    scale = torch.where(top > 0, top / 127, torch.ones_like(top))
    return (w / scale).round().clamp(-127, 127) * scale


@torch.no_grad()
def correct_bias(model: nn.Module, images: torch.Tensor, *, per_channel: bool = False,
                 batch_size: int = 16) -> nn.Module:
    """Empirical bias correction (Nagel et al. 2019, Section 4.2); returns a corrected copy.

    For every convolution and linear layer, the expected change of its output caused by
    rounding its weights (:func:`quantize_weight`, per tensor or per channel as the model
    will be quantized), ``E[(W_q - W) x]``, is computed per output channel from the mean
    of the layer's float input ``x`` over ``images`` (the calibration crops) and over the
    output positions, and subtracted from the layer's bias (a bias is added if it has
    none). Because convolution is linear, the mean of ``(W_q - W) * x`` over the images is
    ``(W_q - W) * E[x]``, so only the mean input image of each layer is kept.
    """
    _check_module("model", model)
    _check_images(images)
    batch_size = positive_int("batch_size", batch_size)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    model = copy.deepcopy(model).eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if not layers:
        raise ValueError("model has no convolution or linear layer to correct")
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs):
            total = inputs[0].detach().sum(dim=0)
            sums[name] = sums[name] + total if name in sums else total.double()
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in layers.items():
        mean_input = (sums[name] / images.shape[0]).float().unsqueeze(0)
        error = quantize_weight(layer.weight, per_channel) - layer.weight
        if isinstance(layer, nn.Conv2d):
            shift = nn.functional.conv2d(mean_input, error, None, layer.stride, layer.padding,
                                         layer.dilation, layer.groups).mean(dim=(2, 3))[0]
        else:
            shift = nn.functional.linear(mean_input, error)[0]
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        layer.bias.sub_(shift)
    return model


# --- ONNX Runtime ----------------------------------------------------------------------


def quantize_onnx(model: nn.Module, calibration: torch.Tensor, path: str | Path, *,
                  per_channel: bool = False, method: str = "minmax", percentile: float = 99.999,
                  activations: str = "uint8", symmetric_activations: bool = False,
                  reduce_range: bool = False, keep_float: Sequence[str] = (),
                  histogram_bins: int = 2048, batch_size: int = 16, float_path: str | Path | None = None) -> Path:
    """Export ``model`` (:func:`mbv2.deploy.export_onnx`, float32) and quantize it with ONNX
    Runtime's static quantization into the int8 ONNX file ``path``; return the path.
    ``float_path`` names a float32 ONNX file already exported from ``model`` to quantize
    instead (an export takes seconds).

    The QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized operator,
    which ONNX Runtime fuses into integer kernels when it loads the file); weights int8,
    symmetric, per tensor or (``per_channel``) per output channel; activations
    ``"uint8"`` (default) or ``"int8"``, asymmetric unless ``symmetric_activations``.
    Activation ranges come from running the float model on ``calibration`` (an
    ``(N, 3, H, W)`` batch, fed in batches of ``batch_size``) with ``method``:
    ``"minmax"`` (the extremes seen), ``"entropy"`` (the range minimising the KL divergence
    between the histogram of the values and its quantized version, on ``histogram_bins``
    bins) or ``"percentile"`` (that percentile of the absolute values, on a histogram of
    ``histogram_bins`` bins). ``reduce_range`` uses 7-bit weights (for CPUs without VNNI,
    where 8 bits can overflow).

    ``keep_float`` leaves operators in float32: each entry is an ONNX operator type
    (``"Gemm"``, ``"Add"``) or the name of a convolution or linear module of ``model``
    (``"classifier.linear"``, ``"stem.conv"``). By default everything that ONNX Runtime
    can quantize is quantized, the classifier and its output, the logits, included.

    Calibration batches all have the same size (the largest divisor of N not above
    ``batch_size``), which the histogram methods need. The float file is written next to ``path`` with
    the suffix ``.fp32.onnx`` (unless ``float_path`` is given).
    """
    from onnxruntime import quantization as ortq

    _check_module("model", model)
    _check_images(calibration, "calibration")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    method = one_of("method", method, CALIBRATION_METHODS)
    percentile = real_at_least("percentile", percentile, 0.0, strict=True)
    if percentile > 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    activations = one_of("activations", activations, ("uint8", "int8"))
    for name, flag in (("symmetric_activations", symmetric_activations), ("reduce_range", reduce_range)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if isinstance(keep_float, str) or not all(isinstance(t, str) for t in keep_float):
        raise TypeError(f"keep_float must be a list of operator types or module names, got {keep_float!r}")
    histogram_bins = positive_int("histogram_bins", histogram_bins)
    modules = dict(model.named_modules())
    for entry in keep_float:
        if entry in modules and not isinstance(modules[entry], (nn.Conv2d, nn.Linear)):
            raise ValueError(f"keep_float must name operator types or convolution/linear modules; {entry!r} is a "
                             f"{type(modules[entry]).__name__} (name its layers, e.g. {entry}.linear or {entry}.conv)")
    batch_size = positive_int("batch_size", batch_size)
    batch_size = max(d for d in range(1, min(batch_size, calibration.shape[0]) + 1) if calibration.shape[0] % d == 0)

    if float_path is None:
        float_path = export_onnx(model, path.with_suffix(".fp32.onnx"), calibration.shape[-1])
    elif not Path(float_path).is_file():
        raise FileNotFoundError(f"float_path must be an existing ONNX file, got {str(float_path)!r}")
    import onnx

    graph = onnx.load(str(float_path), load_external_data=False).graph
    # A convolution or linear module's node is the one that takes "<module name>.weight".
    matches = {entry: [node.name for node in graph.node
                       if node.op_type == entry or f"{entry}.weight" in node.input] for entry in keep_float}
    unknown = [entry for entry, nodes in matches.items() if not nodes]
    if unknown:
        raise ValueError(f"keep_float must name operator types or convolution/linear modules of the model; "
                         f"not found: {', '.join(unknown)}")
    excluded = sorted({name for nodes in matches.values() for name in nodes})
    reader = _Reader(calibration, batch_size)
    extra = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    if method != "minmax":
        extra["CalibNumBins"] = histogram_bins
    with _quiet_quantizer():
        ortq.quantize_static(
            str(float_path), str(path), reader, quant_format=ortq.QuantFormat.QDQ,
            nodes_to_exclude=excluded,
            per_channel=per_channel, reduce_range=reduce_range,
            activation_type=ortq.QuantType.QUInt8 if activations == "uint8" else ortq.QuantType.QInt8,
            weight_type=ortq.QuantType.QInt8,
            calibrate_method={"minmax": ortq.CalibrationMethod.MinMax, "entropy": ortq.CalibrationMethod.Entropy,
                              "percentile": ortq.CalibrationMethod.Percentile}[method],
            extra_options=extra,
        )
    return path


class _HintFilter:
    """Drops onnxruntime.quantization's advice to pre-process the model (this graph, exported
    from PyTorch with shapes, quantizes the same either way)."""

    @staticmethod
    def filter(record) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence the quantizer's hint (a root-logger warning) and its progress prints."""
    import io
    import logging

    root = logging.getLogger()
    root.addFilter(_HintFilter)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(_HintFilter)


class _Reader:
    """ONNX Runtime's calibration data reader protocol: ``get_next()`` -> feed dict or None."""

    def __init__(self, images: torch.Tensor, batch_size: int):
        self._batches = [images[i:i + batch_size].numpy() for i in range(0, images.shape[0], batch_size)]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {"images": self._batches[self._next - 1]}

    def rewind(self):
        self._next = 0


def onnx_logits(model, images: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """The logits ``(N, classes)`` of an ONNX file (a path) or an ONNX Runtime session
    (:func:`mbv2.deploy.onnx_session`) on ``images``."""
    _check_images(images)
    batch_size = positive_int("batch_size", batch_size)
    if isinstance(model, (str, Path)):
        model = onnx_session(model)
    if not hasattr(model, "run"):
        raise TypeError(f"model must be an ONNX file path or an onnxruntime session, got {type(model).__name__}")
    outs = [model.run(None, {"images": images[i:i + batch_size].numpy()})[0]
            for i in range(0, images.shape[0], batch_size)]
    return torch.from_numpy(np.concatenate(outs))


# --- Metrics ---------------------------------------------------------------------------


class Agreement(NamedTuple):
    """How far logits are from a float32 reference, over a set of crops."""

    top1: int  #: crops whose top-1 class is the reference's
    n: int  #: crops
    top5_overlap: float  #: mean share of the reference's top 5 classes kept in the top 5 (0 to 1)
    median_relative_error: float  #: median over crops of ||logits - reference|| / ||reference||

    @property
    def top1_share(self) -> float:
        return self.top1 / self.n


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> Agreement:
    """:class:`Agreement` of ``logits`` with ``reference``, both ``(N, classes)``."""
    from .pretrained import top_k_kept

    kept = top_k_kept(reference, logits, 5)  # checks the shapes, naming both arguments
    errors = relative_errors(reference.float(), logits.float())
    top1 = int((reference.argmax(dim=1) == logits.argmax(dim=1)).sum())
    return Agreement(top1, reference.shape[0], kept.double().mean().item() / 5, errors.median().item())


# --- Recipes ---------------------------------------------------------------------------


class Recipe(NamedTuple):
    """One way to prepare and quantize the network (every step optional)."""

    relu: bool = False  #: ReLU6 replaced by ReLU (:func:`replace_relu6`)
    equalise: bool = False  #: cross-layer equalisation (:func:`equalise`; needs ``relu``)
    bias_correction: bool = False  #: empirical bias correction (:func:`correct_bias`)
    per_channel: bool = False  #: per-channel weights (else per tensor)
    keep_float: tuple[str, ...] = ()  #: operators left in float32 (see :func:`quantize_onnx`)
    quantize: bool = True  #: False: stay float32 (to measure the preparation alone)
    method: str = "minmax"  #: activation calibration (:data:`CALIBRATION_METHODS`)


#: ``keep_float`` for a float32 classifier: the last linear layer, 0.4 % of the
#: multiply-adds, whose int8 output would round the logits to 256 levels.
CLASSIFIER = ("classifier.linear",)

#: The variants the chapter compares, by name.
RECIPES: dict[str, Recipe] = {
    "float32, BN folded": Recipe(quantize=False),
    "float32, ReLU6 replaced by ReLU": Recipe(relu=True, quantize=False),
    "int8, per-tensor": Recipe(),
    "int8, per-channel": Recipe(per_channel=True),
    "int8, per-tensor, float classifier": Recipe(keep_float=CLASSIFIER),
    "int8, per-channel, float classifier": Recipe(per_channel=True, keep_float=CLASSIFIER),
    "int8, bias correction, per-channel, float classifier": Recipe(bias_correction=True, per_channel=True,
                                                                  keep_float=CLASSIFIER),
    "int8, ReLU, per-tensor, float classifier": Recipe(relu=True, keep_float=CLASSIFIER),
    "int8, CLE, per-tensor, float classifier": Recipe(relu=True, equalise=True, keep_float=CLASSIFIER),
    "int8, CLE + bias correction, per-tensor, float classifier": Recipe(
        relu=True, equalise=True, bias_correction=True, keep_float=CLASSIFIER),
    "int8, CLE, per-channel, float classifier": Recipe(relu=True, equalise=True, per_channel=True,
                                                       keep_float=CLASSIFIER),
    "int8, CLE + bias correction, per-channel, float classifier": Recipe(
        relu=True, equalise=True, bias_correction=True, per_channel=True, keep_float=CLASSIFIER),
}


def prepare(model: nn.Module, recipe: Recipe, calibration: torch.Tensor | None = None) -> nn.Module:
    """The float model a recipe quantizes: batch norm folded, then ReLU, CLE and bias
    correction as the recipe asks (bias correction needs ``calibration``)."""
    from .deploy import fold_batch_norm

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an mbv2.int8.Recipe, got {type(recipe).__name__}")
    if recipe.equalise and not recipe.relu:
        raise ValueError("recipe.equalise needs recipe.relu: equalisation is exact only with ReLU")
    prepared = fold_batch_norm(model)
    if recipe.relu:
        prepared = replace_relu6(prepared)
    if recipe.equalise:
        prepared = equalise(prepared)
    if recipe.bias_correction:
        if calibration is None:
            raise ValueError("calibration images are needed for recipe.bias_correction")
        prepared = correct_bias(prepared, calibration, per_channel=recipe.per_channel)
    return prepared


def build(model: nn.Module, recipe: Recipe, calibration: torch.Tensor, path: str | Path, **options) -> Path:
    """:func:`prepare` ``model`` by ``recipe`` and write it to the ONNX file ``path``,
    quantized by :func:`quantize_onnx` (``options`` go to it) unless ``recipe.quantize``
    is False, in which case the float32 export is written there."""
    prepared = prepare(model, recipe, calibration)
    if not recipe.quantize:
        return export_onnx(prepared, path, calibration.shape[-1])
    options.setdefault("keep_float", recipe.keep_float)
    return quantize_onnx(prepared, calibration, path, per_channel=recipe.per_channel, method=recipe.method,
                         **options)


# --- The recorded table ------------------------------------------------------------------

#: Where ``python -m mbv2.int8`` writes the table of every recipe (committed with the book).
RESULTS = Path(__file__).resolve().parents[1] / "results" / "int8.json"


def record(out: str | Path = RESULTS, *, num_threads: int = 1) -> dict:
    """Build every recipe of :data:`RECIPES` from the trained network, measure its
    :func:`agreement` with PyTorch float32 on the evaluation crops, and write the table with
    its provenance (:func:`mbv2.provenance.provenance`) to ``out`` as JSON. Takes a few
    minutes: every recipe is exported and calibrated on its own."""
    import tempfile
    import time

    from .pretrained import load_pretrained
    from .provenance import provenance, write_json

    num_threads = positive_int("num_threads", num_threads)
    torch.set_num_threads(num_threads)
    started = time.perf_counter()
    model = load_pretrained()
    evaluation, calibration = evaluation_crops(), calibration_crops()
    with torch.no_grad():
        reference = model(evaluation.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mbv2-int8-") as folder:
        for i, (name, recipe) in enumerate(RECIPES.items()):
            start = time.perf_counter()
            path = build(model, recipe, calibration.images, Path(folder) / f"recipe-{i}.onnx")
            result = agreement(reference, onnx_logits(path, evaluation.images))
            rows.append({"name": name, "recipe": recipe._asdict(), "agreement": result._asdict(),
                         "build_seconds": round(time.perf_counter() - start, 1)})
    data = {
        "what": "top-1 agreement, top-5 overlap and median relative logit error of each recipe against "
                "PyTorch float32, on the evaluation crops",
        "evaluation": {"photos": sorted(set(evaluation.photos)), "crops": len(evaluation.photos)},
        "calibration": {"photos": sorted(set(calibration.photos)), "crops": len(calibration.photos)},
        "rows": rows,
        "provenance": provenance(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out, data)
    return data


def recorded(path: str | Path = RESULTS) -> dict:
    """The table :func:`record` wrote, with ``rows`` keyed by recipe name and each row's
    agreement as an :class:`Agreement`."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recorded int8 table at {path}: run python -m mbv2.int8 --out {path}")
    data = json.loads(path.read_text())
    data["rows"] = {row["name"]: {**row, "agreement": Agreement(**row["agreement"])} for row in data["rows"]}
    return data


def main(argv: list[str] | None = None) -> None:
    """``python -m mbv2.int8``: record the int8 table (:func:`record`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mbv2.int8", description=(
        "Quantize the trained MobileNetV2 to int8 with every recipe of mbv2.int8.RECIPES, measure how "
        "far each one's predictions are from float32 on the evaluation crops, and write the table."))
    parser.add_argument("--out", default=str(RESULTS), help=f"the JSON file to write ({RESULTS.name} in results/)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1)")
    args = parser.parse_args(argv)
    data = record(args.out, num_threads=args.threads)
    for row in data["rows"]:
        a = Agreement(**row["agreement"])
        print(f"{row['name']:60} top-1 {a.top1:3d}/{a.n}  top-5 {a.top5_overlap:.3f}  "
              f"error {a.median_relative_error:.3f}")
    print(f"written to {args.out} in {data['wall_seconds']:.0f} s")


# --- Checks ------------------------------------------------------------------------------


def _check_module(name: str, value: object) -> None:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")


def _check_images(images: object, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be an (N, 3, H, W) float tensor, got {shape}")
    if not images.is_floating_point() or images.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty float tensor, got dtype {images.dtype}, "
                         f"{images.shape[0]} images")


if __name__ == "__main__":
    main()
