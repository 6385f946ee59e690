"""Record the shapes that flow through a model, with forward hooks (no prints in ``forward``)."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import torch
from torch import nn


class ShapeRecord(NamedTuple):
    """The input and output shape of one submodule call."""

    name: str
    module: str  #: the class name of the submodule
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def trace_shapes(
    model: nn.Module, x: torch.Tensor, names: Optional[Iterable[str]] = None
) -> list[ShapeRecord]:
    """Run ``model(x)`` once and record each traced submodule's input and output shape.

    Args:
        model: any module.
        x: its input.
        names: the submodules to trace, as in ``model.named_modules()``; by default the
            direct children of ``model``.

    Returns the records in the order the submodules ran. The model runs in eval mode
    without gradients (so batch-norm statistics are not touched) and is put back in the
    mode it was in.
    """
    names = [name for name, _ in model.named_children()] if names is None else list(names)
    modules = _submodules(model, names)

    records: list[ShapeRecord] = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            records.append(
                ShapeRecord(name, type(module).__name__, tuple(inputs[0].shape), tuple(output.shape))
            )

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return records


def capture(
    model: nn.Module, x: torch.Tensor, names: Iterable[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(x)`` once and keep the outputs of the submodules ``names``.

    Returns ``(output, outputs)``: the model's output and a dict from each name to the
    output tensor of that submodule (of its last call, if it runs more than once). Like
    :func:`trace_shapes`, it runs in eval mode without gradients and restores the mode.
    """
    names = list(names)
    modules = _submodules(model, names)
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            outputs[name] = output

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return output, {name: outputs[name] for name in names if name in outputs}


def _submodules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"names must be submodules of model; not found: {', '.join(unknown)}")
    return modules
