"""Values from YAML files, flags, keywords and `--set key=value` turned into a TrainConfig:
each coerced to its field's type and checked by its field's rules, the layers applied in one
order (defaults < file < flags/keywords < --set), and config.yaml written and read back."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from taolu.config import FIELDS, TrainConfig
from taolu.errors import ConfigError, did_you_mean, shown
from taolu.plain import read_yaml


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def coerce_option(name: str, value: Any) -> Any:
    """Return `value` as the field's type; strings (from flags and --set) are parsed."""
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value)
        elif kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value.strip())
        elif kind in ("float", "float | str"):  # "float | str": a number or a word (lr: auto)
            words = FIELDS[name].metadata.get("words", ())
            if isinstance(value, str) and value.strip().lower() in words:
                return value.strip().lower()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
        elif kind == "Any":  # transforms: a preset name, or a list given as YAML text
            if isinstance(value, str):
                parsed = yaml.safe_load(value) if value.strip() else ""
                return parsed if parsed is not None else ""
            if isinstance(value, (list, tuple)):
                return list(value)
        elif kind == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, Path):
                return str(value)
    except (ValueError, yaml.YAMLError, RecursionError):  # YAML text for transforms, too
        pass
    words = FIELDS[name].metadata.get("words", ())
    expected = f"number or {' or '.join(words)}" if words else kind
    raise ConfigError(f"option '{name}': {shown(value)} is not a valid {expected}")


def _check_rules(name: str, value: Any, validators: Mapping[str, Callable[[str], None]]) -> None:
    meta = FIELDS[name].metadata
    shown_value = shown(value)
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        hint = did_you_mean(str(value), meta["choices"])
        raise ConfigError(
            f"option '{name}': {shown_value} is not allowed; {hint + ' ' if hint else ''}"
            f"choose one of: {allowed}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"option '{name}': {shown_value} is not a finite number")
    bounds = (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    )
    for key, holds, sign in bounds:
        if key in meta and not isinstance(value, str) and not holds(value, meta[key]):
            raise ConfigError(
                f"option '{name}': {shown_value} is not allowed; it must be {sign} {meta[key]}"
            )
    if "kind" in meta and meta["kind"] in validators:
        validators[meta["kind"]](value)


def _check_name(value: str) -> None:
    if value and (Path(value).name != value or value in (".", "..")):
        raise ConfigError(f"option 'name': {value!r} must be a plain folder name, not a path")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a flat dict of option -> value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    loaded = read_yaml(path, "config file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return loaded


def parse_set_items(items: list[str]) -> dict[str, str]:
    """Turn `--set key=value` items into a dict, refusing items without '='."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def resolve_config(
    *layers: Mapping[str, Any],
    validators: Mapping[str, Callable[[str], None]] | None = None,
) -> TrainConfig:
    """Build the config from layers applied in order, later ones winning.

    The order taolu uses is: defaults < config file < named flags (or API keywords) < --set.
    Every key must name an option, every value must fit its type and rules; the first
    offence raises `ConfigError` naming the option, the value and what is allowed.
    `validators` checks values that need outside knowledge (data names, model names, devices).
    """
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise ConfigError(_unknown_key_message(key))
            values[key] = coerce_option(key, value)
    config = TrainConfig(**values)
    for name in FIELDS:
        _check_rules(name, getattr(config, name), validators or {})
    _check_name(config.name)
    return config


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(FIELDS)}"
    return f"unknown option '{key}'{hint}"


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as a plain dict: what config.yaml and checkpoints store."""
    return dataclasses.asdict(config)


def write_config(config: TrainConfig, path: Path) -> None:
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    path.write_text(text, encoding="utf-8")
