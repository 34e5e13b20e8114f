"""The data doctor: reads every file of a data set once, read-only, and reports what training
would trip over (unreadable, odd, duplicated or leaked images, empty classes), with paths, as
a check_report.DataReport. quarantine.py moves the unreadable files out, and only when asked."""

from __future__ import annotations

import hashlib
import io
import os
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from taolu.data import shard_files, sources
from taolu.data.bundle import LISTED_MISSING, LISTED_NOT_A_FILE, FileListing
from taolu.data.check_report import CATEGORIES, DataReport, Problems
from taolu.data.csv_list import list_csv
from taolu.data.decode import (
    ImageRefused,
    is_stored,
    load_upright,
    open_regular_file,
    strict_pillow,
)
from taolu.data.disk_sets import load_disk_dataset
from taolu.data.embedded import DIGIT_CLASSES, LOADERS, stratified_split
from taolu.data.files import is_hidden
from taolu.data.hf_sets import list_hf_dataset
from taolu.errors import DataError

ORIENTATION_TAG = 0x0112
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
CHUNK = 256  # shard samples inspected at a time


@dataclass
class ImageFacts:
    """What one file turned out to be. `problem` is set only for an unreadable file."""

    path: Path  # or the StoredImage it was read from
    byte_size: int = 0
    digest: str | None = None  # blake2b of the bytes, for finding duplicates
    format: str | None = None
    mode: str | None = None
    width: int = 0  # upright, as training sees it
    height: int = 0
    orientation: int | None = None
    transparency: bool = False
    problem: str | None = None
    detail: str | None = None

    def refuse(self, problem: str, detail: str) -> ImageFacts:
        self.problem, self.detail = problem, detail
        return self


def inspect_image(path: str | Path) -> ImageFacts:
    """Open one file (or StoredImage) read-only, hash its bytes, read its header and decode its
    pixels.

    Never opens anything but a regular file, and never decodes an image whose header claims
    more pixels than Pillow's decompression-bomb limit.
    """
    facts = ImageFacts(path if is_stored(path) else Path(path))
    try:
        file = io.BytesIO(path.encoded()) if is_stored(path) else open_regular_file(facts.path)
    except DataError as error:  # a stored image whose bytes are missing
        return facts.refuse("unreadable", str(error).removeprefix(f"{facts.path}: "))
    except OSError as error:
        return facts.refuse("unreadable", error.strerror or str(error))
    with file:
        facts.byte_size = file.seek(0, os.SEEK_END)
        file.seek(0)
        if facts.byte_size == 0:
            return facts.refuse("zero_byte", "the file is empty (0 bytes)")
        digest = hashlib.blake2b()
        try:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        except OSError as error:  # a failing disk or a vanished network share
            return facts.refuse("unreadable", f"read error: {error.strerror or error}")
        facts.digest = digest.hexdigest()
        file.seek(0)
        return _decode(file, facts)


def _decode(file: BinaryIO, facts: ImageFacts) -> ImageFacts:
    """Decode by the policy training uses (decode.load_upright), noting what the header says."""

    def look(image: Image.Image) -> None:
        facts.format, facts.mode = image.format, image.mode
        facts.width, facts.height = image.size
        facts.transparency = "transparency" in image.info
        facts.orientation = image.getexif().get(ORIENTATION_TAG)

    try:
        load_upright(file, facts.path, look=look).close()
    except ImageRefused as error:
        return facts.refuse(error.kind, str(error).removeprefix(f"{facts.path}: "))
    if facts.orientation in (5, 6, 7, 8):  # a quarter turn: training sees width and height swapped
        facts.width, facts.height = facts.height, facts.width
    return facts


