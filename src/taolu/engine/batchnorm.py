"""BatchNorm statistics measured afresh before evaluating, for nets whose running statistics
follow training too slowly to be trusted after a short run."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from taolu.data.loaders import Batches, BatchTransform
from taolu.engine.distributed import SINGLE_PROCESS, Cluster, sum_across
from taolu.engine.precision import Precision

# BatchNorm's default momentum. Below it (torchvision's MobileNetV3 and EfficientNets use
# 0.01), the running statistics trail the weights by hundreds of steps: measured on 384
# 48-px photos, mobilenet_v3_small reached 0.80 training accuracy in 8 epochs while its
# validation accuracy stayed at chance (0.17), and 0.70 once the statistics were measured
# afresh (benchmarks/recipe_zoo.py, case mobilenet).
SLOW_MOMENTUM = 0.1
# Enough images for stable means and variances; more only costs time.
RECALIBRATION_IMAGES = 2048


def slow_batchnorm(model: nn.Module) -> bool:
    """Whether some BatchNorm layer keeps its running statistics with a momentum below
    BatchNorm's default, so they lag the weights in a short run."""
    return any(
        isinstance(module, _BatchNorm)
        and module.track_running_stats
        and module.momentum is not None
        and module.momentum < SLOW_MOMENTUM
        for module in model.modules()
    )


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Batches,
    transform: BatchTransform,
    precision: Precision,
    cluster: Cluster = SINGLE_PROCESS,
) -> None:
    """Re-estimate every BatchNorm layer's running mean and variance as plain averages over
    the first training images (normalised, not augmented: what evaluation feeds the net),
    as torch.optim.swa_utils.update_bn does. Always the same images, drawn without any random
    generator, so a resumed run measures what the uninterrupted one did. Under DDP the
    statistics of every process are averaged."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    modes = {module: module.training for module in model.modules()}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    order = torch.arange(len(batches.split))[batches.rank :: batches.world_size]
    model.train()
    try:
        for images, _ in batches.iterate(order=order[:RECALIBRATION_IMAGES]):
            with precision.autocast():
                model(transform(images))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for module, training in modes.items():
            module.training = training
    if cluster.world_size > 1:
        for norm in norms:
            mean, var = sum_across(cluster, norm.running_mean, norm.running_var)
            norm.running_mean.copy_(mean / cluster.world_size)
            norm.running_var.copy_(var / cluster.world_size)
