"""Data sources: an embedded set, a torchvision set on disk, a CSV list, an image folder or a
Hugging Face dataset, each turned into a `DataBundle` (train split, validation split, class
names, channels, image size); the user's own Datasets are in user_data.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from taolu.data.bundle import (
    VAL_SPLIT_NAMES,
    DataBundle,
    FileListing,
    ImageTensors,
    image_size_for,
)
from taolu.data.csv_list import list_csv
from taolu.data.decode import (
    decode_file,
    fit_to_size,
    is_stored,
    match_channels,
    probe_images,
)
from taolu.data.disk_sets import DISK_DATASETS, load_disk_dataset
from taolu.data.embedded import LOADERS, SPLIT_SEED, stratified_split
from taolu.data.files import is_hidden, walk_folder
from taolu.data.hf_sets import is_hf_name, is_hf_path, list_hf_dataset
from taolu.data.shard_files import is_shard_pattern
from taolu.data.shards import bundle_shards
from taolu.errors import ConfigError, DataError, did_you_mean

logger = logging.getLogger("taolu")

VAL_FOLDER_NAMES = VAL_SPLIT_NAMES


EMBEDDED, DISK_SET, CSV_LIST, FOLDER = "embedded", "disk set", "CSV list", "folder"
HF_DATASET = "Hugging Face dataset"
SHARDS = "WebDataset shards"


def is_embedded(spec: str) -> bool:
    return spec in LOADERS


def is_named_set(spec: str) -> bool:
    """An embedded set, a torchvision set on disk or `hf:NAME`: a name, not a path."""
    return is_embedded(spec) or spec in DISK_DATASETS or is_hf_name(spec)


def data_kind(spec: str, data_root: str | Path | None = None) -> str:
    """What a --data value names: EMBEDDED, DISK_SET (which needs `data_root`), HF_DATASET
    (`hf:NAME`, a folder save_to_disk wrote, Parquet/Arrow files), SHARDS (a .tar or a brace
    pattern of them), CSV_LIST or FOLDER; anything else is refused. The one place the kinds
    are told apart (training and `taolu data check` both ask here). `data_root` None: not
    known yet, not checked."""
    if is_embedded(spec):
        return EMBEDDED
    if spec in DISK_DATASETS:
        if data_root is not None and not str(data_root):
            raise ConfigError(f"option 'data_root': {spec} is read from disk; give --data-root")
        return DISK_SET
    if is_hf_name(spec):
        return HF_DATASET
    if is_shard_pattern(spec):  # its shards are expanded and checked when read
        return SHARDS
    path = Path(spec).expanduser()
    if is_hf_path(path):
        return HF_DATASET
    if path.is_file() and path.suffix.lower() == ".csv":
        return CSV_LIST
    if not path.exists():
        hint = did_you_mean(spec, (*LOADERS, *DISK_DATASETS))
        raise ConfigError(
            f"option 'data': {spec!r} {'(' + hint + ') ' if hint else ''}is not an embedded "
            f"set ({', '.join(LOADERS)}), a torchvision set on disk "
            f"({', '.join(DISK_DATASETS)}), hf:NAME, nor an existing folder or CSV file "
            f"(looked for {path.resolve()})"
        )
    if not path.is_dir():
        raise ConfigError(
            f"option 'data': {path} is a file; give a folder of class folders or a CSV list "
            "with a path,label header"
        )
    return FOLDER


def bundle_tensors(
    train: ImageTensors,
    val: ImageTensors,
    classes: list[str],
    *,
    image_size: int,
    resize_mode: str,
    channels: int,
    digits: bool,
    description: str,
) -> DataBundle:
    """In-memory splits fitted to the asked channels and size."""
    channels = channels or train.images.shape[1]
    size = image_size_for(image_size, tuple(train.images.shape[-2:]))

    def fit(split: ImageTensors) -> ImageTensors:
        images = match_channels(split.images, channels)
        return ImageTensors(fit_to_size(images, size, resize_mode), split.labels)

    return DataBundle(
        train=fit(train),
        val=fit(val),
        classes=list(classes),
        channels=channels,
        size=size,
        digits=digits,
        description=description,
    )


def load_embedded(
    name: str, *, val_fraction: float, image_size: int, resize_mode: str, channels: int
) -> DataBundle:
    images, labels = LOADERS[name]()
    images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W)
    labels = torch.from_numpy(labels)
    train_index, val_index = stratified_split(labels, val_fraction)
    return bundle_tensors(
        ImageTensors(images[train_index], labels[train_index]),
        ImageTensors(images[val_index], labels[val_index]),
        [str(d) for d in range(10)],
        image_size=image_size,
        resize_mode=resize_mode,
        channels=channels,
        digits=True,
        description=f"{name} (embedded)",
    )


class ImageFiles(Dataset):
    """(path, label) pairs decoded on access by the one decoding policy."""

    def __init__(
        self, files: list[tuple[Path, int]], channels: int, size: tuple[int, int], resize_mode: str
    ):
        self.files = files
        self.channels = channels
        self.size = size
        self.resize_mode = resize_mode
        self.targets = [label for _, label in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, str] | str]:
        """(image, label, "") or, for a file that cannot be decoded, (None, label, (path,
        reason)):
        training skips it and names it once instead of dying inside a worker."""
        path, label = self.files[index]
        try:
            return decode_file(path, self.channels, self.size, self.resize_mode), label, ""
        except DataError as error:
            return None, label, (str(path), str(error))


def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, by the rules of `walk_folder`."""
    return walk_folder(folder).images


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))


