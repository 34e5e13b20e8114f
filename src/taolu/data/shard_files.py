"""WebDataset tar shards on disk, the format: brace patterns, a sample as WebDataset groups
tar members (KEY.<image suffix> with KEY.cls, its class index), a header-only scan for sizes
and labels, classes.txt, and the raw samples in order. Streaming them is shards.py's."""

from __future__ import annotations

import functools
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taolu.errors import ConfigError, DataError

logger = logging.getLogger("taolu")

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
LABEL_SUFFIX = "cls"
CLASSES_FILE = "classes.txt"  # one class name a line, in label order, beside the shards


@functools.cache
def import_webdataset() -> Any:
    """The `webdataset` library (imported only for shards), or a ConfigError saying how to
    get it."""
    try:
        import braceexpand  # noqa: F401  (webdataset's own dependency, for the brace patterns)
        import webdataset
        import webdataset.filters
        import webdataset.tariterators
    except ImportError:
        raise ConfigError(
            "WebDataset shards need the webdataset library: pip install 'taolu[webdataset]'"
        ) from None
    return webdataset


def is_shard_pattern(spec: str) -> bool:
    """A --data value naming tar shards: a path or a brace pattern ending in .tar."""
    return spec.lower().endswith(".tar")


def expand_pattern(pattern: str) -> list[Path]:
    """The shard files of a brace pattern (`train-{000..009}.tar`), each of which must exist."""
    import_webdataset()
    import braceexpand  # the brace syntax WebDataset's users write

    paths = [Path(path).expanduser() for path in braceexpand.braceexpand(pattern)]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{pattern}: {len(missing)} of {len(paths)} shard file(s) missing: {shown}{more} "
            "(`taolu data export SPEC DIR --format webdataset` writes shards)"
        )
    return paths


def sample_key(name: str) -> tuple[str, str] | tuple[None, None]:
    """(key, suffix) of a member name as WebDataset groups them: the suffix starts at the
    first dot of the file name (`a/b.seg.png` -> `a/b`, `seg.png`)."""
    key, suffix = import_webdataset().tariterators.base_plus_ext(name)
    return (key, suffix.lower()) if key is not None else (None, None)


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class ShardFacts:
    """One shard as a header-only pass found it: its usable samples and their labels."""

    path: Path
    labels: Counter  # class index -> samples

    @property
    def count(self) -> int:
        return sum(self.labels.values())


def _label(data: bytes) -> int | None:
    try:
        value = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if value >= 0 else None


def scan_shard(path: Path) -> ShardFacts:
    """Count the samples that have an image and a label, reading member headers and the small
    .cls members only (image data is seeked over): cheap next to decoding."""
    suffixes: dict[str, set[str]] = {}
    labels: dict[str, int | None] = {}
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                key, suffix = sample_key(member.name)
                if key is None or not member.isreg():
                    continue
                suffixes.setdefault(key, set()).add(suffix)
                if suffix == LABEL_SUFFIX:
                    labels[key] = _label(archive.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable tar shard ({error})") from None
    counts = Counter(
        labels[key]
        for key, found in suffixes.items()
        if labels.get(key) is not None and found.intersection(IMAGE_SUFFIXES)
    )
    return ShardFacts(path, counts)


def read_classes(shards: list[ShardFacts]) -> list[str]:
    """classes.txt beside the first shard, else the label indices found, as names."""
    names_file = shards[0].path.parent / CLASSES_FILE
    if names_file.is_file():
        try:
            names = [line.strip() for line in names_file.read_text("utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{names_file}: cannot read ({error})") from None
        names = [name for name in names if name]
        top = max((label for shard in shards for label in shard.labels), default=-1)
        if top >= len(names):
            raise DataError(
                f"{names_file} names {len(names)} classes, but a shard holds label {top}"
            )
        return names
    top = max((label for shard in shards for label in shard.labels), default=-1)
    return [str(label) for label in range(top + 1)]


def raw_samples(paths: list[Path]) -> Iterator[dict]:
    """Samples of the shards in order, as WebDataset groups them ({"__key__", "__url__",
    suffix: bytes}); a shard that breaks off part way is named and left there."""
    tariterators = import_webdataset().tariterators

    def opened() -> Iterator[dict]:
        for path in paths:
            with open(path, "rb") as stream:
                yield {"url": str(path), "stream": stream}

    def note(error: Exception) -> bool:
        logger.warning("shard read error, rest of that shard left out: %s", error.args[0])
        return True

    expanded = tariterators.tar_file_expander(opened(), handler=note)
    return tariterators.group_by_keys(expanded, handler=note)


@dataclass(frozen=True)
class TarSample:
    """A StoredImage (decode.py): one sample's image as read from its shard, named
    SHARD:KEY."""

    name: str
    data: bytes = field(repr=False)
    stamp: str = ""

    def encoded(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


def usable(sample: dict) -> tuple[TarSample, int] | str:
    """A raw sample's image and label, or why it is not a sample (no image, no label)."""
    name = f"{sample['__url__']}:{sample['__key__']}"
    label = _label(sample.get(LABEL_SUFFIX, b""))
    image_suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    if image_suffix is None or label is None:
        return f"{name}: no image, or no .{LABEL_SUFFIX} class index"
    return TarSample(name, sample[image_suffix]), label


def tar_samples(paths: list[Path], passed_over: list) -> Iterator[tuple[TarSample, int]]:
    """(image, label) of every usable sample of the shards in order; the others are added to
    `passed_over` as (name, why)."""
    for sample in raw_samples(paths):
        found = usable(sample)
        if isinstance(found, str):
            passed_over.append(tuple(found.split(": ", 1)))
            continue
        yield found


def split_shards(
    spec: str, val_shards: str, val_fraction: float
) -> tuple[list[Path], list[Path], str]:
    """(train shards, validation shards, how): --val-shards when given, else the last
    `val_fraction` of the --data shards (at least one, and one left to train on) held out
    whole, the same ones every run."""
    paths = expand_pattern(spec)
    if val_shards:
        return paths, expand_pattern(val_shards), f"{spec}, validation {val_shards}"
    if len(paths) < 2:
        raise DataError(
            f"{spec}: one shard, so none can be held out for validation; give --val-shards "
            "PATTERN or write more shards"
        )
    held = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    how = f"{spec}, last {held} of {len(paths)} shards held out for validation"
    return paths[:-held], paths[-held:], how
