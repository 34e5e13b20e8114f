"""From options to batches: the data source, the decoded cache, the refusal of broken data
sets, and the batch transforms. Training and `taolu data bench` both start here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from taolu.config import TrainConfig
from taolu.data.cache import decode_once
from taolu.data.loaders import BatchTransform, Preprocessing, SkipLog, auto_workers
from taolu.data.sources import DataBundle, ImageTensors, bundle_datasets, load_data
from taolu.errors import DataError

logger = logging.getLogger("taolu")


@dataclass
class TrainingData:
    """Both splits ready to batch, and how they got there."""

    bundle: DataBundle
    skips: SkipLog  # files left out because they could not be decoded
    workers: int  # DataLoader workers; 0 for in-memory tensors
    cache: str  # "tensors" (in memory from the start), "ram", "disk" or "off"


def refuse_too_many_bad_files(
    data: DataBundle, skips: SkipLog, max_bad_fraction: float, spec: str
) -> None:
    """Training stops before it starts when too much of the data cannot be read: that is a
    broken data set, not a few stray files."""
    listed = sum(len(files) for files in data.listing.splits.values())
    bad = len(skips.reasons)
    if listed and bad / listed > max_bad_fraction:
        examples = "; ".join(list(skips.reasons.values())[:3])
        raise DataError(
            f"{bad} of {listed} image files ({bad / listed:.1%}) cannot be read, more than "
            f"--max-bad-fraction {max_bad_fraction}; `taolu data check {spec}` lists them all. "
            f"First: {examples}"
        )


def load_training_data(
    config: TrainConfig,
    *,
    train_data: Dataset | None = None,
    val_data: Dataset | None = None,
    classes: list[str] | None = None,
    manifest: Path | None = None,
) -> TrainingData:
    """The data of `config` (or the caller's own Datasets); file-based data is decoded once
    into the cache when it fits, and refused when too much of it is unreadable."""
    sizing = dict(
        val_fraction=config.val_fraction,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        channels=config.channels,
    )
    if train_data is not None:
        bundle = bundle_datasets(train_data, val_data, classes, **sizing)
    else:
        bundle = load_data(config.data, data_root=config.data_root, manifest=manifest, **sizing)
    skips = SkipLog()
    if isinstance(bundle.train, ImageTensors):
        return TrainingData(bundle, skips, workers=0, cache="tensors")
    workers = auto_workers(config.workers)
    cache = "off"
    if bundle.listing is not None:
        for path, why in bundle.listing.passed_over:
            logger.warning("ignored %s: %s", path, why)
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else None
        bundle, cache = decode_once(bundle, config.cache, cache_dir, workers, skips)
        refuse_too_many_bad_files(bundle, skips, config.max_bad_fraction, config.data)
    in_memory = isinstance(bundle.train, ImageTensors)
    return TrainingData(bundle, skips, workers=0 if in_memory else workers, cache=cache)


def batch_transforms(
    augment: str,
    bundle: DataBundle,
    preprocessing: Preprocessing,
    device: torch.device,
    channels_last: bool,
) -> tuple[BatchTransform, BatchTransform, str]:
    """(train transform, eval transform, augmentation used). `auto` shifts digits and also
    flips everything else; the shift is about 1/14 of the image side (2 px at 28 px)."""
    if augment == "auto":
        augment = "shift" if bundle.digits else "shift-flip"
    shift = 0 if augment == "none" else max(1, round(min(bundle.size) / 14))
    train = BatchTransform(
        preprocessing,
        device,
        shift=shift,
        flip=augment == "shift-flip",
        channels_last=channels_last,
    )
    return train, BatchTransform(preprocessing, device, channels_last=channels_last), augment
