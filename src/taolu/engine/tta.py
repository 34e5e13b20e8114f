"""Test-time augmentation: each image also seen flipped and shifted the ways the run trained
with, and the class probabilities averaged over the views. What counts as a view comes from
the run (a flip only where training flipped, shifts of the pixels it shifted by), so TTA never
shows the model something it was trained to tell apart (a mirrored digit)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def translated(images: torch.Tensor, dy: int, dx: int, fill: torch.Tensor | float) -> torch.Tensor:
    """(B, C, H, W) moved down `dy` and right `dx` pixels, the uncovered edge `fill` (a number,
    or one value per channel shaped (1, C, 1, 1)), as training's random shift does."""
    height, width = images.shape[-2:]
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images - fill, (pad, pad, pad, pad)) + fill
    top, left = pad - dy, pad - dx
    return padded[..., top : top + height, left : left + width]


def views(
    images: torch.Tensor, flip: bool, shift: int, fill: torch.Tensor | float = 0.0
) -> list[torch.Tensor]:
    """The image itself, its mirror image when `flip`, and, with `shift`, the four shifts by
    that many pixels (up, down, left, right)."""
    seen = [images]
    if flip:
        seen.append(images.flip(-1))
    if shift:
        for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
            seen.append(translated(images, dy, dx, fill))
    return seen


def mean_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor], seen: list[torch.Tensor]
) -> torch.Tensor:
    """softmax(forward(view)) averaged over the views; with one view, just its softmax."""
    if len(seen) == 1:
        return forward(seen[0]).float().softmax(1)
    return torch.stack([forward(view).float().softmax(1) for view in seen]).mean(0)


class ViewAveraged(nn.Module):
    """`model` over the views of its (normalised) input: the log of the mean softmax, so that
    argmax, cross-entropy and softmax read it as they read logits."""

    def __init__(self, model: nn.Module, flip: bool, shift: int):
        super().__init__()
        self.model, self.flip, self.shift = model, flip, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        seen = views(images, self.flip, self.shift)
        return mean_probabilities(self.model, seen).clamp_min(1e-12).log()
