"""`taolu models` and `taolu models show`: what can be trained, and what a network does to an
image, layer by layer, with its FLOPs counted by torch.utils.flop_counter."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from taolu.models import timm_zoo
from taolu.models.factory import build_model
from taolu.models.nets import BUILTIN_MODELS
from taolu.models.timm_zoo import is_timm_name

BUILTIN_INPUT = {"fastcnn": 28, "tudui": 32, "lenet5": 28, "resnet9": 32}
BUILTIN_CLASSES = 10  # the head `taolu models` counts built-in nets with (digits, CIFAR-10)
IMAGENET_CLASSES = 1000  # the head torchvision's weights, and their published counts, carry

# A few models to start from, per situation, with why (shown by `taolu models`).
RECOMMENDED = {
    "tiny data": (
        ("fastcnn",),
        "hundreds of images: the default, with a tuned recipe; 0.944 on 180 photos of 3 "
        "classes, 0.994 on scikit-learn's 8x8 digits (the README's recipe table). With photos, "
        "try pretrained weights too",
    ),
    "photos + weights": (
        ("resnet18", "efficientnet_b0"),
        "photos, starting from ImageNet weights (--weights DEFAULT, then --freeze backbone "
        "or --fine-tune E)",
    ),
    "CPU speed": (
        ("fastcnn", "mobilenet_v3_small"),
        "few FLOPs per image for what they reach: fastcnn for small images (15 MFLOPs at 28 "
        "px), mobilenet_v3_small for photos",
    ),
}


def recommended_for(name: str) -> list[str]:
    """The situations RECOMMENDED names `name` for."""
    return [situation for situation, (names, _) in RECOMMENDED.items() if name in names]


def default_channels(name: str) -> int:
    """The input channels a model is made for: 1 for the digit nets, else 3."""
    return 1 if name in ("fastcnn", "lenet5") else 3


def local_weights_file(name: str) -> Path | None:
    """Where torchvision's DEFAULT weights for `name` would lie in the local hub cache."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def default_size(name: str) -> int:
    """The input side a model is made for: built-ins' own data, torchvision's weights, timm's
    pretrained_cfg."""
    if name in BUILTIN_INPUT:
        return BUILTIN_INPUT[name]
    if is_timm_name(name):
        return timm_zoo.weights_preprocessing(name)["size"]
    from taolu.models.zoo import default_input_size, is_torchvision_model

    return default_input_size(name) if is_torchvision_model(name) else 32


def list_models() -> list[dict]:
    """Every trainable name with its parameter count (see `listed_parameters` for the head it
    assumes), default input size, and whether local pretrained weights are present. Nothing is
    downloaded and no large model is built."""
    from taolu.models.zoo import default_input_size, torchvision_classifiers

    rows = []
    for name in BUILTIN_MODELS:
        count, _ = listed_parameters(name)
        rows.append(_row(name, "built-in", count, BUILTIN_INPUT[name], None))
    for name in torchvision_classifiers():
        count, _ = listed_parameters(name)
        rows.append(
            _row(name, "torchvision", count, default_input_size(name), local_weights_file(name))
        )
    return rows


def timm_rows(names: list[str]) -> list[dict]:
    """`list_models`' rows for timm models (each NAME without its timm: prefix); imports timm.
    The local weights are those timm would have cached in the Hugging Face hub cache."""
    rows = []
    for bare in names:
        name = timm_zoo.TIMM_PREFIX + bare
        hub_id = timm_zoo.pretrained_config(name).get("hf_hub_id") or ""
        weights = timm_zoo.hub_cache_file(hub_id)
        count, _ = listed_parameters(name)
        rows.append(_row(name, "timm", count, default_size(name), weights))
    return rows


def listed_parameters(name: str) -> tuple[int, int]:
    """(parameters, classes of the head they were counted with) as `taolu models` lists
    them: a built-in net with a 10-class head at its own input; a torchvision model with the
    1000-class ImageNet head, from its weights' metadata when it has weights (the figure
    torchvision publishes), else counted on the meta device, which allocates nothing (timm's
    models always are)."""
    if name in BUILTIN_MODELS:
        size = BUILTIN_INPUT[name]
        with torch.device("meta"):
            model = build_model(name, default_channels(name), (size, size), BUILTIN_CLASSES)
        return sum(p.numel() for p in model.parameters()), BUILTIN_CLASSES
    if is_timm_name(name):
        return timm_zoo.parameter_count(name), IMAGENET_CLASSES
    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        return int(meta["num_params"]), IMAGENET_CLASSES
    except (ValueError, AttributeError, KeyError):
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
        return sum(p.numel() for p in model.parameters()), IMAGENET_CLASSES


def imagenet_top1(name: str) -> float | None:
    """ImageNet top-1 accuracy (%) of the DEFAULT weights, from torchvision's metadata."""
    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        return float(meta["_metrics"]["ImageNet-1K"]["acc@1"])
    except (ValueError, AttributeError, KeyError):
        return None


def _row(name: str, source: str, parameters: int, size: int, weights: Path | None) -> dict:
    return {
        "name": name,
        "source": source,
        "parameters": parameters,
        "input_size": size,
        "local_weights": str(weights) if weights is not None and weights.is_file() else "",
    }


def layer_table(name: str, image_size: int, channels: int, classes: int = 10) -> list[dict]:
    """Each leaf layer's output shape and parameter count for one image of the given size.
    Built and run on the meta device: shapes without arithmetic, at any size, in well under
    a second (a real resnet18 forward at 224 px took 2 s on 2 cores)."""
    with torch.device("meta"):
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
            model(torch.zeros(1, channels, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def count_flops(name: str, image_size: int, channels: int, classes: int = 10) -> dict[str, int]:
    """FLOPs per image (a multiply-add counts 2) for a forward pass and for a training step
    (forward + backward), counted by torch's flop_counter on the meta device: the same counts
    as on the CPU, without the arithmetic. (On the CPU it counted 22.5 of vit_b_16's 35.1
    GFLOPs: the fused attention kernel eval mode takes there escapes the counter.)"""
    with torch.device("meta"):
        model = build_model(name, channels, (image_size, image_size), classes)
    image = torch.zeros(2, channels, image_size, image_size, device="meta")  # 2: BatchNorm
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model.eval()(image)
    model.train()
    with FlopCounterMode(display=False) as step:
        model(image).sum().backward()
    return {"forward": forward.get_total_flops() // 2, "train_step": step.get_total_flops() // 2}


def flops_text(flops: int) -> str:
    """A FLOP count as people write it: 3.63 GFLOPs, 44.3 MFLOPs."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if flops >= scale:
            return f"{flops / scale:.3g} {prefix}FLOPs"
    return f"{flops} FLOPs"
