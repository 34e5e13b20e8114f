"""Data sources: an embedded set, an image folder, or the user's own Dataset, each turned into
a `DataBundle` (train split, validation split, class names, channels, image size)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from taolu.data.decode import (
    decode_file,
    fit_to_size,
    match_channels,
    to_uint8_chw,
)
from taolu.data.embedded import LOADERS, SPLIT_SEED, stratified_split
from taolu.data.files import is_hidden, walk_folder
from taolu.errors import ConfigError, DataError

VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")
# When image_size is 0 and the files differ in size (or are large), they are fitted to this.
FALLBACK_IMAGE_SIZE = 128


@dataclass(frozen=True)
class ImageTensors:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


Split = ImageTensors | Dataset


@dataclass(frozen=True)
class DataBundle:
    """Everything the routine needs to know about its data."""

    train: Split
    val: Split
    classes: list[str]
    channels: int
    size: tuple[int, int]  # (H, W) every image is fitted to
    digits: bool  # digit images must not be flipped
    description: str


def is_embedded(spec: str) -> bool:
    return spec in LOADERS


def check_data_spec(spec: str) -> None:
    """Refuse a --data value that is neither an embedded name nor an existing folder."""
    if is_embedded(spec):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(LOADERS)
        raise ConfigError(
            f"option 'data': {spec!r} is neither an embedded data set ({names}) "
            f"nor an existing folder (looked for {path.resolve()})"
        )
    if not path.is_dir():
        raise ConfigError(f"option 'data': {path} is a file; give a folder of class folders")


def load_embedded(
    name: str, *, val_fraction: float, image_size: int, resize_mode: str, channels: int
) -> DataBundle:
    images, labels = LOADERS[name]()
    images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W)
    labels = torch.from_numpy(labels)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    size = tuple(images.shape[-2:]) if image_size == 0 else (image_size, image_size)
    images = fit_to_size(images, size, resize_mode)
    train_index, val_index = stratified_split(labels, val_fraction)
    return DataBundle(
        train=ImageTensors(images[train_index], labels[train_index]),
        val=ImageTensors(images[val_index], labels[val_index]),
        classes=[str(d) for d in range(10)],
        channels=images.shape[1],
        size=size,
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        return decode_file(path, self.channels, self.size, self.resize_mode), label


def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, by the rules of `walk_folder`."""
    return walk_folder(folder).images


@dataclass
class FileListing:
    """The files of a file-based data set, split and labelled, before any is decoded."""

    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]  # "train" / "val" -> (path, label index)
    layout: str  # how the splits were found, for messages
    others: list[Path] = field(default_factory=list)  # non-image files met on the way
    passed_over: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))


def _walk_classes(
    split_root: Path, classes: list[str], data_root: Path, listing: FileListing
) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        if not (split_root / name).is_dir():
            continue
        walk = walk_folder(split_root / name, root=data_root)
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
        listing.splits["train"] = _walk_classes(root / "train", classes, root, listing)
        listing.splits["val"] = _walk_classes(val_root, classes, root, listing)
        return listing
    classes = _class_folders(root)
    listing = FileListing(classes, {}, f"{root} split {1 - val_fraction:.0%}/{val_fraction:.0%}")
    files = _walk_classes(root, classes, root, listing)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    train_index, val_index = stratified_split(labels, val_fraction, SPLIT_SEED)
    listing.splits["train"] = [files[i] for i in train_index.tolist()]
    listing.splits["val"] = [files[i] for i in val_index.tolist()]
    return listing


def _probe(files: list[Path], limit: int = 64) -> tuple[int, tuple[int, int] | None]:
    """Channels by majority and the common size (None if sizes differ) of the first files."""
    modes, sizes = Counter(), set()
    for path in files[:limit]:
        try:
            with Image.open(path) as image:
                gray = image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;")
                modes[1 if gray else 3] += 1
                sizes.add((image.height, image.width))
        except (OSError, ValueError, SyntaxError):
            continue
    channels = 1 if modes[1] > modes[3] else 3
    return channels, (sizes.pop() if len(sizes) == 1 else None)


def load_folder(
    root: Path, *, val_fraction: float, image_size: int, resize_mode: str, channels: int
) -> DataBundle:
    """An image folder in either layout (see `list_folder`) as a bundle of ImageFiles."""
    listing = list_folder(root, val_fraction)
    classes = listing.classes
    train_files, val_files = listing.splits["train"], listing.splits["val"]
    layout = listing.layout
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s); need at least 2")
    if not train_files or not val_files:
        raise DataError(f"{root}: no image files found for the train or the validation split")
    probed_channels, common_size = _probe([p for p, _ in train_files])
    channels = channels or probed_channels
    if image_size:
        size = (image_size, image_size)
    elif common_size and max(common_size) <= FALLBACK_IMAGE_SIZE * 2:
        size = common_size
    else:
        size = (FALLBACK_IMAGE_SIZE, FALLBACK_IMAGE_SIZE)
    return DataBundle(
        train=ImageFiles(train_files, channels, size, resize_mode),
        val=ImageFiles(val_files, channels, size, resize_mode),
        classes=classes,
        channels=channels,
        size=size,
        digits=False,
        description=f"image folder {layout}",
    )


