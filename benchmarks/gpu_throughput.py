"""GPU throughput: taolu training the ResNet-9-style built-in net (resnet9) on CIFAR-shaped data
(3x32x32, 10 classes) on CUDA, in bf16 and fp16, channels_last, eager and torch.compile'd,
side by side in this one script run, each with its MFU against the GPU's measured matmul peak.

  data:    random uint8 images (--train-images, default 50,000; 10,000 validation) written in
           CIFAR-10's on-disk format to a temporary folder and read back by taolu's own reader
           (data="cifar10", data_root=...), so training takes taolu's in-memory path: whole
           batches sliced from one uint8 tensor and shift-flip augmented on the GPU, no
           DataLoader. Labels are random: this measures speed, not learning.
  runs:    taolu.train(model="resnet9", device="cuda", channels_last="on", precision=...,
           compile=..., batch_size=--batch-size, epochs=--epochs); images/s is the median of
           the per-epoch training rates from epoch 2 on (epoch 1 pays for cuDNN autotuning and
           compilation; validation and checkpoints are outside the rate)
  peak:    the best FLOP/s of square torch.mm at 4096 and 8192 in bf16 (and fp16) on this GPU,
           measured here, not a datasheet figure
  FLOPs:   taolu.models.summary.count_flops("resnet9", 32, 3)["train_step"] per image
           (forward + backward convolutions and matmuls, torch.utils.flop_counter)
Each row's ratio is its images/s over the bf16 eager row's.
Run:  .venv/bin/python benchmarks/gpu_throughput.py [--train-images 50000] [--epochs 3]
      [--batch-size 512] [--no-compile]
Without a CUDA GPU it says so and exits 0 (--device cpu runs a CPU smoke test of the script).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mfu import matmul_peak  # benchmarks/mfu.py, beside this script

import taolu
from taolu.models.summary import count_flops

CIFAR_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip
TRAIN_BATCHES = 5  # CIFAR-10's data_batch_1 .. data_batch_5


def write_cifar10(root: Path, train_images: int, val_images: int, seed: int = 0) -> None:
    """Random uint8 images in ROOT/cifar-10-batches-py, as CIFAR-10's python pickles hold them:
    rows of 3,072 bytes (red, green, blue planes), labels as a list of ints."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    counts = [train_images // TRAIN_BATCHES] * TRAIN_BATCHES
    counts[-1] += train_images % TRAIN_BATCHES
    names = [f"data_batch_{n}" for n in range(1, TRAIN_BATCHES + 1)] + ["test_batch"]
    for name, count in zip(names, [*counts, val_images], strict=True):
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, 10, count).tolist(),
        }
        # Protocol 4: numpy arrays pickle as _reconstruct + raw bytes, which taolu's restricted
        # unpickler allows (protocol 5 would name numpy's _frombuffer, which it refuses).
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {"label_names": CIFAR_NAMES, "num_vis": 3 * 32 * 32}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))


def train_rate(
    data_root: Path, device: str, precision: str, compile: bool, batch_size: int, epochs: int
) -> tuple[float, dict, float]:
    """(median training images/s from epoch 2 on, summary.json, wall seconds) of one run."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = taolu.train(
            model="resnet9",
            data="cifar10",
            data_root=str(data_root),
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            precision=precision,
            compile=compile,
            channels_last="on",
            augment="shift-flip",
            out=out,
            progress=False,
            verbose=False,
        )
    rates = [float(row["train_images_per_second"]) for row in result.history]
    return statistics.median(rates[1:] or rates), result.summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--val-images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3, help="per run (>= 2)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="add compiled rows"
    )
    parser.add_argument(
        "--precision", nargs="+", default=["bf16", "fp16"], choices=("bf16", "fp16")
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput.py needs a CUDA GPU and none is visible; nothing measured")
        return
    device = torch.device(args.device)
    precisions = list(args.precision)
    if device.type == "cpu":  # the smoke test: taolu refuses fp16 on the CPU
        precisions = [name for name in precisions if name != "fp16"] or ["bf16"]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("this GPU has no native bf16; bf16 rows left out")
        precisions = [name for name in precisions if name != "bf16"] or ["fp16"]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"device: {where}; torch {torch.__version__}", flush=True)
    flops_per_image = count_flops("resnet9", 32, 3, 10)["train_step"]
    peaks = {}
    for precision in precisions:
        peaks[precision], size = matmul_peak(precision, device)
        print(
            f"measured {precision} matmul peak: {peaks[precision] / 1e12:.1f} TFLOP/s "
            f"(torch.mm {size}x{size}, best of 5)",
            flush=True,
        )
    print(
        f"resnet9: {flops_per_image / 1e9:.3f} GFLOP per training image (forward + backward); "
        f"{args.train_images:,} train / {args.val_images:,} val random CIFAR-shaped images, "
        f"batch {args.batch_size}, {args.epochs} epochs per run, channels_last",
        flush=True,
    )

    runs = [(precision, False) for precision in precisions]
    if args.compile:
        runs.append((precisions[0], True))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_cifar10(Path(folder), args.train_images, args.val_images)
        for precision, compiled in runs:
            rate, summary, wall = train_rate(
                Path(folder), args.device, precision, compiled, args.batch_size, args.epochs
            )
            if summary["precision"] != precision:  # taolu picked otherwise: the row would lie
                raise SystemExit(f"taolu trained in {summary['precision']}, not {precision}")
            label = f"{precision} {'compile' if compiled else 'eager'}"
            print(f"  {label}: {rate:,.0f} img/s ({wall:.0f} s for the whole run)", flush=True)
            rows.append((label, precision, rate))

    print()
    header = (
        f"{'run':<16}{'images/s':>11}{'vs bf16 eager':>15}{'achieved TFLOP/s':>18}"
        f"{'peak TFLOP/s':>14}{'MFU':>8}"
    )
    print(header)
    print("-" * len(header))
    baseline = rows[0][2]
    for label, precision, rate in rows:
        achieved = flops_per_image * rate
        print(
            f"{label:<16}{rate:>11,.0f}{rate / baseline:>14.2f}x{achieved / 1e12:>18.2f}"
            f"{peaks[precision] / 1e12:>14.1f}{achieved / peaks[precision]:>7.1%}"
        )
    if rows[0][0] != "bf16 eager":
        print(f"(ratios are against {rows[0][0]})")


if __name__ == "__main__":
    main()
