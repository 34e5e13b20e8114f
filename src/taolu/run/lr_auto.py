"""--lr auto: a short learning-rate range test on a copy of the model and the run's own data
and training step, before training; the run then starts exactly as it would with that lr."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from taolu.config import TrainConfig
from taolu.engine.distributed import share_from_main
from taolu.engine.lr_find import LrSweep, sweep_lr
from taolu.engine.optim import is_adaptive
from taolu.run.lifecycle import Compute
from taolu.run.setup import ModelParts, RunData, make_optimizer, make_stepper

# Steps of the range test: 10 a decade over the ranges below, fewer when the loss blows up
# first. On the recipe benchmark's cases this was 2-15% of a 6-10 epoch run's steps.
SWEEP_STEPS = 50
# Where each family of optimizers is swept, and the band its suggestion is kept in: adaptive
# optimizers (Adam and its kin) step by about the lr whatever the gradient's scale, so their
# useful lrs sit in a narrow band; on the recipe benchmark's cases every lr outside 1e-3..1e-2
# trained worse than one inside it.
ADAPTIVE_RANGE, ADAPTIVE_BAND = (1e-5, 1.0), (1e-3, 1e-2)
SGD_RANGE, SGD_BAND = (1e-4, 10.0), (5e-3, 0.2)


@dataclass(frozen=True)
class LrChoice:
    lr: float
    sweep: LrSweep | None  # None in processes other than rank 0, which only learn the lr
    seconds: float


def range_and_band(optimizer: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(swept range, band the suggestion is kept in) for an optimizer name."""
    if not is_adaptive(optimizer):
        return SGD_RANGE, SGD_BAND
    return ADAPTIVE_RANGE, ADAPTIVE_BAND


def choose_lr(config: TrainConfig, parts: ModelParts, data: RunData, compute: Compute) -> LrChoice:
    """The lr the range test suggests, measured on a copy of the plain module with a fresh
    optimizer, on this run's batches, augmentation and training step, drawing from its own
    random generator (the run's batches, weights and dropout draws are untouched). Under
    torchrun, rank 0 tests and every process takes its answer."""
    started = time.perf_counter()
    sweep = None
    if compute.cluster.is_main:
        sweep = _sweep_copy(config, parts, data, compute)
    lr = share_from_main(compute.cluster, sweep.suggested_lr if sweep is not None else None)
    return LrChoice(float(lr), sweep, time.perf_counter() - started)


def _sweep_copy(config: TrainConfig, parts: ModelParts, data: RunData, compute: Compute) -> LrSweep:
    twin = copy.deepcopy(parts.model)
    twin_parts = dataclasses.replace(parts, model=twin, network=twin, ema=None)
    optimizer = make_optimizer(config, twin, parts.fine_tune_head)
    stepper = make_stepper(config, twin_parts, data, compute, optimizer, alone=True)
    (start, end), band = range_and_band(config.optimizer)
    # Its own stream: the run's generator must draw the same batches as without the test.
    generator = torch.Generator().manual_seed(config.seed + 1)
    return sweep_lr(
        stepper, data.train, generator, start_lr=start, end_lr=end, steps=SWEEP_STEPS, band=band
    )
