"""The learning-rate range test (Leslie Smith's, as in fastai's lr_find): train briefly while the
lr grows exponentially, record the loss, suggest an lr, then put the model and optimizer back."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from taolu.data.loaders import Batches
from taolu.engine.optim import lr_shares
from taolu.engine.step import Stepper, set_lr
from taolu.layout import LR_FIND_CSV, LR_FIND_PLOT

# Divergence is not judged during the first steps: the average there has seen only a few noisy
# batches, and one unlucky batch could otherwise end the sweep before it starts.
WARMUP_STEPS = 5
# The suggestion's rules, each checked against training at a grid of lrs on the 13 cases of
# benchmarks/recipe_zoo.py (see suggest_lr):
FLAT_DROP = 0.05  # a smoothed loss that never falls this share below its start learned nothing
FLAT_DIVISOR = 50  # a flat curve's suggestion: this far below where the loss starts to climb
CLIMB = 1.2  # the loss "climbs" where it passes this multiple of where it started
VALLEY_DIVISOR = 10  # the climbing point's lr is ~10x too high to train at


@dataclass
class LrSweep:
    lrs: list[float]  # the base lr at each step (each param group's lr is its share of it)
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]  # centred moving average of the losses (see suggest_lr)
    suggested_lr: float  # see suggest_lr
    stopped_early: bool  # True when the loss diverged before the last step


def sweep_lr(
    stepper: Stepper,
    batches: Batches,
    generator: torch.Generator,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
    diverge_factor: float = 4.0,
    band: tuple[float, float] | None = None,
) -> LrSweep:
    """Take up to `steps` optimizer steps, exactly as training takes them (`stepper`: mixing,
    accumulation, clipping, the EMA), with the lr rising exponentially from `start_lr` to
    `end_lr`; record each step's loss; return the curve and a suggested lr.

    The swept lr is the base lr (what --lr sets): every param group keeps its share of it
    (a backbone at 0.1x the head stays at 0.1x, a wide Linear layer at its fan-in share), so
    the suggestion is an lr to pass as --lr. `batches` is iterated for as many epochs as
    needed. The sweep stops when an exponential average of the loss exceeds `diverge_factor`
    times its best (judged only after the first few steps) or at once when a loss is not
    finite; a non-finite loss is not recorded. `band` bounds the suggestion (see suggest_lr).

    Afterwards everything the step changes (`Stepper.snapshot`: weights and buffers, the
    optimizer's state and each group's lr, the EMA, the grad scaler) and each module's
    train/eval mode are what they were before, also when the sweep raises. Gradients are left
    as None. torch's global RNG (CPU and the device's, which dropout uses) is restored too.
    `generator` IS consumed (batch order, shifts, flips): pass a separate generator, or save
    and restore its state, if the training that follows must draw the same batches as a run
    without the sweep.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    saved = stepper.snapshot()
    saved_modes = {module: module.training for module in stepper.network.modules()}
    ratios = lr_shares(stepper.optimizer)
    try:
        with _fork_global_rng(batches.device):
            stream = _endless(batches, generator)
            lrs, losses, stopped_early = _sweep(
                stepper, stream, generator, ratios, start_lr, end_lr, steps, diverge_factor
            )
            smoothed = centred_mean(losses, _half_window(len(losses)))
            return LrSweep(
                lrs, losses, list(smoothed), suggest_lr(lrs, losses, band), stopped_early
            )
    finally:
        stepper.restore(saved)
        for module, training in saved_modes.items():
            module.training = training


def _sweep(
    stepper: Stepper,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
    ratios: list[float],
    start_lr: float,
    end_lr: float,
    steps: int,
    diverge_factor: float,
) -> tuple[list[float], list[float], bool]:
    stepper.train_mode()
    stepper.optimizer.zero_grad(set_to_none=True)
    lrs, losses = [], []
    # The stop rule's average forgets at a pace fitted to the sweep's length (0.98 at 100).
    beta = 1 - 2 / max(steps, 4)
    average, best, stopped_early = 0.0, math.inf, False
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group, ratio in zip(stepper.optimizer.param_groups, ratios, strict=True):
            set_lr(group, lr * ratio)
        value = _one_step(stepper, stream, generator)
        if value is None:
            stopped_early = True
            break
        average = beta * average + (1 - beta) * value
        current = average / (1 - beta ** (step + 1))  # without the pull towards the first 0
        lrs.append(lr)
        losses.append(value)
        best = min(best, current)
        if step >= WARMUP_STEPS and current > diverge_factor * best:
            stopped_early = step < steps - 1
            break
    return lrs, losses, stopped_early


def _one_step(
    stepper: Stepper, stream: Iterator[tuple[torch.Tensor, torch.Tensor]], generator
) -> float | None:
    """One optimizer step over `stepper.accumulate` batches: their mean loss, or None (and
    no step) as soon as a loss is not finite."""
    values = []
    for _ in range(stepper.accumulate):
        images, labels = next(stream)
        loss, _ = stepper.forward(images, labels, generator)
        value = float(loss.detach().float())  # read every batch: the stop rule needs it
        if not math.isfinite(value):
            return None
        stepper.backward(loss, stepper.accumulate)
        values.append(value)
    stepper.apply()
    return sum(values) / len(values)


