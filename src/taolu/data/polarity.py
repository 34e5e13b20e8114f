"""Which way round images are: light marks on a dark background (MNIST's white digits on black)
or dark on light (a drawing on paper). A model trained on one reads the other confidently and
wrongly, so training records its data's background and predict warns about inputs that differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A background darker than DARK or lighter than LIGHT (0..1) is clearly one way round; photos
# and other data in between have no polarity to warn about.
DARK, LIGHT = 0.25, 0.75


def border_brightness(images: torch.Tensor) -> list[float]:
    """Each image's background, as the mean brightness 0..1 of its outermost pixels (most
    subjects are centred): (N, C, H, W) uint8, or float in 0..1 -> N values."""
    unit = _unit(images)
    ring = torch.cat(
        [
            unit[:, :, 0, :].flatten(1),
            unit[:, :, -1, :].flatten(1),
            unit[:, :, :, 0].flatten(1),
            unit[:, :, :, -1].flatten(1),
        ],
        dim=1,
    )
    return ring.mean(dim=1).tolist()


def training_background(images: torch.Tensor) -> float:
    """The training images' typical background (the median of `border_brightness`), what a
    checkpoint keeps as TrainState.background."""
    return float(torch.tensor(border_brightness(images)).median())


def reversed_inputs(
    background: float | None, images: Sequence[torch.Tensor], names: Sequence[str]
) -> tuple[str, list[str]]:
    """(what the training images look like, the names of the inputs that are the other way
    round), or ("", []) when the training data has no clear polarity or none is reversed."""
    if background is None or DARK <= background <= LIGHT or not images:
        return "", []
    dark_training = background < DARK
    brightness = border_brightness(torch.stack([_unit(image) for image in images]))
    reversed_names = [
        name
        for name, value in zip(names, brightness, strict=True)
        if (value > 0.5) == dark_training
    ]
    looks = "light marks on a dark background" if dark_training else "dark marks on a light one"
    return (looks if reversed_names else ""), reversed_names


def polarity_message(looks: str, names: Sequence[str], total: int, limit: int = 5) -> str:
    """The warning predict gives for inputs the other way round from the training images."""
    more = len(names) - limit
    shown = ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
    opposite = "dark on light" if looks.startswith("light") else "light on dark"
    return (
        f"{len(names)} of {total} inputs are {opposite}, but the model was trained on {looks} "
        f"(like MNIST's white digits on black); it will read them confidently and wrongly. "
        f"Invert them first (PIL.ImageOps.invert, or 255 - pixels): {shown}"
    )


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 pixels as float 0..1."""
    unit = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    return unit.clamp(0.0, 1.0)