def _walk_classes(
    split_root: Path, classes: list[str], listing: FileListing
) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        if not (split_root / name).is_dir():
            continue
        # Links may not leave their class folder: one into a sibling class would mislabel.
        walk = walk_folder(split_root / name, root=split_root / name)
        files += [(path, label) for path in walk.images]
        listing.others += walk.others
        listing.passed_over += walk.passed_over
    return files


def list_folder(root: Path, val_fraction: float) -> FileListing:
    """root/train/<class>/ with root/val/<class>/ (or valid/, validation/, test/), or
    root/<class>/ split per class with the fixed split seed. Classes sorted by name."""
    root = Path(root).expanduser()
    val_root = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_root is not None:
        classes = _class_folders(root / "train")
        listing = FileListing(classes, {}, f"{root}/train + {val_root.name}/")
        listing.splits["train"] = _walk_classes(root / "train", classes, listing)
        listing.splits["val"] = _walk_classes(val_root, classes, listing)
        strays = sorted(set(_class_folders(val_root)) - set(classes))
        if strays:
            logger.warning(
                "%s: class folder(s) %s have no match in train/ and are not used",
                val_root,
                ", ".join(strays),
            )
        return listing
    classes = _class_folders(root)
    listing = FileListing(classes, {}, f"{root} split {1 - val_fraction:.0%}/{val_fraction:.0%}")
    files = _walk_classes(root, classes, listing)
    if not files:
        raise DataError(f"{root}: no image files in any class folder ({len(classes)} found)")
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    train_index, val_index = stratified_split(labels, val_fraction, SPLIT_SEED)
    listing.splits["train"] = [files[i] for i in train_index.tolist()]
    listing.splits["val"] = [files[i] for i in val_index.tolist()]
    return listing


def bundle_files(
    listing: FileListing, *, image_size: int, resize_mode: str, channels: int, source: str
) -> DataBundle:
    """A file listing as a bundle of ImageFiles; channels by majority and size from the
    first files' headers unless given."""
    train_files, val_files = listing.splits["train"], listing.splits["val"]
    if len(listing.classes) < 2:
        raise DataError(f"{source}: found {len(listing.classes)} class(es); need at least 2")
    if not train_files or not val_files:
        raise DataError(f"{source}: no image files found for the train or the validation split")
    probed_channels, common_size = probe_images([p for p, _ in train_files])
    channels = channels or probed_channels
    size = image_size_for(image_size, common_size)
    return DataBundle(
        train=ImageFiles(train_files, channels, size, resize_mode),
        val=ImageFiles(val_files, channels, size, resize_mode),
        classes=listing.classes,
        channels=channels,
        size=size,
        digits=False,
        description=listing.layout,
        listing=listing,
    )