def suggest_lr(
    lrs: list[float], losses: list[float], band: tuple[float, float] | None = None
) -> float:
    """The lr to train at, read from the sweep's raw per-step losses.

    The losses are smoothed by a centred moving average (no lag, unlike the exponential
    average fastai plots: with beta 0.98 its minimum trails the real one by tens of steps).
    The first tenth of the sweep only gives the starting level (its median): a noise dip
    there is never the answer. Then:
      * the loss "climbs" at the first lr past the lowest point where the smoothed loss
        exceeds CLIMB x the starting level (or the sweep's end);
      * a curve whose lowest point is less than FLAT_DROP below the start learned nothing
        in the sweep (sigmoid nets, deep nets without normalisation): suggest the climbing
        lr / FLAT_DIVISOR, far enough below the blow-up to learn slowly and safely;
      * otherwise the geometric mean of the lowest point's lr and the climbing lr /
        VALLEY_DIVISOR: the minimum alone sits low for BatchNorm nets, the climb / 10 high
        for nets without it; between them came within a factor 2 of the best grid lr on the
        recipe benchmark's cases.
    `band` clamps the answer (the recipe's trusted range for the optimizer family): a sweep
    is a few dozen noisy steps, and outside it training was worse on every case measured.
    The answer always lies within the swept lrs."""
    if not lrs:
        return math.nan
    count = len(lrs)
    smoothed = centred_mean(losses, _half_window(count))
    head = min(max(3, count // 10), count - 1)
    start = float(np.median(losses[: head + 1]))
    lowest = head + int(np.argmin(smoothed[head:]))
    climbing = np.nonzero(smoothed[lowest:] > CLIMB * start)[0]
    climb = float(lrs[lowest + int(climbing[0])] if len(climbing) else lrs[-1])
    if start - float(smoothed[lowest]) < FLAT_DROP * abs(start):
        suggested = climb / FLAT_DIVISOR
    else:
        suggested = math.sqrt(float(lrs[lowest]) * climb / VALLEY_DIVISOR)
    if band is not None:
        suggested = min(max(suggested, band[0]), band[1])
    return float(min(max(suggested, lrs[0]), lrs[-1]))


def centred_mean(values: list[float], half: int) -> np.ndarray:
    """Each value averaged with up to `half` neighbours on either side (fewer at the ends)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return array
    sums = np.concatenate([[0.0], np.cumsum(array)])
    index = np.arange(array.size)
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, array.size)
    return (sums[high] - sums[low]) / (high - low)


def _half_window(count: int) -> int:
    return max(2, count // 25)


def write_lr_sweep(sweep: LrSweep, folder: Path) -> tuple[Path, Path]:
    """Write lr_find.csv (step, lr, loss, smoothed_loss; steps from 1) and lr_find.png in
    `folder`; return (csv path, png path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / LR_FIND_CSV, folder / LR_FIND_PLOT
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for step, row in enumerate(
            zip(sweep.lrs, sweep.losses, sweep.smoothed, strict=True), start=1
        ):
            writer.writerow([step, *(repr(float(value)) for value in row)])
    _plot(sweep, png_path)
    return csv_path, png_path


def _plot(sweep: LrSweep, path: Path) -> None:
    # Imported here so importing taolu does not pay for matplotlib. A bare Figure drawn by
    # FigureCanvasAgg never touches pyplot's global backend or figure registry, so nothing has
    # to be switched or closed and a caller's own plots are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(sweep.lrs, sweep.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    axes.plot(sweep.lrs, sweep.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if math.isfinite(sweep.suggested_lr):
        axes.axvline(
            sweep.suggested_lr,
            color="tab:red",
            linestyle="--",
            label=f"suggested lr {sweep.suggested_lr:.3g}",
        )
    axes.set_xscale("log")
    if sweep.smoothed:
        # Keep the useful part in view: a diverging tail would otherwise flatten the curve.
        lowest = int(np.argmin(sweep.smoothed))
        bottom = min(sweep.losses[: lowest + 1] + sweep.smoothed)
        top = max(sweep.smoothed[: lowest + 1])
        margin = max(0.1 * (top - bottom), 1e-3 * max(abs(top), 1.0))
        axes.set_ylim(bottom - margin, top + 2 * margin)
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    axes.set_title("learning-rate finder")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    figure.clear()  # drop the artists now rather than when the figure is collected


def _endless(
    batches: Batches, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches over as many epochs as the sweep needs (a small set has fewer than `steps`)."""
    while True:
        empty = True
        for batch in batches.iterate(generator):
            empty = False
            yield batch
        if empty:
            raise ValueError("the lr sweep got no training batches")


def _fork_global_rng(device: torch.device):
    """Restore torch's global RNG afterwards, so dropout during training draws what it would
    have drawn without the sweep."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    if device.type == "mps":
        return torch.random.fork_rng(devices=["mps"], device_type="mps")
    return torch.random.fork_rng(devices=[], device_type="cpu")
