"""The data types every data module shares, below all of them: a split in memory
(ImageTensors), a split read as a stream (StreamedSplit), a file-based data set's listing
(FileListing), and the bundle a source hands the routine (DataBundle)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

# The names a validation split goes by, in the order looked for (folders and split names).
VAL_SPLIT_NAMES = ("val", "valid", "validation", "test")
# When image_size is 0 and the images differ in size (or are large), they are fitted to this.
FALLBACK_IMAGE_SIZE = 128


def image_size_for(asked: int, found: tuple[int, int] | None) -> tuple[int, int]:
    """The one image-size rule, (H, W) every image of a data set is fitted to: the size asked
    for (--image-size); else the images' own common size `found`, up to twice the fallback;
    else (sizes differ, or larger) the fallback, FALLBACK_IMAGE_SIZE square."""
    if asked:
        return (asked, asked)
    if found is not None and max(found) <= FALLBACK_IMAGE_SIZE * 2:
        return (int(found[0]), int(found[1]))
    return (FALLBACK_IMAGE_SIZE, FALLBACK_IMAGE_SIZE)


@dataclass(frozen=True)
class ImageTensors:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels (N,); `names`, the
    file each image was decoded from, when it came from files."""

    images: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class StreamedSplit:
    """A split read as a stream (WebDataset shards, data/shards.py): its size and labels are
    known, its images only as they stream past; no random access. Batches asks it for each
    epoch's batches."""

    def __len__(self) -> int:
        raise NotImplementedError

    def share_length(self, rank: int, world_size: int, equal: bool) -> int:
        """Samples process `rank` of `world_size` streams (`equal`: the fewest of any)."""
        raise NotImplementedError

    def holds(self, name: str) -> bool:
        """Whether the sample named `name` (as skips name it) belongs to this split."""
        raise NotImplementedError

    def first_images(self, limit: int) -> torch.Tensor:
        """Up to `limit` decoded images (N, C, H, W), for statistics."""
        raise NotImplementedError

    def batches(self, batch_size: int, device: torch.device, **how: object) -> Iterator:
        """The epoch's (images, labels) batches of one process on `device`."""
        raise NotImplementedError


Split = ImageTensors | Dataset | StreamedSplit


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
    listing: FileListing | None = None  # for file-based data: what each split was made of
    # The caller's own Datasets: what the images show is unknown, so a flip may change the
    # class (a mirrored digit, letter or sign).
    user_data: bool = False

    @property
    def streamed(self) -> bool:
        """Read from disk as a stream every epoch (shards), so never cached."""
        return isinstance(self.train, StreamedSplit)

    @property
    def flips_keep_classes(self) -> bool:
        """Whether a horizontal flip keeps every image's class: known for taolu's sources
        (photo folders, CSV lists, torchvision's photo sets), never assumed for digits or for
        a user's Dataset (measured: flipping the seed's RGB digit arrays cost 4.6 points,
        benchmarks/recipe_zoo.py case tudui-rgb)."""
        return not self.digits and not self.user_data


# Why a row of a CSV list was passed over: the data doctor files these under their own
# heading, apart from the walk's links, loops and FIFOs.
LISTED_MISSING = "listed in CSV but missing"
LISTED_NOT_A_FILE = "listed in CSV but not a regular file"


@dataclass
class FileListing:
    """The files of a file-based data set, split and labelled, before any is decoded."""

    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]  # "train" / "val" -> (path, label index)
    layout: str  # how the splits were found, for messages
    others: list[Path] = field(default_factory=list)  # non-image files met on the way
    passed_over: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)