def load_data(
    spec: str,
    *,
    val_fraction: float,
    image_size: int,
    resize_mode: str,
    channels: int,
    data_root: str = "",
    manifest: Path | None = None,
    image_column: str = "",
    label_column: str = "",
    val_shards: str = "",
    shuffle_buffer: int = 0,
) -> DataBundle:
    """The bundle for a --data value: an embedded name, a torchvision set on disk under
    `data_root`, a Hugging Face dataset (its `image_column` and `label_column`, found when
    empty), WebDataset shards (validated on `val_shards`, streamed through a buffer of
    `shuffle_buffer` samples), a CSV list or an image folder. A file-based split is read
    from `manifest` when one is given (a resumed run keeps its split even if files were
    added since); a Hugging Face dataset's split is its own or the fixed-seed one, so it
    needs none."""
    kind = data_kind(spec, data_root)
    sizing = dict(image_size=image_size, resize_mode=resize_mode, channels=channels)
    if kind == EMBEDDED:
        return load_embedded(spec, val_fraction=val_fraction, **sizing)
    if kind == DISK_SET:
        train, val, classes = load_disk_dataset(spec, Path(data_root).expanduser())
        described = f"{spec} from {data_root} (test split for validation)"
        return bundle_tensors(
            train,
            val,
            classes,
            digits=spec in ("mnist", "kmnist", "svhn"),
            description=described,
            **sizing,
        )
    if kind == SHARDS:
        return bundle_shards(
            spec,
            val_shards=val_shards,
            val_fraction=val_fraction,
            shuffle_buffer=shuffle_buffer,
            **sizing,
        )
    if kind == HF_DATASET:
        listing = list_hf_dataset(spec, val_fraction, image_column, label_column)
        return bundle_files(listing, source=spec, **sizing)
    path = Path(spec).expanduser()
    base = data_base_folder(spec)
    if manifest is not None and manifest.is_file():
        listing = read_manifest(manifest, base)
    elif kind == CSV_LIST:
        listing = list_csv(path, val_fraction)
    else:
        listing = list_folder(path, val_fraction)
    return bundle_files(listing, source=spec, **sizing)


def data_base_folder(spec: str) -> Path:
    """The folder that file paths of a folder or CSV data set are relative to."""
    path = Path(spec).expanduser()
    return path.parent if path.is_file() else path


MANIFEST_NAME = "split.json"


def write_manifest(listing: FileListing, path: Path, base: Path) -> None:
    """The split as JSON: the classes in label order, and each file (relative to the data's
    folder) with its class and split, so a resumed run, and anyone reading the run
    directory, knows exactly which file went where. No file is copied."""
    files = []
    for split, members in listing.splits.items():
        for file, label in members:
            if is_stored(file):  # a row of a table: its name says where
                files.append({"path": str(file), "label": listing.classes[label], "split": split})
                continue
            file = Path(file)
            shown = file.relative_to(base) if file.is_relative_to(base) else file
            files.append(
                {"path": shown.as_posix(), "label": listing.classes[label], "split": split}
            )
    manifest = {"base": str(base), "classes": listing.classes, "files": files}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def read_manifest(path: Path, base: Path) -> FileListing:
    """The split a run recorded (see `write_manifest`): any damage, or a value of the wrong
    type (a run directory may come from someone else), is a DataError naming the file."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        classes = list(manifest["classes"])
        if not all(isinstance(name, str) for name in classes):
            raise TypeError("classes must be names")
        index = {name: i for i, name in enumerate(classes)}
        listing = FileListing(classes, {"train": [], "val": []}, f"{base} (split from {path})")
        for entry in manifest["files"]:
            if not isinstance(entry["path"], str):
                raise TypeError("a file's path must be text")
            listing.splits[entry["split"]].append((base / entry["path"], index[entry["label"]]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise DataError(
            f"{path}: damaged split manifest ({type(error).__name__}: {str(error)[:300]})"
        ) from None
    return listing
