"""Hugging Face datasets on this machine, read offline: a folder `save_to_disk` wrote, a folder
of Parquet or Arrow files, or a data set in the local HF cache by name (`hf:NAME`). Images stay
encoded in the Arrow table and reach decode.py's policy row by row, as files do; the rows come
out as a FileListing of StoredImages, so the cache, bad-sample skipping and `taolu data check`
treat them as files. `datasets` is imported here only, and only for such data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taolu.data.bundle import VAL_SPLIT_NAMES, FileListing
from taolu.data.decode import open_regular_file
from taolu.data.embedded import SPLIT_SEED, stratified_split
from taolu.errors import ConfigError, DataError

logger = logging.getLogger("taolu")

HF_PREFIX = "hf:"
# save_to_disk writes dataset_dict.json (a DatasetDict) or state.json (one Dataset).
SAVED_MARKERS = ("dataset_dict.json", "state.json")
TABLE_SUFFIXES = (".parquet", ".arrow")


def is_hf_name(spec: str) -> bool:
    """`hf:NAME`: a data set in the local Hugging Face cache."""
    return spec.startswith(HF_PREFIX)


def table_files(path: Path) -> list[Path]:
    """Parquet/Arrow files directly in `path` or in its data/ folder (the Hub's layout)."""
    found = []
    for folder in (path, path / "data"):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    return found


def is_hf_path(path: Path) -> bool:
    """A folder save_to_disk wrote, a folder of Parquet/Arrow files, or one such file."""
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if not path.is_dir():
        return False
    return any((path / marker).is_file() for marker in SAVED_MARKERS) or bool(table_files(path))


def import_datasets() -> Any:
    """The `datasets` module, offline: the variables are set before its first import, and its
    switch set too in case the caller imported it earlier (it reads them at import)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
        import huggingface_hub.constants
    except ImportError:
        raise ConfigError(
            "reading a Hugging Face dataset needs the datasets library: pip install 'taolu[hf]'"
        ) from None
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()  # taolu reports progress itself
    return datasets


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class ImageColumn:
    """One split's image column, read a row at a time (through any index mapping)."""

    rows: Any  # the split as a datasets.Dataset holding the image column, in arrow format
    stamp: str  # the split's fingerprint: changes when its data does

    def encoded(self, row: int, name: str) -> bytes:
        value = self.rows[row].column(0)[0].as_py()
        if isinstance(value, dict):  # an Image feature: the file's bytes, or where it lies
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                return _read_external(path, name)
            value = data
        if not isinstance(value, bytes) or not value:
            raise DataError(f"{name}: holds no image bytes")
        return value


def _read_external(path: str, name: str) -> bytes:
    """An Image feature that points at a file instead of holding it (a cached imagefolder)."""
    try:
        with open_regular_file(path) as file:
            return file.read()
    except OSError as error:
        raise DataError(f"{name}: its image file {path}: {error.strerror or error}") from None


@dataclass(frozen=True, order=True)
class ArrowImage:
    """A StoredImage (decode.py): the image in one row of a split, named `SOURCE:SPLIT[ROW]`."""

    name: str
    row: int
    column: ImageColumn = field(compare=False, repr=False)

    @property
    def stamp(self) -> str:
        return self.column.stamp

    def encoded(self) -> bytes:
        return self.column.encoded(self.row, self.name)

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------- opening


def _missing_message(name: str, datasets: Any) -> str:
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    return (
        f"hf:{name}: not in the local Hugging Face datasets cache (looked under {cache}; "
        "HF_HOME or HF_DATASETS_CACHE move it). taolu never downloads. On a machine with "
        f"network run\n  python -c \"import datasets; datasets.load_dataset('{name}')"
        ".save_to_disk('DIR')\"\nand copy DIR here, then train with --data DIR (or copy that "
        f"machine's {cache.name} cache folder here)"
    )


def open_splits(spec: str) -> dict[str, Any]:
    """The splits of a --data value naming a Hugging Face dataset, as datasets.Dataset."""
    datasets = import_datasets()
    try:
        if is_hf_name(spec):
            name = spec[len(HF_PREFIX) :]
            try:
                loaded = datasets.load_dataset(name)
            except Exception as error:  # offline misses surface as several kinds
                said = " ".join(str(error).split())[:200]
                raise DataError(f"{_missing_message(name, datasets)}\n(datasets: {said})") from None
        else:
            path = Path(spec).expanduser()
            if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
                loaded = datasets.load_from_disk(str(path))
            elif path.is_dir():  # the library tells the splits from the file names
                loaded = datasets.load_dataset(str(path))
            else:  # one Parquet/Arrow file: the training split
                loaded = datasets.load_dataset(path.suffix[1:], data_files={"train": str(path)})
    except DataError:
        raise
    except Exception as error:  # a damaged table or a folder datasets cannot read
        raise DataError(f"{spec}: cannot read it as a Hugging Face dataset ({error})") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _train_and_val(splits: dict[str, Any], spec: str) -> tuple[str, str | None]:
    """The split to train on and the one to validate on (None: hold part of train out)."""
    if "train" in splits:
        train = "train"
    elif len(splits) == 1:
        train = next(iter(splits))
    else:
        raise DataError(f"{spec}: no 'train' split among {', '.join(splits)}")
    val = next((name for name in VAL_SPLIT_NAMES if name in splits and name != train), None)
    return train, val


def _describe_columns(features: dict[str, Any]) -> str:
    def kind(feature: Any) -> str:  # a Value by its dtype (int64, string), else its type
        name = type(feature).__name__
        return feature.dtype if name == "Value" else name

    return ", ".join(f"{name} ({kind(feature)})" for name, feature in features.items())


def _holds_images(feature: Any, datasets: Any) -> bool:
    """An Image feature, encoded image bytes, or Image's own {bytes, path} layout."""
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, dict):
        return "bytes" in feature
    return isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")


