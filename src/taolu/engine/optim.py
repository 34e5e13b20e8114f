"""The loss, the optimizer and the learning-rate schedule, each from explicit arguments."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from torch import nn

from taolu.errors import ConfigError

# LBFGS needs a closure that re-evaluates the loss, SparseAdam sparse gradients and Muon
# only 2-D weight matrices (no biases or norms): none fits a minibatch loop over every layer.
UNFIT_OPTIMIZERS = ("lbfgs", "sparseadam", "muon")
ONECYCLE_START_DIVISOR = 5.0  # the one-cycle schedule starts at peak lr / this
# Optimizers whose step is the gradient times the lr (the rest, Adam and its kin, step each
# weight by about the lr whatever its gradient's scale).
PLAIN_GRADIENT_OPTIMIZERS = ("sgd", "asgd")
# An adaptive optimizer moves every weight of a Linear layer by about the lr, all in step, so
# the layer's outputs move by about lr x its inputs' count: a Linear layer reading more
# inputs than this learns at lr x DENSE_FAN_IN / inputs (the 1/fan-in rule of muP for Adam).
# On the recipe benchmark, a lazy net's Linear(14400, 128) on 62 px photos blew its first
# epoch's loss up to 7.5 at lr 0.01 without it. Convolutions are left alone: followed by a
# norm they do not care, and scaling resnet18's (4,608 inputs) cost it 6 points there.
DENSE_FAN_IN = 1024
# The key a param group keeps its share of the base lr under (a backbone's 0.1, a wide Linear
# layer's fan-in share): the range test sweeps the base lr and records report it.
LR_SHARE = "lr_share"


def build_loss(label_smoothing: float, class_weights: torch.Tensor | None = None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's loss weight, the inverse of its share of `labels`, scaled so a balanced
    split gets 1 everywhere (scikit-learn's 'balanced' rule). A class with no sample gets 0."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = len(labels) / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """The torch.optim optimizers a minibatch loop can drive, by lower-case name (sgd, adamw,
    nadam, ...)."""
    return {
        name.lower(): value
        for name, value in vars(torch.optim).items()
        if inspect.isclass(value)
        and issubclass(value, torch.optim.Optimizer)
        and value is not torch.optim.Optimizer
        and name.lower() not in UNFIT_OPTIMIZERS
    }


def check_optimizer_name(name: str) -> None:
    known = optimizer_classes()
    if name.lower() not in known and name != "auto":
        raise ConfigError(
            f"option 'optimizer': {name!r} is not a torch.optim optimizer; choose auto or one "
            "of: " + ", ".join(sorted(known))
        )


def is_adaptive(optimizer: str) -> bool:
    """Adam, AdamW, RMSprop and the rest that scale each weight's step by its own history."""
    return optimizer.lower() not in PLAIN_GRADIENT_OPTIMIZERS


def dense_lr_scales(model: nn.Module) -> dict[int, float]:
    """id(weight) -> its lr's share, for each Linear layer reading more than DENSE_FAN_IN
    inputs: DENSE_FAN_IN / inputs."""
    return {
        id(module.weight): DENSE_FAN_IN / module.in_features
        for module in model.modules()
        if isinstance(module, nn.Linear) and module.in_features > DENSE_FAN_IN
    }


