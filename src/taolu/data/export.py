"""Writing a data set out as PNG files in the two-folder layout, TARGET/train/<class>/ and
TARGET/val/<class>/, so it can be looked at, edited, and read back as an image folder."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from taolu.data.bundle import ImageTensors
from taolu.data.disk_sets import DISK_DATASETS, load_disk_dataset
from taolu.data.embedded import LOADERS
from taolu.data.files import is_hidden
from taolu.data.sources import is_embedded, load_embedded
from taolu.errors import ConfigError, DataError

# Characters no file name may hold on Linux, macOS or Windows, so the export can be copied
# anywhere; control characters make names that cannot be typed.
UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def _safe_name(name: str) -> str:
    # Windows drops trailing dots and spaces; a leading dot would hide the folder.
    safe = UNSAFE_CHARACTERS.sub("_", name).strip().rstrip(". ")
    return safe if safe and not is_hidden(safe) else f"_{safe}"


def class_folder_names(classes: list[str]) -> list[str]:
    """A safe, distinct folder name for each class ("T-shirt/top" -> "T-shirt_top").

    Names that would collide (also by case, as on macOS and Windows) get a suffix _2, _3, ...
    """
    names: list[str] = []
    taken: set[str] = set()
    for class_name in classes:
        base = candidate = _safe_name(class_name)
        number = 2
        while candidate.casefold() in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate.casefold())
        names.append(candidate)
    return names


def refuse_used_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DataError(f"{target} exists and is not a folder; export never overwrites anything")
    if target.is_dir() and any(target.iterdir()):
        raise DataError(
            f"{target} exists and is not empty; export never overwrites anything: "
            "name a new folder or empty this one"
        )


def load_tensor_splits(
    name: str, data_root: str | Path | None, val_fraction: float
) -> tuple[dict[str, ImageTensors], list[str]]:
    if is_embedded(name):
        bundle = load_embedded(
            name, val_fraction=val_fraction, image_size=0, resize_mode="squash", channels=0
        )
        return {"train": bundle.train, "val": bundle.val}, bundle.classes
    if name in DISK_DATASETS:
        if data_root is None:
            raise ConfigError(
                f"exporting {name!r} needs data_root: the folder holding it in torchvision's layout"
            )
        train, test, classes = load_disk_dataset(name, data_root)
        return {"train": train, "val": test}, classes
    raise ConfigError(
        f"cannot export {name!r}: known data sets are " + ", ".join([*LOADERS, *DISK_DATASETS])
    )


def _write_split(split: ImageTensors, folder: Path, class_folders: list[str]) -> int:
    for class_folder in class_folders:  # every class, so the class list survives the trip
        (folder / class_folder).mkdir(parents=True)
    images = split.images.numpy()  # (N, C, H, W)
    for index, label in enumerate(split.labels.tolist()):
        image = images[index]
        # Pillow wants (H, W) for gray and (H, W, 3) for colour.
        pixels = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        Image.fromarray(pixels).save(folder / class_folders[label] / f"{index:05d}.png")
    return len(split)


def move_into_place(staging: Path, target: Path) -> None:
    # rename is atomic within one file system and never replaces a non-empty folder, so a
    # folder filled by someone else meanwhile makes it fail rather than lose their files.
    if target.is_dir():
        target.rmdir()  # empty, as checked; fails if something appeared since
    os.rename(staging, target)


def export_dataset(
    name: str,
    target: str | Path,
    *,
    data_root: str | Path | None = None,
    val_fraction: float = 0.2,
) -> dict[str, int]:
    """Write an embedded set ("mnist5k", "digits") or a torchvision set on disk (needs
    `data_root`) as PNG files: TARGET/train/<class>/<index:05d>.png and TARGET/val/<class>/.

    Embedded sets are split with `val_fraction` and the fixed split seed; disk sets keep
    their test split as val. The target must be new or empty; the files are written to a
    hidden sibling folder that is renamed into place at the end, so an interrupted export
    leaves no half-written target. Returns the number of images per split.

    Class folders get file-safe names (see `class_folder_names`); read back as an image
    folder, classes come in the folders' sorted order, which may differ from the original.
    """
    target = Path(target).expanduser()
    refuse_used_target(target)
    splits, classes = load_tensor_splits(name, data_root, val_fraction)
    class_folders = class_folder_names(classes)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(".partial", f".{target.name}.", target.parent))
    except OSError as error:
        raise DataError(f"cannot create {target}: {error.strerror or error}") from None
    try:
        counts = {
            split: _write_split(images, staging / split, class_folders)
            for split, images in splits.items()
        }
        move_into_place(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"exporting {name} to {target} failed, nothing was left behind: "
            f"{error.strerror or error} ({error.filename or target})"
        ) from None
    except BaseException:  # Ctrl-C included: never leave the half-written folder behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts
