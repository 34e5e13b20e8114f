"""Plain values: what YAML, JSON and a weights-only checkpoint can all hold (numbers, strings,
booleans, None, and lists and string-keyed mappings of them), nested a bounded depth; and the
one safe way taolu reads a YAML file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from taolu.errors import ConfigError

PLAIN_DEPTH = 6  # lists and mappings inside one another
MAX_YAML_BYTES = 1 << 20  # the largest YAML file taolu reads


def is_plain(value: object, depth: int = PLAIN_DEPTH) -> bool:
    """Whether `value` is plain and nests at most `depth` lists or mappings below itself. Tensors,
    dates, bytes and sets (which yaml.safe_load can make) are not plain."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth <= 0:
        return False
    if isinstance(value, (list, tuple)):
        return all(is_plain(item, depth - 1) for item in value)
    if isinstance(value, Mapping):
        return all(
            isinstance(key, str) and is_plain(item, depth - 1) for key, item in value.items()
        )
    return False


def read_yaml(path: Path, what: str) -> Any:
    """The document in a YAML (or JSON) file, read with yaml.safe_load (tags such as
    !!python/object are refused, never run). Every failure is a ConfigError naming `what`
    and the file: unreadable, larger than MAX_YAML_BYTES (PyYAML parses about a MB a second,
    so a bigger file could hold taolu for minutes), not UTF-8, not YAML, or nested too deeply
    to parse."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError(
                f"{what} {path} is larger than {MAX_YAML_BYTES:,} bytes; no config file or "
                "layer list needs that much"
            )
        return yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except (yaml.YAMLError, RecursionError) as error:
        problem = error if isinstance(error, yaml.YAMLError) else "nested too deeply"
        raise ConfigError(f"{what} {path} is not valid YAML or JSON: {problem}") from None
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read ({error.strerror or error})") from None
