"""Load the weights of ``torchvision.models.mobilenet_v2`` into :class:`mbv2.MobileNetV2`.

torchvision keeps all layers in one ``features`` sequence and numbers everything
(``features.3.conv.1.0.weight``); the book's model uses the names of the paper
(``stages.1.1.depthwise.conv.weight``). The map between the two is derived from the
structure of the model, block by block, so it holds for every width, class count and
table of stages. Loading works on a state dict; only :func:`randomised_torchvision` and
:func:`torchvision_difference`, the book's equivalence check, import torchvision;
:func:`randomise_batch_norm` makes any model a demanding test object.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._checks import non_negative_int
from .model import MobileNetV2

_SHOWN = 10  # at most this many keys of each kind in an error message


def torchvision_key_map(model: MobileNetV2) -> dict[str, str]:
    """For every key of ``model.state_dict()``, the key torchvision uses for the same tensor."""
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"model must be an mbv2.MobileNetV2, got {type(model).__name__}")
    prefixes: dict[str, str] = {}  # our module name -> torchvision module name

    def conv_bn(ours: str, theirs: str) -> None:
        # torchvision's Conv2dNormActivation holds the conv at index 0 and the BN at 1.
        prefixes[f"{ours}.conv"] = f"{theirs}.0"
        prefixes[f"{ours}.bn"] = f"{theirs}.1"

    conv_bn("stem", "features.0")
    index = 0
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            index += 1
            ours, theirs = f"stages.{s}.{b}", f"features.{index}.conv"
            # torchvision numbers the block's layers in order, with no expansion layer
            # when t = 1, and the projection as a bare conv followed by a bare BN.
            position = 0
            if not isinstance(block.expansion, nn.Identity):
                conv_bn(f"{ours}.expansion", f"{theirs}.{position}")
                position += 1
            conv_bn(f"{ours}.depthwise", f"{theirs}.{position}")
            prefixes[f"{ours}.projection.conv"] = f"{theirs}.{position + 1}"
            prefixes[f"{ours}.projection.bn"] = f"{theirs}.{position + 2}"
    conv_bn("head", f"features.{index + 1}")
    prefixes["classifier.linear"] = "classifier.1"

    key_map = {}
    for key in model.state_dict():
        module, tensor = key.rsplit(".", 1)
        key_map[key] = f"{prefixes[module]}.{tensor}"
    return key_map


def load_torchvision_weights(
    model: MobileNetV2, state_dict: Mapping[str, torch.Tensor]
) -> MobileNetV2:
    """Copy a torchvision ``mobilenet_v2`` state dict into ``model`` and return ``model``.

    The state dict must come from a torchvision model of the same width multiplier and
    class count. Loading is strict: if any key is missing, unexpected or of another
    shape, nothing is loaded and a ``ValueError`` lists the offending keys.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    key_map = torchvision_key_map(model)
    own = model.state_dict()
    expected = list(key_map.values())
    missing = [k for k in expected if k not in state_dict]
    expected_set = set(expected)
    unexpected = [k for k in state_dict if k not in expected_set]
    misshaped = [
        f"{theirs}: expected {tuple(own[ours].shape)}, got {tuple(state_dict[theirs].shape)}"
        for ours, theirs in key_map.items()
        if theirs in state_dict and tuple(state_dict[theirs].shape) != tuple(own[ours].shape)
    ]
    if missing or unexpected or misshaped:
        problems = [
            _describe("missing keys", missing),
            _describe("unexpected keys", unexpected),
            _describe("keys with the wrong shape", misshaped),
        ]
        raise ValueError(
            "state_dict does not fit this MobileNetV2 (is it a torchvision mobilenet_v2 with "
            f"width_mult={model.width_mult:g} and num_classes={model.num_classes}?):\n"
            + "\n".join(p for p in problems if p)
        )
    model.load_state_dict({ours: state_dict[theirs] for ours, theirs in key_map.items()})
    return model


def randomise_batch_norm(module: nn.Module, *, seed: int = 0, scale: tuple[float, float] = (0.5, 4.0)) -> nn.Module:
    """Draw every batch norm's scale, shift and running statistics of ``module`` at random,
    and the bias of every linear layer; return ``module``, in eval mode.

    A freshly built network is a weak test object: its batch norms are the identity
    (statistics 0 and 1, scale 1, shift 0), so code that mixes up, drops or slices them
    wrongly still gives the right answer. Scales are drawn uniformly from ``scale`` (the
    default range makes many ReLU6 units saturate at 6), shifts from N(0, 0.5²), means
    from N(0, 0.1²) and variances uniformly from [0.5, 1.5].
    """
    generator = torch.Generator().manual_seed(non_negative_int("seed", seed))
    low, high = scale
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(low, high, generator=generator)
                m.bias.normal_(0, 0.5, generator=generator)
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1, generator=generator)
    return module.eval()


def randomised_torchvision(width_mult: float = 1.0, num_classes: int = 1000, *, seed: int = 0) -> nn.Module:
    """A torchvision ``mobilenet_v2`` in eval mode in which every tensor is random: its
    weights as torchvision initialises them (seeded), its batch norms and classifier bias
    by :func:`randomise_batch_norm`, so that the cap of ReLU6 is exercised as well."""
    import torchvision  # the reference implementation, needed only for this check

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(non_negative_int("seed", seed))
        reference = torchvision.models.mobilenet_v2(width_mult=width_mult, num_classes=num_classes)
    return randomise_batch_norm(reference, seed=seed)


def torchvision_difference(
    width_mult: float = 1.0, x: torch.Tensor | None = None, *, seed: int = 0
) -> tuple[float, MobileNetV2, nn.Module]:
    """Load a :func:`randomised_torchvision` network into the book's model and compare.

    Returns the largest absolute difference between the two models' outputs on ``x``
    (default: two random 224×224 images), the book's model and the torchvision model,
    both in eval mode.
    """
    reference = randomised_torchvision(width_mult, seed=seed)
    ours = load_torchvision_weights(MobileNetV2(width_mult=width_mult), reference.state_dict()).eval()
    if x is None:
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        difference = (ours(x) - reference(x)).abs().max().item()
    return difference, ours, reference


def _describe(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_SHOWN])
    more = f", ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"  {len(keys)} {kind}: {shown}{more}"
