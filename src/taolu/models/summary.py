"""`taolu models` and `taolu models show`: what can be trained, and what a network does to an
image, layer by layer, with its FLOPs counted by torch.utils.flop_counter."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from taolu.models.factory import build_model
from taolu.models.nets import BUILTIN_MODELS

BUILTIN_INPUT = {"fastcnn": 28, "tudui": 32, "lenet5": 28, "resnet9": 32}


def local_weights_file(name: str) -> Path | None:
    """Where torchvision's DEFAULT weights for `name` would lie in the local hub cache."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def default_size(name: str) -> int:
    """The input side a model is made for: built-ins' own data, torchvision's weights."""
    if name in BUILTIN_INPUT:
        return BUILTIN_INPUT[name]
    from taolu.models.zoo import default_input_size, is_torchvision_model

    return default_input_size(name) if is_torchvision_model(name) else 32


def list_models() -> list[dict]:
    """Every trainable name with its parameter count, default input size, and whether local
    pretrained weights are present. Nothing is downloaded and no large model is built."""
    from taolu.models.zoo import default_input_size, torchvision_classifiers

    rows = []
    for name in BUILTIN_MODELS:
        size = BUILTIN_INPUT[name]
        model = build_model(name, 3 if name in ("tudui", "resnet9") else 1, (size, size), 10)
        count = sum(p.numel() for p in model.parameters())
        rows.append(_row(name, "built-in", count, size, None))
    for name in torchvision_classifiers():
        count = _torchvision_parameters(name)
        rows.append(
            _row(name, "torchvision", count, default_input_size(name), local_weights_file(name))
        )
    return rows


def _torchvision_parameters(name: str) -> int:
    """From the weights' metadata (1000-class head) when there are weights; else counted on a
    model built on the meta device, which allocates nothing."""
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except (ValueError, AttributeError, KeyError):
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
        return sum(p.numel() for p in model.parameters())


def _row(name: str, source: str, parameters: int, size: int, weights: Path | None) -> dict:
    return {
        "name": name,
        "source": source,
        "parameters": parameters,
        "input_size": size,
        "local_weights": str(weights) if weights is not None and weights.is_file() else "",
    }


def layer_table(name: str, image_size: int, channels: int, classes: int = 10) -> list[dict]:
    """Each leaf layer's output shape and parameter count for one image of the given size."""
    model = build_model(name, channels, (image_size, image_size), classes).eval()
    rows: list[dict] = []

    def record(module: nn.Module, _inputs: tuple, output: object) -> None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else "-"
        rows.append(
            {
                "layer": names[module],
                "type": type(module).__name__,
                "output": shape,
                "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
            }
        )

    names = {module: layer for layer, module in model.named_modules()}
    hooks = [
        module.register_forward_hook(record)
        for module in model.modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def count_flops(name: str, image_size: int, channels: int, classes: int = 10) -> dict[str, int]:
    """FLOPs per image for a forward pass and for a training step (forward + backward)."""
    model = build_model(name, channels, (image_size, image_size), classes)
    image = torch.zeros(2, channels, image_size, image_size)  # 2: BatchNorm needs a batch
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model.eval()(image)
    model.train()
    with FlopCounterMode(display=False) as step:
        model(image).sum().backward()
    return {"forward": forward.get_total_flops() // 2, "train_step": step.get_total_flops() // 2}
