"""MFU: training FLOP/s (counted with torch.utils.flop_counter) over this machine's measured
matmul peak at the same precision, reported for the default net.

Both figures come from this one script run, on the same device and thread count:
  peak:    the best FLOP/s of large square torch.mm (bf16 tensors for bf16, fp32 for fp32;
           1024-4096 on the CPU, 4096-8192 on CUDA), after a warm-up, best of N timings
  model:   fastcnn on mnist5k (1x28x28, 10 classes, batch 128) trained by taolu.train itself
           for --epochs epochs; images/s is the median of the per-epoch training rates from
           epoch 2 on (epoch 1 pays for kernel selection and allocator growth; validation,
           checkpoints and start-up are outside the rate)
  FLOPs:   taolu.models.summary.count_flops(...)["train_step"] per image: forward + backward,
           as flop_counter counts them (convolutions and matmuls); the optimizer's elementwise
           update and BatchNorm/ReLU/pooling are not counted, so MFU is a model-FLOPs figure
MFU = FLOPs per image x images/s / peak; the ratio printed side by side is that share.
Run:  .venv/bin/python benchmarks/mfu.py [--device cpu|cuda] [--precision bf16 fp32] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import taolu
from taolu.engine.precision import cpu_has_fast_bf16
from taolu.models.summary import count_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL, DATA, IMAGE_SIZE, CHANNELS, CLASSES, BATCH = "fastcnn", "mnist5k", 28, 1, 10, 128


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    precision: str,
    device: torch.device,
    sizes: tuple[int, ...] | None = None,
    repeats: int = 5,
    budget_seconds: float = 3.0,
) -> tuple[float, int]:
    """(best FLOP/s, the size that gave it) of square `torch.mm` at `precision` on `device`.

    Each size gets one untimed warm-up call, then up to `repeats` timings (fewer once
    `budget_seconds` are spent on it); on CUDA each timing runs enough multiplications
    back to back that launch and synchronisation costs vanish in it.
    """
    if sizes is None:
        sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048, 4096)
    dtype = DTYPES[precision]
    best, best_size = 0.0, 0
    for size in sizes:
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        flops = 2.0 * size**3
        inner = max(1, int(2e13 // flops)) if device.type == "cuda" else 1
        torch.mm(a, b)  # warm-up: library initialisation and kernel choice
        _synchronize(device)
        spent = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            _synchronize(device)
            seconds = time.perf_counter() - started
            best, best_size = max((best, best_size), (inner * flops / seconds, size))
            spent += seconds
            if spent > budget_seconds:
                break
        del a, b
    return best, best_size


def train_rate(precision: str, device: str, epochs: int) -> tuple[float, dict]:
    """(median training images/s from epoch 2 on, summary.json) of the default net, trained
    by taolu's own routine."""
    with tempfile.TemporaryDirectory() as folder:
        result = taolu.train(
            data=DATA,
            model=MODEL,
            epochs=epochs,
            batch_size=BATCH,
            device=device,
            precision=precision,
            out=folder,
            progress=False,
            verbose=False,
        )
    rates = [float(row["train_images_per_second"]) for row in result.history]
    return statistics.median(rates[1:] or rates), result.summary


def default_precisions(device: torch.device) -> list[str]:
    """bf16 where the device computes it natively (emulated bf16 says nothing), and fp32."""
    if device.type == "cuda":
        fast_bf16 = torch.cuda.is_bf16_supported()
    else:
        fast_bf16 = cpu_has_fast_bf16()
    return ["bf16", "fp32"] if fast_bf16 else ["fp32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=tuple(DTYPES),
        help="default: bf16 (where the hardware has it) and fp32; fp16 only on CUDA",
    )
    parser.add_argument("--epochs", type=int, default=3, help="taolu.train epochs (>= 2)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mfu.py --device cuda: no CUDA GPU is visible; nothing measured")
        return
    device = torch.device(args.device)
    precisions = args.precision or default_precisions(device)
    if device.type == "cpu" and "fp16" in precisions:
        print("fp16 is for GPUs (taolu refuses it on the CPU); left out")
        precisions = [name for name in precisions if name != "fp16"]

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"fast bf16: {'yes' if cpu_has_fast_bf16() else 'no'}"
    )
    print(f"machine: {where}; torch {torch.__version__}", flush=True)
    flops_per_image = count_flops(MODEL, IMAGE_SIZE, CHANNELS, CLASSES)["train_step"]
    print(
        f"{MODEL} on {DATA} ({CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE}, {CLASSES} classes, "
        f"batch {BATCH}): {flops_per_image / 1e9:.4f} GFLOP per training image "
        "(forward + backward, torch.utils.flop_counter)",
        flush=True,
    )

    rows = []
    for precision in precisions:
        peak, size = matmul_peak(precision, device)
        print(f"  {precision}: matmul peak {peak / 1e12:.3f} TFLOP/s at {size}^2", flush=True)
        rate, summary = train_rate(precision, args.device, args.epochs)
        if summary["precision"] != precision:  # taolu picked otherwise: the row would lie
            raise SystemExit(f"taolu trained in {summary['precision']}, not {precision}")
        achieved = flops_per_image * rate
        print(f"  {precision}: {rate:,.0f} img/s in taolu.train ({summary['device']})", flush=True)
        rows.append((precision, peak, rate, achieved, achieved / peak))

    print()
    header = (
        f"{'precision':<10}{'peak TFLOP/s':>14}{'GFLOP/image':>13}{'images/s':>11}"
        f"{'achieved TFLOP/s':>18}{'MFU':>8}"
    )
    print(header)
    print("-" * len(header))
    for precision, peak, rate, achieved, mfu in rows:
        print(
            f"{precision:<10}{peak / 1e12:>14.3f}{flops_per_image / 1e9:>13.4f}{rate:>11,.0f}"
            f"{achieved / 1e12:>18.4f}{mfu:>7.1%}"
        )
    if device.type == "cuda" and "fp32" in precisions:
        print(
            "note: fp32 convolutions on CUDA may run as TF32 (torch.backends.cudnn.allow_tf32 "
            f"is {torch.backends.cudnn.allow_tf32}); the fp32 peak is torch.mm with "
            f"allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
        )
    if device.type == "cpu":
        print(f"load average now {os.getloadavg()[0]:.2f} (other work on the machine lowers both)")


if __name__ == "__main__":
    main()
