"""WebDataset streaming against the folder path, on the same images.

A generated folder of JPEG photos of 500x375 pixels in 4 classes (data_delivery.py's
make_photos) is written as WebDataset shards by taolu's own exporter (the same training
split, each file's bytes as they are), then delivered at 64x64 as normalised, augmented
batches of 128 on the CPU, epoch by epoch, three ways in this one script:
  folder, cache off:  files decoded every epoch by DataLoader workers (what data too big for
                      the cache gets from a folder)
  folder, cache ram:  decoded once into memory, then sliced (taolu's fast path)
  shards, streamed:   tar shards read in order, decoded every epoch by DataLoader workers,
                      through the shuffle buffer (never cached: for data larger than memory)
Epoch 1 includes everything before the first batch (listing or scanning, cache decoding).
Run:  .venv/bin/python benchmarks/webdataset_stream.py [--images 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from data_delivery import make_photos

from taolu.data.bench import measure_delivery
from taolu.data.pipeline import DataOptions
from taolu.data.shard_export import export_shards
from taolu.train_options import build_train_config


def delivery(options: dict, epochs: int) -> dict:
    base = {"image_size": 64, "batch_size": 128, "workers": 2}
    config = build_train_config(None, {**base, **options})
    return measure_delivery(
        DataOptions.taken_from(config),
        batch_size=config.batch_size,
        augment=config.augment,
        seed=config.seed,
        epochs=epochs,
        device=torch.device("cpu"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        photos, shards = Path(folder) / "photos", Path(folder) / "shards"
        make_photos(photos, args.images)
        written = export_shards(str(photos), shards, shard_size=args.shard_size)
        train_pattern, val_pattern = written["train"][1], written["val"][1]
        results = {
            "folder, cache off": delivery({"data": str(photos), "cache": "off"}, args.epochs),
            "folder, cache ram": delivery({"data": str(photos), "cache": "ram"}, args.epochs),
            "shards, streamed": delivery(
                {"data": train_pattern, "val_shards": val_pattern}, args.epochs
            ),
        }
    images = {name: result["images"] for name, result in results.items()}
    print(
        f"{args.images} JPEGs 500x375 -> 64x64, batch 128, CPU, 2 workers, "
        f"{torch.get_num_threads()} threads; training images per path: {images}"
    )
    stream = results["shards, streamed"]["images_per_second"]
    for name, result in results.items():
        rates = result["images_per_second"]
        shown = "  ".join(f"epoch {e}: {rate:>7,.0f} img/s" for e, rate in enumerate(rates, 1))
        ratios = "  ".join(f"{s / r:4.2f}x" for s, r in zip(stream, rates, strict=True))
        print(f"{name:<18} {shown}   streamed / this: {ratios}")


if __name__ == "__main__":
    main()
