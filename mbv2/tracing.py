"""Record the shapes that flow through a model, with forward hooks (no prints in ``forward``)."""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional

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

    run_with_hooks(model, x, [(modules[name], hook_for(name)) for name in names])
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

    output = run_with_hooks(model, x, [(modules[name], hook_for(name)) for name in names])
    return output, {name: outputs[name] for name in names if name in outputs}


def run_with_hooks(
    model: nn.Module,
    x: torch.Tensor,
    hooks: Iterable[tuple[nn.Module, Callable]],
    *,
    batch_statistics: bool = False,
) -> torch.Tensor:
    """Run ``model(x)`` once with forward hooks attached, and return its output.

    ``hooks`` are ``(submodule, hook)`` pairs, each hook called as
    ``hook(module, inputs, output)`` (PyTorch's forward hooks; one that returns a tensor
    replaces the output). The model runs without gradients in eval mode, or with
    ``batch_statistics=True`` in eval mode except its batch-norm layers, which then
    normalise with the statistics of ``x`` as in training (and update their running
    statistics: use a copy to keep them). Afterwards the hooks are removed and every
    module is put back in the mode it was in.
    """
    if not isinstance(batch_statistics, bool):
        raise TypeError(f"batch_statistics must be True or False, got {batch_statistics!r}")
    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        model.eval()
        if batch_statistics:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        with torch.no_grad():
            return model(x)
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()


def _submodules(
    model: nn.Module, names: Iterable[str], requirement: str = "names must be submodules of model"
) -> dict[str, nn.Module]:
    """``model``'s submodules by name, after checking that each of ``names`` is one;
    the error for an unknown name starts with ``requirement``."""
    modules = dict(model.named_modules())
    unknown = [str(name) for name in names if name not in modules]
    if unknown:
        raise ValueError(f"{requirement}; not found: {', '.join(unknown)}")
    return modules