def pick_columns(
    features: dict[str, Any], image_column: str, label_column: str, spec: str, datasets: Any
) -> tuple[str, str]:
    """The image and label columns: as given, else the one Image feature and the one
    ClassLabel feature; a missing or ambiguous column is an error listing them all."""
    listed = _describe_columns(features)
    for option, given in (("image_column", image_column), ("label_column", label_column)):
        if given and given not in features:
            raise ConfigError(f"option '{option}': {spec} has no column {given!r}; it has {listed}")
    chosen = []
    for option, given, kind in (
        ("image-column", image_column, datasets.Image),
        ("label-column", label_column, datasets.ClassLabel),
    ):
        if given:
            chosen.append(given)
            continue
        found = [name for name, feature in features.items() if isinstance(feature, kind)]
        if len(found) != 1:
            what = f"no {kind.__name__} column" if not found else f"{len(found)} {kind.__name__} "
            what += "" if not found else f"columns ({', '.join(found)})"
            raise DataError(
                f"{spec}: {what}, so which is the {option.split('-')[0]} column is not clear; "
                f"give --{option} NAME. Columns: {listed}"
            )
        chosen.append(found[0])
    return chosen[0], chosen[1]


# --------------------------------------------------------------------------- the listing


def _labels_and_classes(
    splits: dict[str, Any], used: list[str], column: str, datasets: Any
) -> tuple[dict[str, list[int]], list[str]]:
    """Each used split's labels as class indices, and the class names: a ClassLabel's own
    names, else the column's distinct values (numbers in numeric order, else sorted text)."""
    feature = splits[used[0]].features[column]
    values = {name: list(splits[name][column]) for name in used}
    if isinstance(feature, datasets.ClassLabel):
        return {name: [int(v) for v in found] for name, found in values.items()}, feature.names
    distinct = sorted({v for found in values.values() for v in found if v is not None}, key=str)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
        distinct.sort()
    index = {value: i for i, value in enumerate(distinct)}
    labels = {name: [index.get(v, -1) for v in found] for name, found in values.items()}
    return labels, [str(value) for value in distinct]


def list_hf_dataset(
    spec: str, val_fraction: float, image_column: str = "", label_column: str = ""
) -> FileListing:
    """The rows of a Hugging Face dataset as a FileListing of ArrowImages: its train split, and
    its validation split (validation, valid, val or test, in that order) or else a stratified
    share `val_fraction` of train held out with taolu's fixed split seed."""
    datasets = import_datasets()
    splits = open_splits(spec)
    train, val = _train_and_val(splits, spec)
    features = splits[train].features
    image_column, label_column = pick_columns(features, image_column, label_column, spec, datasets)
    if not _holds_images(features[image_column], datasets):
        raise ConfigError(
            f"option 'image_column': {image_column!r} of {spec} holds "
            f"{type(features[image_column]).__name__} values, not images (an Image feature or "
            "encoded image bytes)"
        )
    used = [train] + ([val] if val else [])
    labels, classes = _labels_and_classes(splits, used, label_column, datasets)
    if val is not None and all(label < 0 for label in labels[val]):
        # The Hub's test splits often hide their labels (-1): hold out part of train instead.
        logger.warning("%s: the %s split has no labels; validating on part of %s", spec, val, train)
        used, val = [train], None
    rows = {name: _rows(splits[name], image_column, spec, name, labels[name]) for name in used}
    if val is not None:
        layout = f"{spec} (Hugging Face dataset: {train} + {val} splits)"
        listing = FileListing(classes, {"train": rows[train], "val": rows[val]}, layout)
    else:
        layout = (
            f"{spec} (Hugging Face dataset: {train} split "
            f"{1 - val_fraction:.0%}/{val_fraction:.0%})"
        )
        every = rows[train]
        label_tensor = torch.tensor([label for _, label in every], dtype=torch.long)
        train_index, val_index = stratified_split(label_tensor, val_fraction, SPLIT_SEED)
        listing = FileListing(
            classes,
            {
                "train": [every[i] for i in train_index.tolist()],
                "val": [every[i] for i in val_index.tolist()],
            },
            layout,
        )
    listing.layout += f", image column {image_column!r}, label column {label_column!r}"
    return listing


def _rows(
    split: Any, image_column: str, spec: str, split_name: str, labels: list[int]
) -> list[tuple[ArrowImage, int]]:
    """(ArrowImage, label) per row; a row without a label is left out, with a warning."""
    column = ImageColumn(
        split.select_columns([image_column]).with_format("arrow"),
        str(getattr(split, "_fingerprint", "")),
    )
    unlabelled = [row for row, label in enumerate(labels) if label < 0]
    if unlabelled:
        logger.warning(
            "%s: %d row(s) of the %s split have no label and are not used (first: row %d)",
            spec,
            len(unlabelled),
            split_name,
            unlabelled[0],
        )
    return [
        (ArrowImage(f"{spec}:{split_name}[{row}]", row, column), label)
        for row, label in enumerate(labels)
        if label >= 0
    ]
