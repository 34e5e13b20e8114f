"""Pictures for TensorBoard drawn with Pillow (its built-in font, nothing fetched): captioned
image grids and the confusion matrix as a heat map. Cheap enough to draw every epoch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

TILE = 72  # tiles are scaled up to at least this side so captions stay legible
CAPTION = 14  # caption strip height in pixels
GREEN, RED, INK = (20, 140, 60), (200, 30, 30), (30, 30, 30)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as they are; 0..1 floats (ToTensor's range) scaled to 0..255 uint8."""
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def as_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 or 0..1 float, 1 or 3 channels -> (N, 3, H, W) uint8."""
    images = to_uint8(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def captioned_grid(
    images: torch.Tensor, captions: list[str], colours: list[tuple[int, int, int]], columns: int = 8
) -> np.ndarray:
    """A grid of `images` (N, C, H, W), each with its caption beneath: (H, W, 3) uint8."""
    tiles = as_uint8_rgb(images.cpu())
    height, width = tiles.shape[-2:]
    scale = max(1, -(-TILE // max(height, width)))
    if scale > 1:  # nearest keeps small digits crisp
        tiles = F.interpolate(tiles.float(), scale_factor=scale, mode="nearest").to(torch.uint8)
    height, width = tiles.shape[-2:]
    width = max(width, TILE)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (width + 2), rows * (height + CAPTION + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    for index, tile in enumerate(tiles):
        left = (index % columns) * (width + 2)
        top = (index // columns) * (height + CAPTION + 2)
        sheet.paste(Image.fromarray(tile.permute(1, 2, 0).numpy()), (left, top))
        draw.text((left + 1, top + height + 1), captions[index], fill=colours[index], font=font)
    return np.asarray(sheet)


def confusion_picture(matrix: list[list[int]], classes: list[str]) -> np.ndarray:
    """The confusion matrix normalised per true class (row) as a heat map, counts written in
    the cells while there is room (<= 20 classes): (H, W, 3) uint8."""
    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = len(classes)
    cell = max(6, min(40, 640 // max(size, 1)))
    margin = 60 if size <= 30 else 4
    picture = Image.new("RGB", (margin + size * cell + 4, margin + size * cell + 4), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=10)
    for row in range(size):
        for column in range(size):
            shade = int(255 - 200 * shares[row, column])  # white (0) to deep blue (1)
            box = (
                margin + column * cell,
                margin + row * cell,
                margin + (column + 1) * cell - 1,
                margin + (row + 1) * cell - 1,
            )
            draw.rectangle(box, fill=(shade, shade, 255))
            if size <= 20:
                colour = "white" if shares[row, column] > 0.5 else INK
                draw.text((box[0] + 2, box[1] + 2), f"{int(counts[row, column])}", fill=colour,
                          font=font)  # fmt: skip
    if size <= 30:
        for index, name in enumerate(classes):
            label = name[:8]
            draw.text((2, margin + index * cell + 2), label, fill=INK, font=font)  # true
            draw.text((margin + index * cell + 2, 2 + (index % 4) * 12), label, fill=INK, font=font)
        draw.text((2, margin - 14), "true \\ predicted", fill=INK, font=font)
    return np.asarray(picture)
