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

from taolu.errors import CheckpointError, shown

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
    # Temperature scaling fitted on the validation split at the end of the run
    # (engine.calibration): predict divides the logits by it. 1.0: not fitted.
    temperature: float = 1.0
    # The calibrated confidence below which `predict --reject-below auto` answers "unknown"
    # (engine.calibration.KEPT_SHARE of the right validation answers lie above it).
    reject_threshold: float | None = None
    # The batch augmentation the run trained with, {"flip": bool, "shift": pixels}: the views
    # test-time augmentation may show (engine.tta). Empty in checkpoints from before.
    augmentation: dict[str, Any] = field(default_factory=dict)
    # The training images' background brightness 0..1 (data.polarity): predict warns about
    # inputs the other way round. None in checkpoints from before it was kept.
    background: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a checkpoint file stores (tensors and plain values only)."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        if self.ema_model is None:
            del values["ema_model"], values["ema_updates"]
        if self.partial_epoch is None:
            del values["partial_epoch"]
        return values

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], source: str | Path = "checkpoint", *, resuming: bool = False
    ) -> TrainState:
        """The state in a loaded checkpoint dict, each field checked for its type (see
        `check_fields`); keys this taolu does not know (a file's format marker, version,
        digest) are passed over."""
        check_fields(values, source, resuming=resuming)
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
        # Each load checks what it is given with whatever it meets first; from a damaged or
        # crafted file, any of these is the file's fault and said so.
        try:
            into.optimizer.load_state_dict(self.optimizer)
            schedule.resume(self.scheduler, self.step, same_length=self.total_steps == total_steps)
            if into.scaler is not None and self.grad_scaler:
                into.scaler.load_state_dict(self.grad_scaler)
            restore_rng_state(self.rng, generator)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise CheckpointError(
                f"the checkpoint in {source} cannot be resumed: its training state is damaged "
                f"({type(error).__name__}: {shown(str(error))})"
            ) from None


_FIELD_TYPES = typing.get_type_hints(TrainState)
# What eval, predict and resume read from every checkpoint: the fields without a default.
REQUIRED_KEYS = tuple(
    item.name
    for item in dataclasses.fields(TrainState)
    if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
)


# The fields only a resumed run reads: required when resuming (taolu writes them all).
RESUME_KEYS = (
    "optimizer",
    "scheduler",
    "total_steps",
    "step",
    "elapsed_seconds",
    "history",
    "best_val_acc",
    "best_epoch",
    "rng",
)
# The saved options eval, predict and export read, with their types; the first four must be
# there. (A resumed run checks the whole saved config against TrainConfig's own rules.)
SAVED_OPTIONS: dict[str, Any] = {
    "data": str,
    "val_fraction": float,
    "precision": str,
    "label_smoothing": float,
    "model": str,
    "weights": str | None,
    "data_root": str,
    "image_column": str,
    "label_column": str,
    "val_shards": str,
}
REQUIRED_OPTIONS = ("data", "val_fraction", "precision", "label_smoothing")


def check_fields(
    values: Mapping[str, Any], source: str | Path = "checkpoint", *, resuming: bool = False
) -> None:
    """Refuse a checkpoint dict from a newer taolu, without a required field (with `resuming`,
    also RESUME_KEYS), with a field whose value does not fit its annotation (containers are
    checked item by item: weights are name -> tensor, classes are names), with no classes, or
    with a saved option eval, predict or export reads missing or of the wrong type. A
    CheckpointError names the field; readers then meet no TypeError or KeyError."""
    version = values.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"{source}: written by a newer taolu (format {shown(version)}); upgrade taolu"
        )
    required = (*REQUIRED_KEYS, *(RESUME_KEYS if resuming else ()))
    _refuse_missing(required, values, f"{source}: incomplete taolu checkpoint, missing")
    for name, hint in _FIELD_TYPES.items():
        if name in values and not _accepts(hint, values[name]):
            raise CheckpointError(_wrong_type(source, f"field '{name}'", hint, values[name]))
    if not values["classes"]:
        raise CheckpointError(f"{source}: damaged taolu checkpoint: it names no classes")
    config = values["config"]
    _refuse_missing(
        REQUIRED_OPTIONS, config, f"{source}: damaged taolu checkpoint: its saved config lacks"
    )
    for name, hint in SAVED_OPTIONS.items():
        if name in config and not _accepts(hint, config[name]):
            raise CheckpointError(_wrong_type(source, f"saved option '{name}'", hint, config[name]))


def _refuse_missing(keys: tuple[str, ...], present: Mapping[str, Any], problem: str) -> None:
    missing = [key for key in keys if key not in present]
    if missing:
        raise CheckpointError(f"{problem} {', '.join(missing)}")


def _wrong_type(source: str | Path, what: str, hint: Any, value: Any) -> str:
    expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return (
        f"{source}: damaged taolu checkpoint: its {what} is not {expected} "
        f"(it is a {type(value).__name__}: {shown(value)})"
    )


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value` fits the field type `hint`: lists and dicts item by item where the hint
    names their items' types; a float field takes an int; an int field never takes a bool."""
    origin = typing.get_origin(hint) or hint
    arguments = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(option, value) for option in arguments)
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if isinstance(value, bool):
        return origin is bool
    if origin is float:
        return isinstance(value, (int, float))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False
        item = arguments[0] if arguments else Any
        return item is Any or all(_accepts(item, entry) for entry in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        key, item = arguments if arguments else (Any, Any)
        return (key is Any and item is Any) or all(
            _accepts(key, k) and _accepts(item, v) for k, v in value.items()
        )
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
