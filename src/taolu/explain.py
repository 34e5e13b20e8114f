"""Where a CNN looks: LayerCAM class-activation maps (Jiang et al., IEEE TIP 2021) for any
`nn.Module` with convolutions, the target layer found by a forward pass (the last block that
outputs a spatial feature map) or named, and the maps blended over the images with Pillow.

LayerCAM weighs each activation by its own positive gradient, rather than Grad-CAM's one
averaged weight per channel: at the last block the two agree closely, but at an earlier
layer (`--explain-layer`) Grad-CAM's averaged weights blur and cancel where LayerCAM's stay
local. Same cost: one forward and one backward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from taolu.errors import ConfigError

# The overlay's colour scale, cold to hot (stops of a blue-cyan-yellow-red ramp), and how
# much of the heat map shows over the image where the map is hottest.
HEAT_STOPS = np.array(
    [[0, 0, 96], [0, 64, 255], [0, 224, 255], [128, 255, 96], [255, 224, 0], [255, 32, 0]],
    dtype=np.float32,
)
HEAT_OPACITY = 0.55
OVERLAY_SIDE = 256  # overlays smaller than this (28 px digits) are enlarged to it


@dataclass(frozen=True)
class FeatureMap:
    """A module's output during one forward pass: its dotted name and shape (C, H, W)."""

    name: str
    shape: tuple[int, int, int]
    has_conv: bool


def feature_maps(model: nn.Module, sample: torch.Tensor) -> list[FeatureMap]:
    """Every module output that is a (N, C, H, W) map with more than one position, in the
    order the modules finished (a block after its layers), from one forward pass of
    `sample` (a normalised batch) without gradients."""
    found: list[FeatureMap] = []

    def record(name: str, module: nn.Module) -> Callable:
        has_conv = any(isinstance(part, nn.Conv2d) for part in module.modules())

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                if output.shape[2] * output.shape[3] > 1:
                    found.append(FeatureMap(name, tuple(output.shape[1:]), has_conv))

        return hook

    handles = [
        module.register_forward_hook(record(name, module))
        for name, module in model.named_modules()
        if name  # the model itself: its output is the logits
    ]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return found


def choose_layer(maps: list[FeatureMap]) -> str:
    """The last block holding a convolution whose output is a spatial map, carried on through
    the layers after it that keep its shape (BatchNorm, ReLU): the features the pooling and
    the head read. ConfigError when the network has no such block."""
    convolved = [index for index, found in enumerate(maps) if found.has_conv]
    if not convolved:
        raise ConfigError(
            "cannot explain this network: none of its modules is a convolution with a spatial "
            "output (a class-activation map needs a CNN); name a layer with --explain-layer"
        )
    chosen = convolved[-1]
    while chosen + 1 < len(maps) and maps[chosen + 1].shape == maps[chosen].shape:
        chosen += 1
    return maps[chosen].name


def find_layer(model: nn.Module, sample: torch.Tensor, name: str | None) -> nn.Module:
    """The module to explain at: `name` (a dotted module name, as `model.named_modules()`
    gives it), else `choose_layer`'s. A name that is no module, or whose output is no
    spatial map, is refused with the names that would do."""
    maps = feature_maps(model, sample)
    if name is None:
        name = choose_layer(maps)
    modules = dict(model.named_modules())
    if name not in modules or name not in {found.name for found in maps}:
        why = (
            "is no module of this network"
            if name not in modules
            else "outputs no spatial (C, H, W) map"
        )
        names = list(dict.fromkeys(found.name for found in maps))
        shown = ", ".join(names[-12:])
        more = f" (and {len(names) - 12} earlier)" if len(names) > 12 else ""
        raise ConfigError(
            f"option 'explain_layer': {name!r} {why}; layers with a spatial output, last "
            f"ones nearest the head: {shown}{more}"
        )
    return modules[name]


def activation_maps(
    model: nn.Module,
    batch: torch.Tensor,
    layer: nn.Module,
    targets: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerCAM maps (N, H, W) in 0..1 at the batch's size, and the class each explains: the
    target given per image, else the model's top class. `batch` is the model's input
    (normalised); the model should be in eval mode (each image is then explained alone)."""
    kept: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept[:] = [output]
        # Layers after this one may change it in place (ReLU(inplace=True)); they get a copy.
        return output.clone()

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # The input asks for gradients so the map does too, frozen parameters or not.
            logits = model(batch.detach().requires_grad_(True))
            top = logits.argmax(dim=1)
            chosen = torch.tensor(
                [top[i] if t is None else t for i, t in enumerate(targets or [None] * len(top))],
                device=logits.device,
            )
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, kept[0])
    finally:
        handle.remove()
    activation = kept[0].detach()
    maps = (gradient.clamp(min=0) * activation).sum(dim=1, keepdim=True).clamp(min=0).float()
    maps = nn.functional.interpolate(maps, size=batch.shape[-2:], mode="bilinear")[:, 0]
    low = maps.flatten(1).min(1).values.view(-1, 1, 1)
    high = maps.flatten(1).max(1).values.view(-1, 1, 1)
    return ((maps - low) / (high - low).clamp(min=1e-12)).detach().cpu(), chosen.cpu()


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) for values in 0..1, interpolated between HEAT_STOPS."""
    position = np.clip(heat, 0, 1) * (len(HEAT_STOPS) - 1)
    low = np.floor(position).astype(int).clip(max=len(HEAT_STOPS) - 2)
    weight = (position - low)[..., None]
    colours = HEAT_STOPS[low] * (1 - weight) + HEAT_STOPS[low + 1] * weight
    return colours.round().astype(np.uint8)


HEAT_TABLE = heat_colours(np.linspace(0, 1, 256))  # (256, 3): a map's byte -> its colour


def blend(image: torch.Tensor, heat: torch.Tensor) -> Image.Image:
    """The image (C, H, W: uint8, or float in 0..1) with the heat map (H, W) over it, hotter
    parts more opaque; enlarged to OVERLAY_SIDE when smaller (pixels kept sharp). Drawn by
    Pillow's own operations: numpy arithmetic on the enlarged picture cost 10 ms each."""
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = image.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    scale = max(1.0, OVERLAY_SIDE / max(picture.size))
    size = (round(picture.width * scale), round(picture.height * scale))
    picture = picture.resize(size, Image.Resampling.NEAREST)
    heat_bytes = Image.fromarray((heat.numpy() * 255).round().astype(np.uint8))
    heat_bytes = heat_bytes.resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(HEAT_TABLE[np.asarray(heat_bytes)])
    opacity = heat_bytes.point([round(value * HEAT_OPACITY) for value in range(256)])
    return Image.composite(colours, picture, opacity)


def overlays_for(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    classes: Sequence[int | None] | None = None,
    target_layer: str | None = None,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Image.Image]:
    """Each image with the map of where `model` looks for its class blended over it.

    `images` are (C, H, W) tensors (or one (N, C, H, W) batch), uint8 or float in 0..1, as
    shown; `normalize` turns the float batch into the model's input (default: as is).
    `classes` gives per image the class index to explain (None: the model's top class);
    `target_layer` a dotted module name (default: the last convolutional block)."""
    batch = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    pictures = batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = pictures.to(device)
    inputs = normalize(inputs) if normalize is not None else inputs
    was_training = model.training
    model.eval()
    try:
        layer = find_layer(model, inputs[:1], target_layer)
        maps, _ = activation_maps(model, inputs, layer, classes)
    finally:
        model.train(was_training)
    return [blend(picture, heat) for picture, heat in zip(pictures.cpu(), maps, strict=True)]
