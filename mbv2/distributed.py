"""The few pieces of ``torch.distributed`` that ``python -m mbv2.train`` needs.

Under ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous
address in the environment) :func:`setup` joins the process group: NCCL when the process
has a GPU (``cuda:LOCAL_RANK``), gloo on the CPU. Run plainly, it returns a world of one
process and no process group. The other helpers are no-ops in a world of one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ._checks import one_of


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> World:
    """Join the process group if launched by ``torchrun``, and pick this process's device.

    ``device`` is ``"auto"`` (a GPU if there is one), ``"cpu"`` or ``"cuda"``.
    """
    one_of("device", device, ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no GPU")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if launched else 0
    if use_cuda:
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    if not launched:
        return World(0, 0, 1, where)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                device_id=where if use_cuda else None)
    return World(dist.get_rank(), local_rank, dist.get_world_size(), where)


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], world: World) -> list[float]:
    """The element-wise sum of ``values`` over all processes (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device(world))
    if world.distributed:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(obj: object, world: World) -> list:
    """``obj`` of every process, in rank order (picklable objects)."""
    if not world.distributed:
        return [obj]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_state(module: nn.Module, world: World, *, buffers_only: bool = False) -> None:
    """Copy rank 0's state (parameters and buffers, or buffers only) to every process.

    Needed for batch norm: DistributedDataParallel keeps the *parameters* identical, but
    each process updates its running statistics on its own batch after rank 0's were
    broadcast at the start of the step (unless batch norm is synchronised).
    """
    if not world.distributed:
        return
    with torch.no_grad():
        tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def state_digest(module: nn.Module) -> str:
    """SHA-256 of every tensor in ``module.state_dict()`` (names, shapes and bytes), to
    check that processes hold identical models."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        flat = tensor.detach().cpu().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _comm_device(world: World) -> torch.device:
    on_gpu = world.distributed and world.device.type == "cuda"  # NCCL reduces GPU tensors
    return world.device if on_gpu else torch.device("cpu")
