"""The search space of `taolu tune`: which training options vary and over what, read from a
YAML file (or a mapping) or taken from the defaults; each trial's values drawn through an
Optuna trial. Every value is checked against its option's own rules when the space is read."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taolu.config import FIELDS
from taolu.errors import ConfigError, did_you_mean, shown
from taolu.plain import read_yaml

# Options a search must not vary: every trial is judged on the same validation split by the
# same metric, and lands in its own folder under the study's.
NOT_SEARCHED = {
    "data": "every trial must be judged on the same validation split",
    "data_root": "every trial must be judged on the same validation split",
    "val_fraction": "every trial must be judged on the same validation split",
    "monitor": "every trial must be judged by the same metric",
    "out": "the trials live in the study folder (--out)",
    "name": "each trial is named trial-NNN",
    "lr_find": "a range test trains nothing to compare",
}
RANGE_KEYS = ("low", "high", "log")
# The default space's learning-rate ranges: SGD's peak lr sits about ten times above the
# adaptive optimizers' (taolu's tuned SGD lr is 0.05; AdamW's range tests land near 1e-3).
SGD_LR_RANGE = (1e-3, 0.3)
ADAPTIVE_LR_RANGE = (1e-4, 1e-2)
# taolu's own nets that train well from scratch on small images (models/nets.py).
DEFAULT_MODELS = ("fastcnn", "resnet9")


@dataclass(frozen=True)
class Dimension:
    """One searched option: a list of `choices`, or a range from `low` to `high` (integers for
    an integer option; `log` draws evenly in the logarithm)."""

    option: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def draw(self, trial: Any, drawn: Mapping[str, Any]) -> Any:
        """This trial's value (`drawn`: the values drawn before it, and the fixed ones)."""
        if self.choices:
            return trial.suggest_categorical(self.option, list(self.choices))
        if FIELDS[self.option].type == "int":
            return trial.suggest_int(self.option, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.option, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        """The dimension as plain data (the study remembers its space in this form)."""
        if self.choices:
            return {self.option: list(self.choices)}
        return {self.option: {"low": self.low, "high": self.high, "log": self.log}}


@dataclass(frozen=True)
class OptimizerLr(Dimension):
    """The default space's lr: log-uniform over the range of the trial's optimizer, drawn
    under its own name per optimizer so the sampler never mixes SGD's lrs with AdamW's."""

    def draw(self, trial: Any, drawn: Mapping[str, Any]) -> Any:
        optimizer = str(drawn.get("optimizer", "auto"))
        if optimizer == "auto":  # the recipe picks SGD or AdamW once the data is known
            low, high = ADAPTIVE_LR_RANGE[0], SGD_LR_RANGE[1]
        elif optimizer == "sgd":
            low, high = SGD_LR_RANGE
        else:
            low, high = ADAPTIVE_LR_RANGE
        return trial.suggest_float(f"lr ({optimizer})", low, high, log=True)

    def describe(self) -> dict[str, Any]:
        return {"lr": {"sgd": list(SGD_LR_RANGE), "other optimizers": list(ADAPTIVE_LR_RANGE)}}


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str  # "the default space" or the file it came from, for messages

    def draw(self, trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
        """One trial's options, in the space's order (the lr after the optimizer it needs)."""
        drawn: dict[str, Any] = {}
        for dimension in self.dimensions:
            drawn[dimension.option] = dimension.draw(trial, {**fixed, **drawn})
        return drawn

    @property
    def options(self) -> list[str]:
        return [dimension.option for dimension in self.dimensions]

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for dimension in self.dimensions:
            described.update(dimension.describe())
        return described


def default_space(fixed: Collection[str]) -> SearchSpace:
    """lr (log-uniform, by optimizer), weight decay, batch size, augmentation and its
    strength (mixup), label smoothing, optimizer and model: each one the user did not fix
    (and not the optimizer when the lr is fixed)."""
    dimensions = (
        Dimension("model", choices=DEFAULT_MODELS),
        Dimension("optimizer", choices=("sgd", "adamw")),
        OptimizerLr("lr"),
        Dimension("weight_decay", low=1e-5, high=1e-2, log=True),
        Dimension("batch_size", choices=(32, 64, 128)),
        Dimension("augment", choices=("none", "shift", "shift-flip")),
        Dimension("mixup", choices=(0.0, 0.1, 0.2)),
        Dimension("label_smoothing", low=0.0, high=0.2),
    )
    # A fixed lr suits one optimizer family, so the optimizer is then left to the recipe.
    left_out = {*fixed, "optimizer"} if "lr" in fixed else set(fixed)
    kept = tuple(dimension for dimension in dimensions if dimension.option not in left_out)
    if not kept:
        raise ConfigError(
            "every option of the default search space is fixed; give a --space file "
            "naming what to search"
        )
    return SearchSpace(kept, "the default space")


def read_space(source: str | Path | Mapping[str, Any], fixed: Collection[str]) -> SearchSpace:
    """The space in a YAML file (or a mapping of the same form): each option maps to a list
    of choices or a {low, high, log} range. Refuses, naming the key, an unknown option, one
    that may not be searched or is fixed as well, and any value its option would refuse."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"search space file not found: {path}")
        loaded, where = read_yaml(path, "search space"), f"search space {path}"
    else:
        loaded, where = source, "search space"
    if not isinstance(loaded, Mapping) or not loaded:
        raise ConfigError(
            f"{where} must map options to a list of choices or a {{low, high}} range, "
            "e.g. lr: {low: 0.001, high: 0.3, log: true}"
        )
    dimensions = []
    for key, spec in loaded.items():
        option = str(key).replace("-", "_")
        _check_searchable(option, where, fixed)
        dimensions.append(_dimension(option, spec, f"{where}, option '{option}'"))
    return SearchSpace(tuple(dimensions), where)


def _check_searchable(option: str, where: str, fixed: Collection[str]) -> None:
    if option not in FIELDS:
        hint = did_you_mean(option, FIELDS)
        raise ConfigError(
            f"{where}: unknown option '{option}'{'; ' + hint if hint else ''} "
            "(the options are taolu train's, as in config.yaml)"
        )
    if option in NOT_SEARCHED:
        raise ConfigError(f"{where}: option '{option}' cannot be searched: {NOT_SEARCHED[option]}")
    if option in fixed:
        raise ConfigError(
            f"{where}: option '{option}' is searched and also given as a fixed option; "
            "drop one of the two"
        )


def _dimension(option: str, spec: Any, where: str) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: the list of choices is empty")
        for choice in spec:
            if not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(f"{where}: choice {shown(choice)} is not a plain value")
        return Dimension(option, choices=tuple(checked_value(option, c, where) for c in spec))
    if isinstance(spec, Mapping):
        return _range(option, spec, where)
    raise ConfigError(
        f"{where}: {shown(spec)} is neither a list of choices nor a {{low, high}} range "
        "(a fixed value goes on the command line or in --config)"
    )


def _range(option: str, spec: Mapping[str, Any], where: str) -> Dimension:
    for key in spec:
        if key not in RANGE_KEYS:
            hint = did_you_mean(str(key), RANGE_KEYS)
            raise ConfigError(
                f"{where}: unknown key '{key}'{'; ' + hint if hint else ''} "
                f"(a range has {', '.join(RANGE_KEYS)})"
            )
    if FIELDS[option].type not in ("int", "float", "float | str"):
        raise ConfigError(f"{where}: not a number, so give a list of choices, not a range")
    missing = [key for key in ("low", "high") if key not in spec]
    if missing:
        raise ConfigError(f"{where}: the range needs '{missing[0]}'")
    bounds = []
    for key in ("low", "high"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, not {shown(value)}")
        bounds.append(checked_value(option, value, f"{where} ('{key}')"))
    low, high = bounds
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, not {shown(log)}")
    if not low < high:
        raise ConfigError(f"{where}: 'low' ({low}) must be below 'high' ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs 'low' above 0, not {low}")
    return Dimension(option, low=low, high=high, log=log)


def checked_value(option: str, value: Any, where: str) -> Any:
    """`value` as its option's type, checked by the option's rules as `taolu train` would."""
    from taolu.train_options import build_train_config

    try:
        return getattr(build_train_config(None, {option: value}), option)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