def check_data(
    spec: str,
    *,
    val_fraction: float = 0.2,
    min_size: int = 8,
    max_bad_fraction: float = 0.1,
    workers: int = 0,
    data_root: str | Path | None = None,
    image_column: str = "",
    label_column: str = "",
    val_shards: str = "",
) -> DataReport:
    """Check an embedded set's name, a torchvision set on disk under `data_root`, a Hugging
    Face dataset (each row's image as if it were a file), WebDataset shards (each sample
    named SHARD:KEY; validated on `val_shards` or held-out shards, as training does), an
    image folder or a .csv file list; changes no file.

    `workers` > 0 inspects files on that many threads (Pillow decodes without the GIL).
    """
    spec = str(spec)
    kind = sources.data_kind(spec, data_root or "")
    if kind == sources.EMBEDDED:
        return _check_embedded(spec, val_fraction)
    if kind == sources.DISK_SET:
        return _check_disk_set(spec, Path(data_root).expanduser())
    path = Path(spec).expanduser()
    if kind == sources.SHARDS:
        listing, facts = _read_shards(spec, val_shards, val_fraction, workers)
        return _diagnose(spec, listing, facts, {}, min_size, max_bad_fraction)
    if kind == sources.HF_DATASET:
        listing, folders = list_hf_dataset(spec, val_fraction, image_column, label_column), {}
    elif kind == sources.FOLDER:
        try:
            listing = sources.list_folder(path, val_fraction)
        except OSError as error:
            raise DataError(f"{path}: cannot list the folder ({error})") from None
        except ValueError:  # list_folder's split fails when there is no image file at all
            raise DataError(f"{path}: no image files in any class folder") from None
        folders = _split_folders(path)
    else:
        listing, folders = list_csv(path, val_fraction), {}
    with strict_pillow():
        facts = _inspect_all([p for files in listing.splits.values() for p, _ in files], workers)
    return _diagnose(spec, listing, facts, folders, min_size, max_bad_fraction)


