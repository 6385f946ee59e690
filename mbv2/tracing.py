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
    modules = dict(model.named_modules())
    names = [name for name, _ in model.named_children()] if names is None else list(names)
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"names must be submodules of model; not found: {', '.join(unknown)}")

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
