"""Training recipes for ``python -m mbv2.train``: the book's short one and the paper's.

The paper (Section 6.1) trains with RMSProp, decay 0.9 and momentum 0.9, weight decay
4e-5, a learning rate of 0.045 that decays by 0.98 per epoch, batch size 96 on each of 16
asynchronous GPU workers, in TensorFlow. The authors' released configuration (the slim
``train_image_classifier`` flags in the README of ``research/slim/nets/mobilenet`` in
tensorflow/models) adds two things the paper does not mention: label smoothing 0.1 and an
exponential moving average of the weights with decay 0.9999. :class:`PaperRecipe` is all
of that; :class:`BookRecipe` is :func:`mbv2.train.fit`'s recipe (SGD with Nesterov
momentum and a one-cycle schedule), which converges in the few epochs a chapter can afford.

Two details matter for reproducing the TensorFlow run in PyTorch:

* **RMSProp.** ``torch.optim.RMSprop`` is not TensorFlow's: it starts the running mean of
  the squared gradient at 0 (TensorFlow 1 at 1), adds epsilon *outside* the square root
  (TensorFlow inside), and applies the learning rate after the momentum buffer (TensorFlow
  folds it into the buffer, which matters when the rate changes). :class:`RMSpropTF`
  computes TensorFlow's update. Its epsilon is 1.0: the released flags do not set
  ``opt_epsilon``, so slim's default 1.0 applies; inside the square root this is large
  (the denominator is at least 1), which damps RMSProp towards momentum SGD for small
  gradients. The paper gives no epsilon.
* **Weight decay** is slim's L2 regulariser, ``4e-5 * ||w||^2 / 2`` added to the loss,
  i.e. ``4e-5 * w`` added to the gradient (coupled, as PyTorch's ``weight_decay``), on
  the weights of the full convolutions and the classifier only: slim's MobileNet
  ``training_scope`` exempts the depthwise convolutions, and biases and batch-norm
  parameters carry none (:func:`weight_decay_groups`).

Not reproduced: the Inception preprocessing (random crops and colour distortion; our data
are small digit images), the truncated-normal initialisation (we keep torchvision's), and
slim's batch-norm decay 0.997 (PyTorch momentum 0.003, suited to runs of 100,000s of
steps; we keep PyTorch's 0.1, and the weight average smooths the statistics as well).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import positive_int, real_at_least


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` computes it.

    For each parameter ``w`` with gradient ``g`` (plus ``weight_decay * w``)::

        ms  = decay * ms + (1 - decay) * g**2          # ms starts at initial_square (1.0)
        mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps inside the square root
        w   = w - mom

    Defaults are the released configuration's: decay 0.9, momentum 0.9, eps 1.0.
    """

    def __init__(self, params, lr: float, *, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1.0, weight_decay: float = 0.0, initial_square: float = 1.0):
        lr = real_at_least("lr", lr, 0.0, strict=True)
        for name, value in (("decay", decay), ("momentum", momentum)):
            if not 0 <= real_at_least(name, value, 0.0) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        defaults = dict(lr=lr, decay=decay, momentum=momentum,
                        eps=real_at_least("eps", eps, 0.0, strict=True),
                        weight_decay=real_at_least("weight_decay", weight_decay, 0.0),
                        initial_square=real_at_least("initial_square", initial_square, 0.0))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.full_like(p, group["initial_square"])
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["decay"]).addcmul_(g, g, value=1 - group["decay"])
                mom.mul_(group["momentum"]).addcdiv_(g, (ms + group["eps"]).sqrt_(),
                                                     value=group["lr"])
                p.sub_(mom)
        return loss


