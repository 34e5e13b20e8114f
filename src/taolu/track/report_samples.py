"""The report's sample predictions, drawn with Pillow: a page-wide grid of validation images,
each framed and captioned in green (right) or red (wrong) with "true -> predicted" and the
confidence. Drawn directly rather than as 64 matplotlib axes, which cost over a second of
every run's end (benchmarks/startup.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 136  # pixels a side: eight tiles and their gaps fill the report's 1,200 px
GAP = 10
CAPTION = 44  # two lines of text under each tile
HEADER = 40
RIGHT, WRONG, INK = (23, 128, 61), (200, 30, 30), (30, 30, 30)


def draw_samples(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    name: Callable[[int], str],
    columns: int,
) -> tuple[bytes, int]:
    """PNG bytes of the grid and how many of the images are right. `images` is (N, H, W, C)
    uint8 with C 1 or 3; `name(index)` gives a class's short name."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    width = columns * (TILE + GAP) + GAP
    height = HEADER + rows * (TILE + CAPTION + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font, title_font = ImageFont.load_default(size=15), ImageFont.load_default(size=20)
    right = 0
    for index in range(count):
        truth, guess = int(labels[index]), int(predicted[index])
        correct = truth == guess
        right += correct
        colour = RIGHT if correct else WRONG
        left = GAP + (index % columns) * (TILE + GAP)
        top = HEADER + (index // columns) * (TILE + CAPTION + GAP)
        picture = images[index]
        tile = Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture)
        # Small images (digits, CIFAR) stay crisp; large ones are smoothed when shrunk.
        smooth = max(tile.size) > 64
        inner = TILE - 6
        scale = inner / max(tile.size)
        shape = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        tile = tile.convert("RGB").resize(
            shape, Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
        )
        draw.rectangle((left, top, left + TILE - 1, top + TILE - 1), outline=colour, width=3)
        sheet.paste(tile, (left + 3 + (inner - shape[0]) // 2, top + 3 + (inner - shape[1]) // 2))
        draw.text((left, top + TILE + 3), f"{name(truth)} -> {name(guess)}", fill=colour, font=font)
        draw.text(
            (left, top + TILE + 22), f"({float(confidence[index]):.2f})", fill=colour, font=font
        )
    draw.text(
        (GAP, 10),
        f"Validation samples: {right} of {count} right (true -> predicted (confidence))",
        fill=INK,
        font=title_font,
    )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue(), right


def load_samples(path: Path) -> tuple[Any, Any, Any, Any]:
    """(images uint8 (N, H, W, C) numpy, labels, predicted, confidence) from the samples file;
    raises ValueError when its tensors are not what the training routine writes."""
    import numpy as np
    from safetensors.torch import load_file

    from taolu.track.pictures import to_uint8

    tensors = load_file(str(path))
    missing = [key for key in ("images", "labels", "predicted", "confidence") if key not in tensors]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    images = tensors["images"]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images has shape {tuple(images.shape)}, not (N, 1 or 3, H, W)")
    pictures = to_uint8(images).permute(0, 2, 3, 1).numpy()
    count = len(pictures)
    parts = [tensors[key].reshape(-1) for key in ("labels", "predicted", "confidence")]
    if any(len(part) != count for part in parts):
        raise ValueError("images, labels, predicted and confidence differ in length")
    labels, predicted = (part.long().numpy() for part in parts[:2])
    confidence = parts[2].float().numpy()
    return np.ascontiguousarray(pictures), labels, predicted, confidence