def _parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head: str | None,
    backbone_lr_scale: float,
    dense_scales: dict[int, float],
) -> list[dict]:
    """Weights decay, biases and norm scales do not (decaying them only fights the
    normalisation); with a `head` named, everything else learns at lr * backbone_lr_scale;
    a weight in `dense_scales` learns at its share of that."""
    groups: dict[tuple[bool, bool, float], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            in_head = head is None or name == head or name.startswith(head + ".")
            share = dense_scales.get(id(parameter), 1.0)
            if not in_head:
                share *= backbone_lr_scale
            groups.setdefault((in_head, parameter.ndim > 1, share), []).append(parameter)
    return [
        {
            "params": members,
            "lr": lr * share,
            LR_SHARE: share,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (_, decays, share), members in sorted(groups.items())
    ]


def _lr_share(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """A param group's lr as a share of the base lr: what build_optimizer recorded, else (a
    group made elsewhere) its lr over the optimizer's own."""
    if LR_SHARE in group:
        return float(group[LR_SHARE])
    base = float(optimizer.defaults.get("lr") or 0.0)
    return float(group["lr"]) / base if base > 0 else 1.0


def lr_shares(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's lr as a share of the base lr (what --lr sets and schedules follow)."""
    return [_lr_share(optimizer, group) for group in optimizer.param_groups]


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base lr the schedule gives now: the first group's lr over its share (read at every
    optimizer step, so it looks at that group alone)."""
    first = optimizer.param_groups[0]
    share = _lr_share(optimizer, first)
    return first["lr"] / share if share > 0 else first["lr"]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool = True,
    head: str | None = None,
    backbone_lr_scale: float = 1.0,
    dense_fan_in_rule: bool = False,
) -> torch.optim.Optimizer:
    """Any torch.optim optimizer by name; momentum and Nesterov go to those that take them.
    `lr` is the optimizer's base lr (its `defaults["lr"]`): every group's lr is a share of
    it. `dense_fan_in_rule`: wide Linear layers learn at a share of it (DENSE_FAN_IN)."""
    scales = dense_lr_scales(model) if dense_fan_in_rule else {}
    groups = _parameter_groups(model, lr, weight_decay, head, backbone_lr_scale, scales)
    optimizer_class = optimizer_classes()[name.lower()]
    accepted = inspect.signature(optimizer_class).parameters
    extra: dict[str, Any] = {}
    if "momentum" in accepted and name.lower() in ("sgd", "rmsprop"):
        extra["momentum"] = momentum
    if "nesterov" in accepted:
        # torch refuses Nesterov without momentum; the flag means "when there is momentum".
        extra["nesterov"] = nesterov and momentum > 0
    return optimizer_class(groups, lr=lr, **extra)


class LrSchedule:
    """The learning rate over a run: `step()` after every optimizer step, `end_epoch(value)`
    after every validation (only `plateau` uses the value). torch's schedulers do the work:
    OneCycleLR, LambdaLR (warm-up, then cosine, step or constant) and ReduceLROnPlateau."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        step_epochs: int = 0,
        gamma: float = 0.1,
        plateau_patience: int = 2,
        plateau_mode: str = "max",
    ):
        self.name = name
        self.optimizer = optimizer
        # Every lr this schedule sets is multiplied by this (NaN recoveries lower it).
        self.lr_scale = 1.0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.warmup_steps = 0
        if name == "onecycle" and total_steps >= 2:
            # Warm up over the first quarter, anneal to ~0 by the end (Smith's one-cycle
            # policy). torch divides by the warm-up length, so very short runs get at least
            # 1.5 steps of it. Starting at a fifth of the peak (torch's default: a 25th)
            # learned more in the first epoch on mnist5k without less in the end.
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total_steps,
                pct_start=max(0.25, 1.5 / total_steps),
                div_factor=ONECYCLE_START_DIVISOR,
                cycle_momentum=False,
            )
            return
        warmup = round(warmup_epochs * steps_per_epoch)
        if name == "step":
            every = (step_epochs or max(1, math.ceil(total_steps / steps_per_epoch / 3))) * max(
                steps_per_epoch, 1
            )
        self.warmup_steps = warmup

        def factor(step: int) -> float:
            if step < warmup:  # linear from 1% of the lr, as torch's LinearLR would
                return 0.01 + 0.99 * step / warmup
            if name == "cosine":
                progress = (step - warmup) / max(total_steps - warmup, 1)
                return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            if name == "step":
                return gamma ** ((step - warmup) // every)
            return 1.0  # constant, plateau (which cuts the lr itself), one-step onecycle

        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        if name == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=plateau_mode, factor=gamma, patience=plateau_patience
            )

    def step(self) -> None:
        if self.plateau is not None and self.per_step.last_epoch >= self.warmup_steps:
            return  # after warm-up the plateau rule owns the lr; LambdaLR would overwrite it
        self.per_step.step()

    def end_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.per_step.last_epoch >= self.warmup_steps:
            self.plateau.step(monitored)

    def scale(self, factor: float) -> None:
        """Multiply the current lr and every lr the schedule sets from now on by `factor`
        (what a NaN recovery does). The scale is kept in the state dict, so a resumed run
        continues at it."""
        self.lr_scale *= factor
        for group in self.optimizer.param_groups:
            # OneCycleLR computes each step's lr from these; LambdaLR from base_lrs below.
            for key in ("initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= factor
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].mul_(factor)
            else:
                group["lr"] *= factor
        self._scale_bases(factor)

    def _scale_bases(self, factor: float) -> None:
        self.per_step.base_lrs = [lr * factor for lr in self.per_step.base_lrs]
        if self.plateau is not None:
            self.plateau.min_lrs = [lr * factor for lr in self.plateau.min_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = {"per_step": self.per_step.state_dict(), "lr_scale": self.lr_scale}
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to `state` (from state_dict) of this same schedule, lr scale included."""
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.lr_scale = state.get("lr_scale", 1.0)

    def resume(self, state: dict[str, Any], steps_taken: int, same_length: bool) -> None:
        """Continue a saved schedule (call after loading the optimizer's state). When the
        run's length changed (a larger --epochs), the per-step schedule is rebuilt for the new
        length and replayed to `steps_taken`, at the saved lr scale."""
        if same_length:
            self.per_step.load_state_dict(state["per_step"])  # its base lrs, already scaled
            self.lr_scale = state.get("lr_scale", 1.0)
        else:
            # The optimizer's groups (loaded before this) carry the scaled lrs; the rebuilt
            # schedule's own base lrs take the scale here.
            self.lr_scale = state.get("lr_scale", 1.0)
            self._scale_bases(self.lr_scale)
            with warnings.catch_warnings():
                # Stepping a schedule without optimizer steps is deliberate here.
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(steps_taken):
                    self.step()
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
