"""The decoded cache, taolu's fast path for files: each image is decoded once, at the training
size, into one uint8 tensor (N, C, H, W) — in RAM, or in a memory-mapped file that later runs
reuse — and every epoch after that is tensor slicing plus batch augmentation on the device.

A disk cache is keyed by the file list, each file's size and modification time, and the
decoding settings; when any of them changes, the key changes and the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from taolu.data.bundle import DataBundle, ImageTensors
from taolu.data.decode import decode_file, is_stored, read_source
from taolu.data.loaders import SkipLog
from taolu.errors import DataError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taolu"


def memory_budget_bytes() -> int:
    """How much decoded data `--cache auto` holds in RAM: a quarter of physical memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return total // 4


def decoded_bytes(count: int, channels: int, size: tuple[int, int]) -> int:
    return count * channels * size[0] * size[1]


def choose_cache(mode: str, count: int, channels: int, size: tuple[int, int]) -> str:
    """`auto` caches in RAM when the decoded images fit the memory budget, else reads files
    through a DataLoader every epoch; `ram`, `disk` and `off` are taken as asked."""
    if mode != "auto":
        return mode
    return "ram" if decoded_bytes(count, channels, size) <= memory_budget_bytes() else "off"


@dataclass
class DecodedSplit:
    """A split decoded into memory; `kept` indexes the files that decoded, `skipped` names
    the ones that did not, with the reason."""

    tensors: ImageTensors
    kept: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _decode_one(
    path: Path, channels: int, size: tuple[int, int], resize_mode: str
) -> torch.Tensor | str:
    """The decoded image, or the reason it could not be decoded: one corrupt file never
    stops the build."""
    try:
        return decode_file(path, channels, size, resize_mode)
    except DataError as error:
        return str(error)


def _decode_into(
    target: torch.Tensor,
    files: list[Path],
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
    workers: int,
) -> tuple[list[bool], list[tuple[str, str]]]:
    """Decode `files` into the rows of `target` (N, C, H, W) on `workers` threads.

    Threads, not processes: Pillow and torch release the GIL while decoding and resizing,
    and threads need no start-up and no copy between processes. Measured on 2 cores with
    1,600 JPEGs of 500x375 at 64 px: 2 threads 0.95 s, 2 DataLoader worker processes 1.14 s.
    """

    def decode(index: int) -> str:
        result = _decode_one(files[index], channels, size, resize_mode)
        if isinstance(result, str):
            return result
        target[index].copy_(result)  # each thread writes its own rows
        return ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = list(pool.map(decode, range(len(files)), chunksize=16))
    skipped = [(str(files[i]), error) for i, error in enumerate(errors) if error]
    return [not error for error in errors], skipped


def _compact(images: torch.Tensor, decoded: list[bool]) -> list[int]:
    """Move the rows of decoded images to the front, in order, and return their indices.
    In place, so a memory-mapped cache is never copied into RAM."""
    kept = [i for i, ok in enumerate(decoded) if ok]
    for row, index in enumerate(kept):
        if row != index:  # row < index always, so nothing is overwritten before it is moved
            images[row] = images[index]
    return kept


def _pack(
    images: torch.Tensor,
    files: list[tuple[Path, int]],
    kept: list[int],
    skipped: list[tuple[str, str]],
) -> DecodedSplit:
    label_tensor = torch.tensor([files[i][1] for i in kept], dtype=torch.long)
    names = tuple(str(files[i][0]) for i in kept)
    return DecodedSplit(ImageTensors(images[: len(kept)], label_tensor, names), kept, skipped)


def decode_to_ram(
    files: list[tuple[Path, int]],
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
    workers: int,
) -> DecodedSplit:
    images = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    paths = [path for path, _ in files]
    decoded, skipped = _decode_into(images, paths, channels, size, resize_mode, workers)
    return _pack(images, files, _compact(images, decoded), skipped)


