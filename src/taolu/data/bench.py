"""`taolu data bench`: how fast the data path delivers normalised, augmented batches on the
device, epoch by epoch, with no model in the way."""

from __future__ import annotations

import time

import torch

from taolu.data.loaders import Batches
from taolu.data.pipeline import DataOptions, batch_transforms, load_training_data


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_delivery(
    data: DataOptions,
    *,
    batch_size: int,
    augment: str,
    seed: int,
    epochs: int,
    device: torch.device,
) -> dict:
    """Images per second delivered per epoch. Epoch 1 includes everything before the first
    batch (listing the files, and decoding them into the cache), as a real run pays it."""
    started = time.perf_counter()
    prepared = load_training_data(data)
    bundle = prepared.bundle
    batches = Batches(
        bundle.train,
        batch_size,
        device,
        shuffle=True,
        workers=prepared.workers,
        skips=prepared.skips,
    )
    train_transform, _, _ = batch_transforms(
        augment, prepared, device, channels_last=device.type != "mps"
    )
    generator = torch.Generator().manual_seed(seed)
    rates = []
    for _ in range(epochs):
        delivered = 0
        for images, labels in batches.iterate(generator):
            train_transform(images, generator)
            delivered += labels.shape[0]
        _synchronize(device)
        rates.append(round(delivered / (time.perf_counter() - started), 1))
        started = time.perf_counter()
    return {
        "images_per_second": rates,
        "cache": prepared.cache,
        "images": len(bundle.train),
        "size": list(bundle.size),
        "skipped_files": len(prepared.skips.reasons),
    }
