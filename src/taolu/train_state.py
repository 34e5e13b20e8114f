"""What a checkpoint holds, typed: `TrainState`, the one place its keys are spelled. Files are
written and read by `checkpoint.py`; every reader of their contents goes through this module."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from taolu.errors import CheckpointError

# The contents' format: a checkpoint whose "version" is higher was written by a newer taolu.
VERSION = 1


class Trainables(Protocol):
    """What a run's weights and optimizer live in (engine.step.Stepper is one)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: torch.optim.swa_utils.AveragedModel | None


class Schedule(Protocol):
    """What the lr schedule offers a resume (engine.optim.LrSchedule is one)."""

    def resume(self, state: dict[str, Any], steps_taken: int, same_length: bool) -> None: ...


@dataclass
class TrainState:
    """A run as a checkpoint keeps it: enough for eval, predict and export (the first six
    fields, which every checkpoint has) and for a resume that continues exactly."""

    model: dict[str, torch.Tensor]  # the plain module's state dict (never DDP's or compile's)
    config: dict[str, Any]  # the resolved TrainConfig, as config.yaml records it
    classes: list[str]
    preprocessing: dict[str, Any]  # data.loaders.Preprocessing.to_dict()
    epoch: int  # epochs complete (mid-epoch: the ones before the stopped epoch)
    model_class: str  # module.QualName of the trained network
    model_name: str | None = None  # a name taolu rebuilds the net from; None: the user's module
    step: int = 0  # optimizer steps taken
    elapsed_seconds: float = 0.0
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    grad_scaler: dict[str, Any] = field(default_factory=dict)  # fp16 on a GPU only
    total_steps: int = 0  # the schedule's length when this was saved
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows so far
    best_val_acc: float = -1.0
    best_epoch: int = 0
    rng: dict[str, Any] = field(default_factory=dict)  # see rng_state
    confusion_matrix: list[list[int]] = field(default_factory=list)  # of this epoch
    ema_model: dict[str, torch.Tensor] | None = None  # the averaged weights, when --ema kept them
    ema_updates: int = 0
    partial_epoch: dict[str, Any] | None = None  # engine.loop.EpochStart, after a stop mid-epoch
    model_spec: list[Any] | None = None  # a layer-list model's parsed layers
    # --on-nan recover's recoveries so far: {epoch, step, loss, old_lr, new_lr} each
    recoveries: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a checkpoint file stores (tensors and plain values only)."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        if self.ema_model is None:
            del values["ema_model"], values["ema_updates"]
        if self.partial_epoch is None:
            del values["partial_epoch"]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | Path = "checkpoint") -> TrainState:
        """The state in a loaded checkpoint dict, each field checked for its type; keys this
        taolu does not know (a file's format marker, version, digest) are passed over."""
        check_fields(values, source)
        known = {name: values[name] for name in _FIELD_TYPES if name in values}
        return cls(**known)

    @property
    def inference_weights(self) -> dict[str, torch.Tensor]:
        """The weights eval, predict and export use: the moving average when --ema kept one."""
        return self.ema_model or self.model

    def restore(
        self,
        into: Trainables,
        schedule: Schedule,
        generator: torch.Generator,
        *,
        total_steps: int,
        source: Path,
    ) -> None:
        """Put a run back where this state left it: weights, EMA, optimizer, grad scaler, lr
        schedule (replayed when the run's length changed) and every random stream."""
        try:
            into.model.load_state_dict(self.model)
            if into.ema is not None:
                into.ema.module.load_state_dict(self.ema_model)
                into.ema.n_averaged.fill_(self.ema_updates)
        except RuntimeError as error:
            raise CheckpointError(
                f"the checkpoint in {source} does not fit this model: {error}"
            ) from None
        into.optimizer.load_state_dict(self.optimizer)
        schedule.resume(self.scheduler, self.step, same_length=self.total_steps == total_steps)
        if into.scaler is not None and self.grad_scaler:
            into.scaler.load_state_dict(self.grad_scaler)
        restore_rng_state(self.rng, generator)


_FIELD_TYPES = typing.get_type_hints(TrainState)
# What eval, predict and resume read from every checkpoint: the fields without a default.
REQUIRED_KEYS = tuple(
    item.name
    for item in dataclasses.fields(TrainState)
    if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
)


def check_fields(values: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
    """Refuse a checkpoint dict from a newer taolu, without a required field, or with a field
    of the wrong type (a CheckpointError naming it)."""
    version = values.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"{source}: written by a newer taolu (format {version}); upgrade taolu"
        )
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise CheckpointError(
            f"{source}: incomplete taolu checkpoint, missing {', '.join(missing)}"
        )
    for name, hint in _FIELD_TYPES.items():
        if name in values and not _accepts(hint, values[name]):
            raise CheckpointError(
                f"{source}: corrupt taolu checkpoint: {name} is a {type(values[name]).__name__}, "
                f"not {hint}"
            )


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value` fits the field type `hint` (containers are checked as containers;
    a float field takes an int; an int field never takes a bool)."""
    origin = typing.get_origin(hint) or hint
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(option, value) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if isinstance(value, bool):
        return origin is bool
    if origin is float:
        return isinstance(value, (int, float))
    if origin is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, origin)


def inference_weights(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`TrainState.inference_weights` of a checkpoint still held as a dict."""
    return state.get("ema_model") or state["model"]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream a run draws from, as tensors."""
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
