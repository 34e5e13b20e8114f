"""What a network is made of, as the recipe needs to know it: lazy layers still to be sized,
normalisation layers, and how its parameters stand."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

# Layers that keep activations at a steady scale, which is what lets SGD at a high learning
# rate train a deep net; without any of them adaptive optimizers are the safer choice.
NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def has_lazy_parameters(model: nn.Module) -> bool:
    """Whether some parameter or buffer still waits for its size (nn.LazyLinear, ...)."""
    tensors = [*model.parameters(), *model.buffers()]
    return any(isinstance(t, (UninitializedParameter, UninitializedBuffer)) for t in tensors)


@torch.no_grad()
def materialise_lazy_layers(model: nn.Module, channels: int, size: tuple[int, int]) -> bool:
    """Give lazy layers their sizes with one dry batch of blank images, as Keras builds a
    model on its first call. Done before the optimizer, the weight average and the graph are
    made, since each of them needs real parameters. Returns whether anything was sized.

    The dry batch runs in eval mode, so BatchNorm's running statistics do not see it."""
    if not has_lazy_parameters(model):
        return False
    modes = {module: module.training for module in model.modules()}
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        model(torch.zeros(2, channels, *size, device=device))
    finally:
        for module, training in modes.items():
            module.training = training
    return True


def widest_dense_layer(model: nn.Module) -> int:
    """The most inputs any nn.Linear in the network reads (0 without one)."""
    return max(
        (module.in_features for module in model.modules() if isinstance(module, nn.Linear)),
        default=0,
    )


def has_norm_layers(model: nn.Module) -> bool:
    """Whether the network normalises its activations anywhere (BatchNorm, GroupNorm, ...)."""
    return any(isinstance(module, NORM_LAYERS) for module in model.modules())
