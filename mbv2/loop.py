"""The training loop behind ``python -m mbv2.train``: one process or many, checkpoints, resume.

:func:`run` trains :class:`~mbv2.MobileNetV2` on a data set of :mod:`mbv2.data` (an
in-memory :class:`~mbv2.data.Split`, or image folders such as ImageNet's read from disk by
:func:`~mbv2.data.load_image_folders`) for a number of optimizer steps with a recipe of
:mod:`mbv2.recipe`. Under ``torchrun`` every process
builds the same model (same seed), wraps it in DistributedDataParallel, and reads its own
share of every epoch through a ``DistributedSampler``; the gradients are averaged, so the
processes stay identical and the global batch is ``batch_size x processes``. Batch norm is
per process unless ``sync_bn`` (GPUs only: PyTorch's SyncBatchNorm has no CPU kernel).

With ``out``, rank 0 writes ``checkpoint.pt`` (model, optimizer, schedule, weight average,
step, history, and every process's random state) every ``save_every`` steps and at the
end, and ``summary.json`` (the history and the run's provenance). ``resume`` continues
from ``checkpoint.pt`` exactly where it stopped: same batches, same dropout masks.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Subset, TensorDataset

from . import distributed
from .provenance import provenance
from ._checks import non_negative_int, one_of, positive_int, real_at_least
from .data import DATA_SETS, IMAGE_FOLDER, load_dataset, load_image_folders
from .layers import SHORTCUTS
from .model import PAPER_TABLE_2, MobileNetV2, StageSpec
from .recipe import RECIPES, ExponentialMovingAverage

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"


@dataclass
class TrainConfig:
    """One run of :func:`run`; ``batch_size`` is per process (None: the recipe's, 64 for
    the book's, 96 for the paper's)."""

    data: str = "digits"         # DATA_SETS, or "imagefolder" (with data_dir)
    data_dir: str | None = None  # data="imagefolder": the folder with train/ and val/
    steps: int = 100
    recipe: str = "book"
    lr: float | None = None      # None: the recipe's (book: peak; paper: per 96 images)
    batch_size: int | None = None
    width: float = 1.0
    image_size: int = 32
    seed: int = 0
    split_seed: int = 0
    out: str | None = None
    resume: bool = False
    save_every: int = 0          # 0: only at the end
    eval_every: int = 0          # 0: once per epoch and at the end
    sync_bn: bool = False
    threads: int = 0             # 0: PyTorch's default
    workers: int = 0             # DataLoader worker processes
    device: str = "auto"
    progress: bool = True
    # The model's variant (the ablations of mbv2.experiments); the defaults are Table 2's.
    shortcut: str = "bottleneck"             # InvertedResidual's shortcut
    projection_activation: str | None = None  # None (linear bottleneck) or "relu6"
    stages: list | None = None               # rows [t, c, n, s]; None: Table 2
    paired_init: bool = False                # MobileNetV2.reset_parameters(seed=seed)
    train_images: int = 0                    # train on the first N training images (0: all)

    def check(self) -> "TrainConfig":
        """Check every field, and fill in the recipe's batch size if it is None."""
        one_of("data", self.data, TRAIN_DATA)
        if (self.data == IMAGE_FOLDER) != (self.data_dir is not None):
            raise ValueError(f"data_dir is needed with data={IMAGE_FOLDER!r} and only then; "
                             f"got data={self.data!r}, data_dir={self.data_dir!r}")
        one_of("recipe", self.recipe, tuple(RECIPES))
        if self.batch_size is None:
            self.batch_size = RECIPES[self.recipe].batch_size
        for name in ("steps", "batch_size", "image_size"):
            positive_int(name, getattr(self, name))
        for name in ("seed", "split_seed", "save_every", "eval_every", "threads", "workers",
                     "train_images"):
            non_negative_int(name, getattr(self, name))
        real_at_least("width", self.width, 0.0, strict=True)
        if self.lr is not None:
            real_at_least("lr", self.lr, 0.0, strict=True)
        one_of("shortcut", self.shortcut, SHORTCUTS)
        one_of("projection_activation", self.projection_activation, tuple(PROJECTION_ACTIVATIONS))
        if self.resume and not self.out:
            raise ValueError("resume needs out, the folder with checkpoint.pt")
        return self