class ExponentialMovingAverage:
    """A running average of a model's weights, as TensorFlow's ``ExponentialMovingAverage``.

    After each training step, :meth:`update` moves every floating-point entry of the
    average's state (weights *and* batch-norm statistics: slim averages all its model
    variables) towards the model's: ``avg = d * avg + (1 - d) * current``. With
    ``warmup`` (slim passes the global step as ``num_updates``), the decay at update ``n``
    is ``min(decay, (1 + n) / (10 + n))``, so that early averages are not dominated by the
    random initialisation: 0.1 at the first update, 0.9 after 80, 0.99 after 890.
    ``module`` is the averaged copy, in eval mode, for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True):
        if not 0 < real_at_least("decay", decay, 0.0, strict=True) < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current state in (``model`` has the averaged copy's keys)."""
        d = self.current_decay()
        current = model.state_dict()
        for key, average in self.module.state_dict().items():
            if average.is_floating_point():
                average.lerp_(current[key].detach(), 1 - d)
            else:
                average.copy_(current[key])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup, self.updates = state["decay"], state["warmup"], state["updates"]
        self.module.load_state_dict(state["module"])


def is_depthwise(module: nn.Module) -> bool:
    """True for a convolution with one filter group per input channel (and more than one)."""
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: the weights of full convolutions and linear layers decay
    (``weight_decay``), everything else (depthwise weights, biases, batch norm) does not."""
    decayed, exempt = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            full = isinstance(module, (nn.Conv2d, nn.Linear)) and not is_depthwise(module)
            (decayed if full and name == "weight" else exempt).append(p)
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]


@dataclass(frozen=True)
class PaperRecipe:
    """The paper's recipe (Section 6.1) with the released configuration's additions.

    The learning rate is ``lr`` per ``batch_size`` images, scaled linearly with the global
    batch (batch per process x processes): the paper's workers each stepped with 0.045 on
    96 images, and the released flags use ``0.045 * NUM_GPUS`` for 96 images on each GPU.
    It decays by ``lr_decay`` every ``epochs_per_decay`` epochs, in steps (slim's
    ``staircase``): 1 epoch in the paper, 2.5 in the released flags.
    """

    lr: float = 0.045                 # Section 6.1, per 96 images
    batch_size: int = 96              # Section 6.1, the batch of each worker (per process)
    decay: float = 0.9                # Section 6.1, RMSProp decay
    momentum: float = 0.9             # Section 6.1
    eps: float = 1.0                  # slim's default opt_epsilon (not set by the README)
    weight_decay: float = 4e-5        # Section 6.1
    lr_decay: float = 0.98            # Section 6.1, per epoch
    epochs_per_decay: float = 1.0     # Section 6.1 (the released flags: 2.5)
    label_smoothing: float = 0.1      # released flags, not in the paper
    ema_decay: float | None = 0.9999  # released flags, not in the paper

    def lr_for(self, global_batch: int) -> float:
        """The learning rate for ``global_batch`` images per step."""
        return self.lr * positive_int("global_batch", global_batch) / self.batch_size

    def optimizer(self, model: nn.Module, global_batch: int) -> RMSpropTF:
        return RMSpropTF(weight_decay_groups(model, self.weight_decay),
                         lr=self.lr_for(global_batch), decay=self.decay,
                         momentum=self.momentum, eps=self.eps)

    def scheduler(self, optimizer, steps_per_epoch: int, total_steps: int):
        every = max(1, round(self.epochs_per_decay * positive_int("steps_per_epoch",
                                                                  steps_per_epoch)))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=self.lr_decay)


@dataclass(frozen=True)
class BookRecipe:
    """:func:`mbv2.train.fit`'s recipe, step by step: SGD with Nesterov momentum 0.9,
    weight decay 4e-5 on every parameter, a one-cycle schedule peaking at ``lr`` over the
    whole run (so the run's length is part of the recipe), no label smoothing, no average.
    The learning rate does not scale with the batch."""

    lr: float = 0.1
    batch_size: int = 64              # per process
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.0
    ema_decay: float | None = None

    def optimizer(self, model: nn.Module, global_batch: int) -> torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                               nesterov=True, weight_decay=self.weight_decay)

    def scheduler(self, optimizer, steps_per_epoch: int, total_steps: int):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr,
                                                   total_steps=positive_int("steps", total_steps))


RECIPES = {"book": BookRecipe(), "paper": PaperRecipe()}
