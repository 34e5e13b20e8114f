"""A CSV list of images: a header `path,label` (optionally `,split`), then one image a line,
its path relative to the CSV's folder (or absolute)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from taolu.data.bundle import LISTED_MISSING, LISTED_NOT_A_FILE, FileListing
from taolu.data.embedded import SPLIT_SEED, stratified_split
from taolu.errors import DataError

COLUMNS = ("path", "label", "split")
# What a split cell may say, and the split it means; the other names are common in the wild.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "val"}
HEADER_HINT = "the first line must be the header `path,label` (optionally `path,label,split`)"


class CsvRow(NamedTuple):
    """One image of a CSV list."""

    path: Path  # resolved against the CSV's folder
    label: str
    split: str | None  # "train" or "val"; None when the CSV has no split column


def _non_blank(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    return (fields for fields in reader if any(field.strip() for field in fields))


def _read_header(fields: list[str] | None, csv_path: Path, line: int) -> list[str]:
    if fields is None:
        raise DataError(f"{csv_path}: the file is empty; {HEADER_HINT}")
    columns = [field.strip().lower() for field in fields]
    if "path" not in columns or "label" not in columns:
        raise DataError(f"{csv_path}: line {line}: {HEADER_HINT}, found {','.join(fields)!r}")
    unknown = [column for column in columns if column not in COLUMNS]
    if unknown:
        raise DataError(
            f"{csv_path}: line {line}: unknown column(s) {', '.join(map(repr, unknown))}; "
            "the columns are path, label and (optionally) split"
        )
    if len(set(columns)) != len(columns):
        raise DataError(f"{csv_path}: line {line}: a column is named twice in the header")
    return columns


def _read_row(fields: list[str], columns: list[str], csv_path: Path, line: int) -> CsvRow:
    where = f"{csv_path}: line {line}"
    if len(fields) != len(columns):
        raise DataError(
            f"{where}: {len(fields)} field(s), but the header names {len(columns)} "
            f'({",".join(columns)}); a comma inside a value needs "quotes"'
        )
    values = {column: field.strip() for column, field in zip(columns, fields, strict=True)}
    if not values["path"]:
        raise DataError(f"{where}: the path is empty")
    if not values["label"]:
        raise DataError(f"{where}: the label of {values['path']} is empty")
    split = None
    if "split" in values:
        split = SPLIT_NAMES.get(values["split"].lower())
        if split is None:
            raise DataError(
                f"{where}: split {values['split']!r} is neither train nor val "
                "(valid, validation and test are also read as val)"
            )
    # An absolute path stays as it is: pathlib's `/` keeps the right side when it is absolute.
    return CsvRow(csv_path.parent / values["path"], values["label"], split)


def read_csv_list(path: str | Path) -> list[CsvRow]:
    """The rows of a CSV list, every value stripped of surrounding spaces, blank lines skipped.

    Raises DataError naming the CSV and the line for a missing header, an unknown column,
    a wrong number of fields, an empty path or label, or a split that is not train/val.
    """
    csv_path = Path(path).expanduser()
    try:
        # utf-8-sig: spreadsheets often start a CSV with a byte-order mark.
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            lines = _non_blank(reader)
            try:
                columns = _read_header(next(lines, None), csv_path, reader.line_num)
                rows = [_read_row(fields, columns, csv_path, reader.line_num) for fields in lines]
            except csv.Error as error:
                raise DataError(f"{csv_path}: line {reader.line_num}: {error}") from None
    except FileNotFoundError:
        raise DataError(f"{csv_path}: no such CSV file") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{csv_path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{csv_path}: is a folder, not a CSV file") from None
    except OSError as error:
        raise DataError(f"{csv_path}: cannot read ({error.strerror})") from None
    if not rows:
        raise DataError(f"{csv_path}: no images listed below the header")
    return rows


def list_csv(path: str | Path, val_fraction: float) -> FileListing:
    """The files of a CSV list, labelled and split, before any is decoded.

    Classes are the distinct labels sorted by name. Without a split column, each class is
    split with the fixed split seed, as image folders are. Files that do not exist are left
    out and reported in `passed_over`, so training can go on and the data doctor can tell.
    """
    csv_path = Path(path).expanduser()
    rows = read_csv_list(csv_path)
    classes = sorted({row.label for row in rows})
    class_index = {name: index for index, name in enumerate(classes)}
    if rows[0].split is not None:
        splits = [row.split for row in rows]
        layout = f"CSV list {csv_path} with a split column"
    else:
        # Split over every listed row, missing files included, so one file going missing
        # does not move other images between train and val.
        labels = torch.tensor([class_index[row.label] for row in rows], dtype=torch.long)
        _, val_index = stratified_split(labels, val_fraction, SPLIT_SEED)
        held_out = set(val_index.tolist())
        splits = ["val" if index in held_out else "train" for index in range(len(rows))]
        layout = f"CSV list {csv_path} split {1 - val_fraction:.0%}/{val_fraction:.0%}"
    listing = FileListing(classes, {"train": [], "val": []}, layout)
    for row, split in zip(rows, splits, strict=True):
        if row.path.is_file():
            listing.splits[split].append((row.path, class_index[row.label]))
        elif row.path.exists():
            listing.passed_over.append((row.path, LISTED_NOT_A_FILE))
        else:
            listing.passed_over.append((row.path, LISTED_MISSING))
    return listing