# A resumed run must agree with the checkpoint on everything that shapes the computation.
_MUST_MATCH = ("data", "recipe", "lr", "batch_size", "width", "image_size", "seed", "split_seed",
               "sync_bn", "shortcut", "projection_activation", "stages", "paired_init",
               "train_images")

#: ``TrainConfig.data``'s choices: the in-memory data sets of :mod:`mbv2.data`, or image
#: folders read from disk (:func:`~mbv2.data.load_image_folders`, e.g. ImageNet).
TRAIN_DATA = DATA_SETS + (IMAGE_FOLDER,)

#: ``TrainConfig.projection_activation``'s choices and what they build.
PROJECTION_ACTIVATIONS = {None: None, "relu6": nn.ReLU6}


def build_model(config: TrainConfig, num_classes: int) -> MobileNetV2:
    """The model ``config`` trains (its width and variant), initialised as :func:`run` does
    after ``torch.manual_seed(config.seed)``."""
    stages = PAPER_TABLE_2 if config.stages is None else [StageSpec(*row) for row in config.stages]
    model = MobileNetV2(num_classes=num_classes, width_mult=config.width, stages=stages,
                        shortcut=config.shortcut,
                        projection_activation=PROJECTION_ACTIVATIONS[config.projection_activation])
    if config.paired_init:
        model.reset_parameters(seed=config.seed)
    return model


def run(config: TrainConfig) -> dict:
    """Train as ``config`` says; return the summary (also written to ``out/summary.json``)."""
    config.check()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    world = distributed.setup(config.device)
    try:
        return _run(config, world)
    finally:
        distributed.teardown()
        torch.set_num_threads(threads)  # as it was, for a caller in the same process


def _run(config: TrainConfig, world: distributed.World) -> dict:
    from tqdm import tqdm

    if config.sync_bn and world.device.type != "cuda":
        raise ValueError("sync_bn needs GPUs: PyTorch's SyncBatchNorm has no CPU implementation")
    recipe = RECIPES[config.recipe]
    if config.lr is not None:
        recipe = replace(recipe, lr=config.lr)
    dataset, val_set, test_set, num_classes = _datasets(config)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = build_model(config, num_classes).to(world.device)
    ema = ExponentialMovingAverage(model, recipe.ema_decay) if recipe.ema_decay else None
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)

    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} x {world.size} processes is more "
                         f"than the {len(dataset)} training images")
    optimizer = recipe.optimizer(model, config.batch_size * world.size)
    scheduler = recipe.scheduler(optimizer, steps_per_epoch, config.steps)
    eval_every = config.eval_every or steps_per_epoch
    history = {"step_loss": [], "lr": [], "evals": []}
    step, seconds = 0, 0.0
    out = Path(config.out) if config.out else None

    if config.resume:
        state = torch.load(out / CHECKPOINT, map_location=world.device, weights_only=True)
        _check_resumable(state, config, world)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        _set_rng(state["rng"][world.rank])
    else:
        torch.manual_seed(config.seed * 1_000 + world.rank)  # dropout differs per process

    def evaluate() -> None:
        distributed.broadcast_state(model, world, buffers_only=True)
        row = {"step": step}
        row["val_accuracy"], row["val_loss"] = _sharded_evaluation(model, val_set, world,
                                                                   workers=config.workers)
        if ema is not None:
            distributed.broadcast_state(ema.module, world)
            row["val_accuracy_ema"], row["val_loss_ema"] = _sharded_evaluation(
                ema.module, val_set, world, workers=config.workers)
        history["evals"].append(row)

    bar = tqdm(total=config.steps, initial=step, unit="step", mininterval=0.5,
               disable=not (config.progress and world.is_main))
    start = time.perf_counter() - seconds
    while step < config.steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        batches = list(BatchSampler(sampler, config.batch_size, drop_last=True))[skip:]
        # A generator of its own, so that making the loader draws nothing from the global one
        # (whose state, the dropout masks', a resumed run restores).
        order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=config.workers,
                            generator=order)
        for x, y in loader:
            net.train()
            loss = F.cross_entropy(net(x.to(world.device)), y.to(world.device),
                                   label_smoothing=recipe.label_smoothing)
            history["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            mean_loss = distributed.all_sum([loss.item()], world)[0] / world.size
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"the loss became {mean_loss} at step {step}")
            history["step_loss"].append(mean_loss)
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.3f}", refresh=False)
            bar.update()
            if step % eval_every == 0 or step == config.steps:
                evaluate()
            if out and ((config.save_every and step % config.save_every == 0)
                        or step == config.steps):
                seconds = time.perf_counter() - start
                _save(out, config, world, model, optimizer, scheduler, ema, step, seconds,
                      history)
            if step == config.steps:
                break
    bar.close()
    seconds = time.perf_counter() - start
    distributed.broadcast_state(model, world, buffers_only=True)
    summary = {
        "config": asdict(config), "world_size": world.size, "steps_per_epoch": steps_per_epoch,
        "global_batch": config.batch_size * world.size, "seconds": seconds,
        "state_sha256_per_rank": distributed.all_gather(distributed.state_digest(model), world),
        "provenance": provenance(),
        **history,
    }
    if test_set is not None:
        summary["test_accuracy"] = _sharded_evaluation(model, test_set, world,
                                                       workers=config.workers)[0]
    if ema is not None:
        distributed.broadcast_state(ema.module, world)
        if test_set is not None:
            summary["test_accuracy_ema"] = _sharded_evaluation(ema.module, test_set, world,
                                                               workers=config.workers)[0]
    if out and world.is_main:
        _write_atomically(out / SUMMARY, json.dumps(summary, indent=1).encode())
    return summary