def _read_shards(
    spec: str, val_shards: str, val_fraction: float, workers: int
) -> tuple[FileListing, dict[str, ImageFacts]]:
    """Every sample of the shards inspected once as it streams past (nothing kept but its
    facts), listed by its name SHARD:KEY; samples without an image or a label passed over."""
    train_paths, val_paths, how = shard_files.split_shards(spec, val_shards, val_fraction)
    listing = FileListing([], {"train": [], "val": []}, f"WebDataset shards {how}")
    facts: dict[str, ImageFacts] = {}
    labels: Counter = Counter()
    with strict_pillow(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, paths in (("train", train_paths), ("val", val_paths)):
            stream = shard_files.tar_samples(paths, listing.passed_over)
            while chunk := list(islice(stream, CHUNK)):  # only a chunk's bytes held at once
                inspected = pool.map(inspect_image, [member for member, _ in chunk])
                for (member, label), item in zip(chunk, inspected, strict=True):
                    item.path = member.name  # the facts, without the bytes
                    facts[member.name] = item
                    listing.splits[split].append((member.name, label))
                    labels[label] += 1
    listing.classes = shard_files.read_classes([shard_files.ShardFacts(train_paths[0], labels)])
    return listing, facts


def _check_embedded(name: str, val_fraction: float) -> DataReport:
    images, labels = LOADERS[name]()  # uint8 (N, H, W), int64 (N,)
    splits = dict(zip(("train", "val"), stratified_split(labels, val_fraction), strict=True))
    counts = {
        split: {c: int((labels[index.numpy()] == i).sum()) for i, c in enumerate(DIGIT_CLASSES)}
        for split, index in splits.items()
    }
    height, width = images.shape[1:]
    return DataReport(
        spec=name,
        layout="embedded data set",
        classes=list(DIGIT_CLASSES),
        counts=counts,
        problems={category: [] for category in CATEGORIES},
        image_files=0,
        sizes=_size_stats([width] * len(images), [height] * len(images)),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=0.0,
    )


def _check_disk_set(name: str, root: Path) -> DataReport:
    """A torchvision set read from disk: its readers already refuse broken files, so what is
    left to report is the class balance and the image size."""
    train, val, classes = load_disk_dataset(name, root)
    counts = {
        split: {c: int((tensors.labels == i).sum()) for i, c in enumerate(classes)}
        for split, tensors in (("train", train), ("val", val))
    }
    height, width = train.images.shape[-2:]
    total = len(train) + len(val)
    return DataReport(
        spec=name,
        layout=f"torchvision {name} under {root} (test split as validation)",
        classes=list(classes),
        counts=counts,
        problems={category: [] for category in CATEGORIES},
        image_files=0,
        sizes=_size_stats([int(width)] * total, [int(height)] * total),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=0.0,
    )


def _split_folders(root: Path) -> dict[str, Path]:
    """Where each split's class folders live, by the rules of `sources.list_folder`."""
    val_root = next((root / n for n in sources.VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_root is not None:
        return {"train": root / "train", "val": val_root}
    return {"train": root, "val": root}


def _inspect_all(paths: list[Path], workers: int) -> dict[Path, ImageFacts]:
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(paths, pool.map(inspect_image, paths), strict=True))
    return {path: inspect_image(path) for path in paths}


def _diagnose(
    spec: str,
    listing: FileListing,
    facts: dict[Path, ImageFacts],
    folders: dict[str, Path],
    min_size: int,
    max_bad_fraction: float,
) -> DataReport:
    problems: Problems = {category: [] for category in CATEGORIES}
    for item in facts.values():
        for category, detail in _findings(item, min_size):
            problems[category].append((str(item.path), detail))
    counts = {split: dict.fromkeys(listing.classes, 0) for split in listing.splits}
    for split, files in listing.splits.items():
        for path, label in files:
            counts[split][listing.classes[label]] += facts[path].problem is None
    _find_duplicates(listing, facts, problems)
    _find_class_problems(listing.classes, counts, folders, problems)
    problems["other_files"] = [(str(p), "no image suffix") for p in sorted(listing.others)]
    listed = (LISTED_MISSING, LISTED_NOT_A_FILE)
    for path, why in listing.passed_over:
        problems["listed_missing" if why in listed else "passed_over"].append((str(path), why))
    readable = [item for item in facts.values() if item.problem is None]
    return DataReport(
        spec=spec,
        layout=listing.layout,
        classes=list(listing.classes),
        counts=counts,
        problems=problems,
        image_files=len(facts),
        sizes=_size_stats([item.width for item in readable], [item.height for item in readable]),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=max_bad_fraction,
    )


def _findings(facts: ImageFacts, min_size: int) -> list[tuple[str, str]]:
    """(category, detail) for everything worth reporting about one inspected file."""
    if facts.problem:
        return [(facts.problem, facts.detail or "")]
    found = []
    if min(facts.width, facts.height) < min_size:
        found.append(("too_small", f"{facts.width}x{facts.height}, under {min_size} px"))
    mode_detail = _odd_mode(facts.mode or "", facts.transparency)
    if mode_detail:
        found.append(("odd_mode", mode_detail))
    if facts.orientation not in (None, 1):
        found.append(("exif_rotated", f"orientation {facts.orientation}"))
    return found


def _odd_mode(mode: str, transparency: bool) -> str | None:
    if mode == "CMYK":
        return "CMYK: converted to RGB"
    if mode in ("I", "F") or mode.startswith("I;"):
        return f"{mode}: more than 8 bits per channel, rescaled to 8"
    if mode in ALPHA_MODES:
        return f"{mode}: alpha channel, laid over white"
    if transparency:
        return f"{mode} with a transparent colour, laid over white"
    if mode not in ("1", "L", "RGB"):
        return f"{mode}: converted to RGB"
    return None


def _find_duplicates(
    listing: FileListing,
    facts: dict[Path, ImageFacts],
    problems: Problems,
) -> None:
    """Readable files with the same bytes: all but the first of each split, and every
    validation file whose bytes are also in train (the model would be tested on its lessons)."""
    by_split: dict[str, dict[str, list[Path]]] = {split: {} for split in listing.splits}
    for split, files in listing.splits.items():
        for path in sorted(path for path, _ in files):
            if facts[path].problem is None and facts[path].digest:
                by_split[split].setdefault(facts[path].digest, []).append(path)
    train = by_split.get("train", {})
    for split, groups in by_split.items():
        for digest, paths in groups.items():
            for path in paths[1:]:
                problems["duplicate_within_split"].append((str(path), f"same bytes as {paths[0]}"))
            if split != "train" and digest in train:
                detail = f"same bytes as {train[digest][0]} in train"
                problems["duplicate_across_splits"] += [(str(path), detail) for path in paths]


def _find_class_problems(
    classes: list[str],
    counts: dict[str, dict[str, int]],
    folders: dict[str, Path],
    problems: Problems,
) -> None:
    for split, split_counts in counts.items():
        for name in classes:
            folder = folders.get(split)
            where = str(folder / name) if folder else name
            if folder and not (folder / name).is_dir():
                problems["class_missing"].append((where, f"class {name!r} has no {split} folder"))
            elif split_counts[name] == 0:
                problems["class_empty"].append((where, f"no readable {split} image of {name!r}"))
    if folders and folders["val"] != folders["train"]:
        try:
            extra = sorted(
                p for p in folders["val"].iterdir() if p.is_dir() and p.name not in classes
            )
        except OSError:  # list_folder has already passed over an unreadable folder
            extra = []
        for path in extra:
            if not is_hidden(path.name):
                problems["class_not_in_train"].append((str(path), "no such training class"))


def _size_stats(widths: list[int], heights: list[int]) -> dict:
    if not widths:
        return {"count": 0}

    def spread(values: list[int]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {"count": len(widths), "width": spread(widths), "height": spread(heights)}


def _imbalance(train_counts: dict[str, int]) -> float | None:
    values = list(train_counts.values())
    if not values or min(values) == 0:
        return None
    return max(values) / min(values)
