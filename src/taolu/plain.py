"""Plain values: what YAML, JSON and a weights-only checkpoint can all hold (numbers, strings,
booleans, None, and lists and string-keyed mappings of them), nested a bounded depth."""

from __future__ import annotations

from collections.abc import Mapping

PLAIN_DEPTH = 6  # lists and mappings inside one another


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