def _datasets(config: TrainConfig):
    """(train, validation, test or None, number of classes) for ``config.data``."""
    if config.data == IMAGE_FOLDER:
        folders = load_image_folders(config.data_dir, image_size=config.image_size)
        train, val, test, classes = folders.train, folders.val, folders.test, len(folders.classes)
    else:
        split = load_dataset(config.data, image_size=config.image_size, seed=config.split_seed)
        train, val = TensorDataset(*split.train), TensorDataset(*split.val)
        test, classes = TensorDataset(*split.test), int(split.y_train.max()) + 1
    if config.train_images:  # a small slice of the training images (tests, quick looks)
        train = Subset(train, range(min(config.train_images, len(train))))
    return train, val, test, classes


@torch.no_grad()
def _sharded_evaluation(model: nn.Module, dataset, world: distributed.World,
                        batch_size: int = 500, workers: int = 0) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (no label smoothing) of ``model`` in eval mode on a
    data set of (image, label) items, each process taking every ``world.size``-th item
    from its rank on; the counts and sums are added over the processes."""
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(world.rank, len(dataset), world.size))
    correct, loss = 0, 0.0
    try:
        # A generator of its own: a DataLoader draws a seed for its workers, and the global
        # generator's state (the dropout masks') must not depend on how often we evaluate.
        loader = DataLoader(shard, batch_size=batch_size, num_workers=workers,
                            generator=torch.Generator())
        for x, y in loader:
            logits = model(x.to(world.device)).cpu()
            correct += (logits.argmax(1) == y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
    finally:
        model.train(was_training)
    correct, loss, total = distributed.all_sum([correct, loss, len(shard)], world)
    return correct / total, loss / total


def _check_resumable(state: dict, config: TrainConfig, world: distributed.World) -> None:
    saved = TrainConfig().__dict__ | state["config"]  # checkpoints from before a field existed
    differ = [f"{k}: {saved[k]!r} -> {getattr(config, k)!r}" for k in _MUST_MATCH
              if saved[k] != getattr(config, k)]
    if config.recipe == "book" and saved["steps"] != config.steps:
        differ.append(f"steps: {saved['steps']} -> {config.steps} (the book recipe's "
                      f"one-cycle schedule spans the whole run)")
    if len(state["rng"]) != world.size:
        differ.append(f"processes: {len(state['rng'])} -> {world.size}")
    if state["step"] > config.steps:
        differ.append(f"the checkpoint is at step {state['step']}, past steps={config.steps}")
    if differ:
        raise ValueError("cannot resume: the run differs from the checkpoint in "
                         + "; ".join(differ))


def _get_rng() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _save(out: Path, config, world, model, optimizer, scheduler, ema, step, seconds,
          history) -> None:
    rng = distributed.all_gather(_get_rng(), world)  # every process takes part
    if not world.is_main:
        return
    state = {
        "config": asdict(config), "step": step, "seconds": seconds, "history": history,
        "model": _plain_state(model), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
        "rng": rng,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def _plain_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def config_fields() -> tuple[str, ...]:
    """The names of :class:`TrainConfig`'s fields."""
    return tuple(f.name for f in fields(TrainConfig))
