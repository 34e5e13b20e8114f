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
from taolu.engine.step import Stepper, set_lr
from taolu.layout import LR_FIND_CSV, LR_FIND_PLOT

SMOOTHING_BETA = 0.98
# Divergence is not judged during the first steps: the smoothed loss there averages only a few
# noisy batches, and one unlucky batch could otherwise end the sweep before it starts.
WARMUP_STEPS = 5
# Fewer points than this before the minimum give no trustworthy slope.
MIN_POINTS_FOR_SLOPE = 5


@dataclass
class LrSweep:
    lrs: list[float]  # lr used at each step (of the first param group)
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]  # exponentially smoothed, bias-corrected loss
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
) -> LrSweep:
    """Take up to `steps` optimizer steps, exactly as training takes them (`stepper`: mixing,
    accumulation, clipping, the EMA), with the lr rising exponentially from `start_lr` to
    `end_lr`; record each step's loss; return the curve and a suggested lr.

    The lr is set on the first param group; every other group keeps its ratio to the first
    (a backbone at 0.1x the head stays at 0.1x). `batches` is iterated for as many epochs as
    needed. The sweep stops when the smoothed loss exceeds `diverge_factor` times the best
    smoothed loss so far (judged only after the first few steps) or at once when a loss is
    not finite; a non-finite loss is not recorded.

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
    first = float(saved.lrs[0])
    # A first group with lr 0 gives no ratio to keep; every group then follows the sweep.
    ratios = [float(lr) / first if first > 0 else 1.0 for lr in saved.lrs]
    try:
        with _fork_global_rng(batches.device):
            stream = _endless(batches, generator)
            return _sweep(
                stepper, stream, generator, ratios, start_lr, end_lr, steps, diverge_factor
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
) -> LrSweep:
    stepper.train_mode()
    stepper.optimizer.zero_grad(set_to_none=True)
    lrs, losses, smoothed = [], [], []
    average, best, stopped_early = 0.0, math.inf, False
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group, ratio in zip(stepper.optimizer.param_groups, ratios, strict=True):
            set_lr(group, lr * ratio)
        value = _one_step(stepper, stream, generator)
        if value is None:
            stopped_early = True
            break
        average = SMOOTHING_BETA * average + (1 - SMOOTHING_BETA) * value
        # Dividing by 1 - beta^n removes the pull towards the initial 0 of the average.
        current = average / (1 - SMOOTHING_BETA ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(current)
        best = min(best, current)
        if step >= WARMUP_STEPS and current > diverge_factor * best:
            stopped_early = step < steps - 1
            break
    return LrSweep(lrs, losses, smoothed, suggest_lr(lrs, smoothed), stopped_early)


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


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The lr where the smoothed loss falls fastest against log10(lr), looking only at the
    points before the smoothed loss's minimum (past it the loss is rising or about to) and
    after the first tenth of the sweep (where the average has seen too few losses to trust).

    The slope is numpy.gradient of the smoothed loss over log10(lr) (central differences).
    With fewer than MIN_POINTS_FOR_SLOPE points to search, or no falling slope there, the
    fallback is a tenth of the lr at the minimum (fastai's "lr_min"), kept within the sweep.
    """
    if not lrs:
        return math.nan
    lowest = int(np.argmin(smoothed))
    fallback = max(lrs[lowest] / 10, lrs[0])
    first = max(MIN_POINTS_FOR_SLOPE, len(lrs) // 10)
    if lowest - first < MIN_POINTS_FOR_SLOPE:
        return fallback
    slopes = np.gradient(np.asarray(smoothed), np.log10(np.asarray(lrs)))
    steepest = first + int(np.argmin(slopes[first:lowest]))
    return float(lrs[steepest]) if slopes[steepest] < 0 else fallback


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
