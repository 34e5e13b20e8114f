"""`taolu data export --format webdataset`: any data set taolu reads, written as WebDataset tar
shards, TARGET/train-NNNNNN.tar and TARGET/val-NNNNNN.tar (KEY.<image suffix> + KEY.cls) with
TARGET/classes.txt. Image files keep their encoded bytes; in-memory sets are written as PNG."""

from __future__ import annotations

import io
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from taolu.data import sources
from taolu.data.cache import header_problem
from taolu.data.decode import read_source
from taolu.data.embedded import SPLIT_SEED
from taolu.data.export import load_tensor_splits, move_into_place, refuse_used_target
from taolu.data.shard_files import CLASSES_FILE, IMAGE_SUFFIXES, import_webdataset
from taolu.errors import DataError

logger = logging.getLogger("taolu")

# Pillow's format name -> the suffix a WebDataset sample's image goes under.
FORMAT_SUFFIXES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
FORMAT_SUFFIXES |= {"TIFF": "tiff", "PPM": "ppm"}
Sample = tuple[Callable[[], tuple[str, bytes]], int]  # (read: -> (suffix, bytes), label)


def _png(pixels: object) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "png", buffer.getvalue()


def _tensor_samples(spec: str, data_root: str | None, val_fraction: float) -> tuple:
    splits, classes = load_tensor_splits(spec, data_root, val_fraction)
    samples: dict[str, list[Sample]] = {}
    for name, split in splits.items():
        images = split.images.numpy()  # (N, C, H, W)
        samples[name] = [
            (
                lambda image=images[i]: _png(
                    image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
                ),
                int(label),
            )
            for i, label in enumerate(split.labels.tolist())
        ]
    return classes, samples


def _encoded(source: object) -> tuple[str, bytes]:
    """A file's (or stored image's) own bytes, under the suffix of its format."""
    with read_source(source) as file:
        data = file.read()
    suffix = Path(str(source)).suffix.lower().lstrip(".")
    if suffix not in IMAGE_SUFFIXES:
        with Image.open(io.BytesIO(data)) as image:
            suffix = FORMAT_SUFFIXES.get(image.format or "", "")
        if not suffix:
            raise DataError(f"{source}: its format has no WebDataset image suffix")
    return suffix, data


def _file_samples(spec: str, val_fraction: float, image_column: str, label_column: str) -> tuple:
    kind = sources.data_kind(spec)
    path = Path(spec).expanduser()
    if kind == sources.HF_DATASET:
        listing = sources.list_hf_dataset(spec, val_fraction, image_column, label_column)
    elif kind == sources.CSV_LIST:
        listing = sources.list_csv(path, val_fraction)
    else:
        listing = sources.list_folder(path, val_fraction)
    samples: dict[str, list[Sample]] = {}
    for name, files in listing.splits.items():
        samples[name] = []
        for source, label in files:
            problem = header_problem(source)
            if problem:  # the shards would only carry it for training to skip
                logger.warning("left out %s", problem)
                continue
            samples[name].append(((lambda source=source: _encoded(source)), label))
    return listing.classes, samples


def _write_split(samples: list[Sample], folder: Path, split: str, shard_size: int) -> int:
    """The samples in a fixed shuffled order (a class-sorted folder must not give
    class-sorted shards), `shard_size` to a shard."""
    ShardWriter = import_webdataset().ShardWriter  # noqa: N806  (the library's class)
    order = list(range(len(samples)))
    random.Random(SPLIT_SEED).shuffle(order)
    pattern = str(folder / f"{split}-%06d.tar")
    with ShardWriter(pattern, maxcount=shard_size, encoder=False, verbose=0) as writer:
        for index in order:
            read, label = samples[index]
            suffix, data = read()
            writer.write({"__key__": f"{split}-{index:08d}", suffix: data, "cls": b"%d" % label})
        return writer.shard


def shard_pattern(folder: Path, split: str, shards: int) -> str:
    """The brace pattern naming a split's shards, as --data takes it."""
    if shards == 1:
        return str(folder / f"{split}-000000.tar")
    return str(folder / f"{split}-{{000000..{shards - 1:06d}}}.tar")


def export_shards(
    spec: str,
    target: str | Path,
    *,
    data_root: str | None = None,
    val_fraction: float = 0.2,
    shard_size: int = 1000,
    image_column: str = "",
    label_column: str = "",
) -> dict[str, tuple[int, str]]:
    """Write `spec` (an embedded or torchvision set, an image folder, a CSV list, a Hugging
    Face dataset) as shards under a new or empty `target`, through a hidden staging folder
    renamed into place at the end. Returns, per split, (images, the shards' pattern)."""
    target = Path(target).expanduser()
    refuse_used_target(target)
    if sources.is_named_set(spec) and not spec.startswith("hf:"):
        classes, splits = _tensor_samples(spec, data_root, val_fraction)
    else:
        classes, splits = _file_samples(spec, val_fraction, image_column, label_column)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(".partial", f".{target.name}.", target.parent))
    try:
        written = {}
        for split, samples in splits.items():
            shards = _write_split(samples, staging, split, shard_size)
            written[split] = (len(samples), shard_pattern(target, split, shards))
        names = [" ".join(name.splitlines()) for name in classes]
        (staging / CLASSES_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
        move_into_place(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"exporting {spec} to {target} failed: {error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written