def load_data(
    spec: str, *, val_fraction: float, image_size: int, resize_mode: str, channels: int
) -> DataBundle:
    """The bundle for a --data value: an embedded name or an image folder."""
    check_data_spec(spec)
    options = dict(
        val_fraction=val_fraction, image_size=image_size, resize_mode=resize_mode, channels=channels
    )
    if is_embedded(spec):
        return load_embedded(spec, **options)
    return load_folder(Path(spec), **options)


class NamedSamples(Dataset):
    """Wraps a user's Dataset so a failing sample names its index (and file, when known)
    instead of dying anonymously inside a DataLoader worker."""

    def __init__(self, dataset: Dataset, channels: int, size: tuple[int, int], resize_mode: str):
        self.dataset = dataset
        self.channels = channels
        self.size = size
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.dataset)

    def _where(self, index: int) -> str:
        dataset = self.dataset
        while isinstance(dataset, Subset):  # name the sample in the user's own Dataset
            index, dataset = dataset.indices[index], dataset.dataset
        name = type(dataset).__name__
        for attribute in ("img_list", "imgs", "samples", "files"):
            items = getattr(dataset, attribute, None)
            if isinstance(items, (list, tuple)) and 0 <= index < len(items):
                item = items[index]
                return f"{name}[{index}] ({item[0] if isinstance(item, tuple) else item})"
        return f"{name}[{index}]"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            sample = self.dataset[index]
            image, label = sample[0], sample[1]
            tensor = match_channels(to_uint8_chw(image), self.channels)
            return fit_to_size(tensor, self.size, self.resize_mode), int(label)
        except DataError as error:
            raise DataError(f"{self._where(index)}: {error}") from None
        except Exception as error:  # the user's code: name the sample, keep the cause
            raise DataError(
                f"{self._where(index)} could not be loaded: {type(error).__name__}: {error}"
            ) from error


def _labels_of(dataset: Dataset) -> list[int] | None:
    """The labels a Dataset declares (torchvision's `targets`), without loading images."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]


def bundle_datasets(
    train: Dataset,
    val: Dataset | None,
    classes: list[str] | None,
    *,
    val_fraction: float,
    image_size: int,
    resize_mode: str,
    channels: int,
) -> DataBundle:
    """A user's map-style Dataset(s) yielding (image, label) as a bundle.

    Without `val`, a share `val_fraction` of `train` is held out (stratified when the
    Dataset has `targets`). Channels and size come from the first sample unless given.
    """
    if len(train) == 0:
        raise DataError("the training Dataset is empty")
    first = NamedSamples(train, 0, (0, 0), resize_mode)
    try:
        probe = to_uint8_chw(train[0][0])
    except Exception as error:
        raise DataError(f"{first._where(0)} could not be loaded: {error}") from error
    channels = channels or (1 if probe.shape[0] == 1 else 3)
    if image_size:
        size = (image_size, image_size)
    elif max(probe.shape[-2:]) <= FALLBACK_IMAGE_SIZE * 2:
        size = tuple(probe.shape[-2:])
    else:
        size = (FALLBACK_IMAGE_SIZE, FALLBACK_IMAGE_SIZE)
    labels = _labels_of(train)
    if val is None:
        if labels is not None:
            train_index, val_index = stratified_split(torch.tensor(labels), val_fraction)
        else:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
            held_out = max(1, int(round(len(train) * val_fraction)))
            train_index, val_index = order[held_out:].sort().values, order[:held_out].sort().values
        val = Subset(train, val_index.tolist())
        train = Subset(train, train_index.tolist())
    classes = list(
        classes
        or getattr(train, "classes", None)
        or getattr(getattr(train, "dataset", None), "classes", None)
        or []
    )
    if not classes:
        labels = (
            labels if labels is not None else [int(s[1]) for s in train] + [int(s[1]) for s in val]
        )
        classes = [str(i) for i in range(max(labels) + 1)]
    return DataBundle(
        train=NamedSamples(train, channels, size, resize_mode),
        val=NamedSamples(val, channels, size, resize_mode),
        classes=[str(c) for c in classes],
        channels=channels,
        size=size,
        digits=False,
        description=f"{type(first.dataset).__name__} (your Dataset)",
    )