def cache_key(
    files: list[tuple[Path, int]], channels: int, size: tuple[int, int], resize_mode: str
) -> str:
    """Changes whenever a file is added, removed, relabelled, resized or touched, or the
    decoding settings change."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, channels, list(size), resize_mode]).encode())
    for path, label in files:
        if is_stored(path):  # an image inside a container: its name and the container's stamp
            digest.update(f"{path.name}\0{label}\0{path.stamp}\n".encode())
            continue
        try:
            status = os.stat(path)
            stamp = f"{status.st_size}:{status.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{Path(path).resolve()}\0{label}\0{stamp}\n".encode())
    return digest.hexdigest()[:32]


def decode_to_disk(
    files: list[tuple[Path, int]],
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
    workers: int,
    cache_dir: Path,
) -> tuple[DecodedSplit, bool]:
    """Decode into a memory-mapped file under `cache_dir`, or reuse the one whose key matches.
    Returns the split and whether it was reused. The metadata file is renamed into place
    last, so a build that was interrupted is never taken for a finished one."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(files, channels, size, resize_mode)
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    shape = (len(files), channels, *size)
    if data_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("shape") == list(shape) and data_path.stat().st_size == np.prod(shape):
            # Copy-on-write mapping: pages are read lazily, nothing is ever written back.
            array = np.memmap(data_path, dtype=np.uint8, mode="c", shape=shape)
            skipped = [tuple(item) for item in meta["skipped"]]
            return _pack(torch.from_numpy(array), files, meta["kept"], skipped), True
    temporary = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    try:
        array = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=shape)
        images = torch.from_numpy(array)
        paths = [path for path, _ in files]
        decoded, skipped = _decode_into(images, paths, channels, size, resize_mode, workers)
        kept = _compact(images, decoded)
        array.flush()
        os.replace(temporary, data_path)
    finally:
        temporary.unlink(missing_ok=True)
    meta = {
        "version": CACHE_VERSION,
        "shape": list(shape),
        "kept": kept,
        "skipped": skipped,
        "files": len(files),
    }
    meta_temporary = meta_path.with_name(f".{meta_path.name}.tmp")
    meta_temporary.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(meta_temporary, meta_path)
    return _pack(images, files, kept, skipped), False


def decode_once(
    bundle: DataBundle, mode: str, cache_dir: Path | None, workers: int, skips: SkipLog
) -> tuple[DataBundle, str]:
    """The bundle with both file splits decoded into tensors (`ram` or `disk`), or as it was
    (`off`); files that fail to decode are left out and recorded in `skips`.
    Returns the bundle and the cache mode used."""
    count = len(bundle.train) + len(bundle.val)
    used = choose_cache(mode, count, bundle.channels, bundle.size)
    if used == "off":
        for path in (path for files in bundle.listing.splits.values() for path, _ in files):
            reason = header_problem(path)
            if reason:
                skips.add(str(path), reason)
        return bundle, used

    def decode(name: str) -> ImageTensors:
        files = bundle.listing.splits[name]
        settings = (files, bundle.channels, bundle.size, bundle.train.resize_mode, workers)
        if used == "disk":
            split, _ = decode_to_disk(*settings, cache_dir or default_cache_dir())
        else:
            split = decode_to_ram(*settings)
        for path, reason in split.skipped:
            skips.add(path, reason)
        return split.tensors

    # Both splits now, before the run's header counts them: a file that fails is left out of
    # every count (header, summary, report, data check) alike.
    return replace(bundle, train=decode("train"), val=decode("val")), used


def header_problem(path: Path) -> str:
    """Why a file cannot be an image, judged from its header alone ("" when it looks fine):
    cheap enough to run over every file before a run that decodes files every epoch."""
    try:
        if not is_stored(path) and not stat.S_ISREG(os.stat(path).st_mode):
            return f"{path}: not a regular file"
        with read_source(path) as file, Image.open(file) as image:
            image.size  # noqa: B018  (the header is parsed by open; size proves it)
        return ""
    except UnidentifiedImageError:  # its message would name an in-memory buffer
        return f"{path}: not a readable image (not an image file Pillow can read)"
    except Exception as error:  # any failure to parse means the file is unusable
        return f"{path}: not a readable image ({type(error).__name__}: {error})"
