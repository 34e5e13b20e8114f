"""Reading back the CSV records taolu writes for people and scripts (val_predictions.csv,
label_issues.csv): the exact columns checked, the numeric ones parsed, and anything else a
DataError naming the file."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taolu.errors import DataError


def read_record_csv(
    path: Path, kind: str, columns: Sequence[str], numbers: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows of `path`, a `kind` of record (e.g. "val_predictions.csv") whose header must
    be `columns`, with the `numbers` columns as floats. The caller has checked the file
    exists (its message says who writes it)."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != tuple(columns):
                raise ValueError(f"columns {reader.fieldnames}, expected {list(columns)}")
            for row in reader:
                for key in numbers:
                    row[key] = float(row[key])
                rows.append(row)
    except (ValueError, csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a {kind} taolu wrote ({error})") from None
    return rows
