"""Load the weights of ``torchvision.models.mobilenet_v2`` into :class:`mbv2.MobileNetV2`.

torchvision keeps all layers in one ``features`` sequence and numbers everything
(``features.3.conv.1.0.weight``); the book's model uses the names of the paper
(``stages.1.1.depthwise.conv.weight``). The map between the two is derived from the
structure of the model, block by block, so it holds for every width, class count and
table of stages. This module does not import torchvision: it works on a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

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


def _describe(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_SHOWN])
    more = f", ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"  {len(keys)} {kind}: {shown}{more}"
