"""Loop overhead: taolu's training loop against a minimal hand-written PyTorch loop doing the
same work, measured side by side in this one script run.

Both loops get the same model (fastcnn, fresh with the same seed each repetition), batch size
(128), in-memory data (the mnist5k training split as uint8 tensors), precision (what taolu
picks: bf16 autocast on an AVX512-BF16 CPU, channels_last), loss, optimizer and one-cycle
schedule, and the same thread count:
  taolu:  taolu.engine.loop.train_one_epoch (engine.step.Stepper) over data.loaders.Batches +
          BatchTransform
          (augmentation off: this compares loops, not augmentation)
  hand:   slice a permutation, normalise, forward, loss, backward, step, scheduler step
The two alternate (A B, B A, ...) after a warm-up epoch of each; each epoch is timed from
outside the call, and taolu's overhead is its median epoch time over the hand loop's.
Target (issue): taolu <= 3% slower.
Run:  .venv/bin/python benchmarks/loop_overhead.py [--repeats 8] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from taolu.data.bundle import ImageTensors
from taolu.data.embedded import load_mnist5k, stratified_split
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.data.transforms import normalization_stats
from taolu.engine.loop import train_one_epoch
from taolu.engine.optim import LrSchedule, build_loss, build_optimizer
from taolu.engine.precision import Precision, pick_precision
from taolu.engine.step import Stepper
from taolu.models import build_model

BATCH_SIZE = 128
SEED = 0
TARGET_OVERHEAD = 0.03
DEVICE = torch.device("cpu")


def training_split() -> ImageTensors:
    """The 4,000 mnist5k training images as uint8 (N, 1, 28, 28), as taolu holds them."""
    images, labels = load_mnist5k()
    train_index, _ = stratified_split(labels, 0.2)
    images = torch.from_numpy(images).unsqueeze(1)[train_index]
    return ImageTensors(images.contiguous(), torch.from_numpy(labels)[train_index])


class Setup:
    """A fresh model, loss, optimizer, schedule and shuffling generator, the same each time."""

    def __init__(self, steps: int):
        torch.manual_seed(SEED)
        model = build_model("fastcnn", 1, (28, 28), 10).to(DEVICE)
        self.model = model.to(memory_format=torch.channels_last)
        # taolu's defaults: label smoothing 0.1, Nesterov SGD at lr 0.05, one-cycle schedule.
        self.loss_fn = build_loss(0.1)
        self.optimizer = build_optimizer(
            self.model, "sgd", lr=0.05, momentum=0.9, weight_decay=5e-4
        )
        self.scheduler = LrSchedule(
            self.optimizer, "onecycle", total_steps=steps, steps_per_epoch=steps
        )
        self.generator = torch.Generator().manual_seed(SEED)


def taolu_epoch(
    setup: Setup, batches: Batches, transform: BatchTransform, precision: Precision
) -> None:
    stepper = Stepper(setup.model, setup.loss_fn, setup.optimizer, precision, transform)
    train_one_epoch(stepper, batches, setup.scheduler, setup.generator)


def hand_epoch(
    setup: Setup,
    split: ImageTensors,
    mean: torch.Tensor,
    std: torch.Tensor,
    precision: Precision,
) -> None:
    model, loss_fn, optimizer = setup.model, setup.loss_fn, setup.optimizer
    model.train()
    use_bf16 = precision.name == "bf16"  # plain fp32 on a CPU without fast bf16, as taolu
    # 4,000 = 31 x 128 + 32; taolu drops only a last batch of one image, so both take all 32.
    order = torch.randperm(len(split), generator=setup.generator)
    for start in range(0, len(order), BATCH_SIZE):
        index = order[start : start + BATCH_SIZE]
        images = split.images[index].float().div_(255.0)  # (B, 1, 28, 28)
        inputs = ((images - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(model(inputs), split.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        setup.scheduler.step()


def timed_epochs(run_epoch: Callable[[Setup], None], epochs: int, steps: int) -> tuple:
    """(epoch seconds, trained model) for `epochs` epochs of a fresh setup."""
    setup = Setup(steps)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        run_epoch(setup)
        seconds.append(time.perf_counter() - started)
    return seconds, setup.model


def largest_difference(first: torch.nn.Module, second: torch.nn.Module) -> float:
    return max(
        (a.float() - b.float()).abs().max().item()
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8, help="A/B pairs after the warm-up")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per repetition")
    args = parser.parse_args()

    split = training_split()
    precision = pick_precision("auto", DEVICE)
    mean, std = normalization_stats("auto", split.images)
    preprocessing = Preprocessing(1, (28, 28), "stretch", mean, std)
    transform = BatchTransform(preprocessing, DEVICE, shift=0, flip=False, channels_last=True)
    batches = Batches(split, BATCH_SIZE, DEVICE, shuffle=True)
    steps = args.epochs * len(batches)
    loops = {
        "taolu": lambda setup: taolu_epoch(setup, batches, transform, precision),
        "hand": lambda setup: hand_epoch(setup, split, transform.mean, transform.std, precision),
    }
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
        f"fastcnn, batch {BATCH_SIZE}, {len(split)} images ({len(batches)} steps/epoch), "
        f"{precision.name}, channels_last",
        flush=True,
    )

    # Warm-up: oneDNN picks and caches its kernels and the allocator grows on first use.
    # The warm-up models double as a check that both loops do the same arithmetic.
    _, taolu_model = timed_epochs(loops["taolu"], 1, steps)
    _, hand_model = timed_epochs(loops["hand"], 1, steps)
    print(
        f"same work: largest weight difference after one epoch each: "
        f"{largest_difference(taolu_model, hand_model):.2e}",
        flush=True,
    )

    epoch_seconds: dict[str, list[float]] = {"taolu": [], "hand": []}
    for repeat in range(args.repeats):
        # Alternating which loop goes first cancels any drift (heat, background work).
        order = ("taolu", "hand") if repeat % 2 == 0 else ("hand", "taolu")
        for name in order:
            seconds, _ = timed_epochs(loops[name], args.epochs, steps)
            epoch_seconds[name].extend(seconds)
        latest = {name: statistics.median(epoch_seconds[name][-args.epochs :]) for name in loops}
        print(
            f"  repeat {repeat + 1}: taolu {latest['taolu']:.3f} s/epoch, "
            f"hand {latest['hand']:.3f} s/epoch",
            flush=True,
        )

    taolu_median = statistics.median(epoch_seconds["taolu"])
    hand_median = statistics.median(epoch_seconds["hand"])
    overhead = taolu_median / hand_median - 1.0
    print(
        f"median epoch over {len(epoch_seconds['taolu'])} epochs each: taolu {taolu_median:.3f} s "
        f"({len(split) / taolu_median:,.0f} img/s), hand {hand_median:.3f} s "
        f"({len(split) / hand_median:,.0f} img/s)"
    )
    print(
        f"taolu loop overhead: {overhead:+.1%} (target <= +{TARGET_OVERHEAD:.0%}); "
        f"load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
