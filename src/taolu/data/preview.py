"""Pictures of what the model is fed: a labelled grid of (augmented) training images as a PNG,
and the same grid as a tensor for TensorBoard.

Class names are drawn with Pillow's built-in default font, so nothing is fetched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from taolu.atomic_file import write_atomic
from taolu.data.loaders import Batches
from taolu.data.pipeline import DataOptions, TrainingData, batch_transforms, load_training_data
from taolu.data.transforms import SamplePipeline

GAP = 4  # white pixels between cells and around the grid
TEXT_COLOUR = (0, 0, 0)
BACKGROUND = (255, 255, 255)


def sample_indices(total: int, count: int, seed: int) -> torch.Tensor:
    """`count` indices into `total` images, drawn by `seed`; without repeats while they last."""
    if total < 1:
        raise ValueError("there are no images to choose from")
    generator = torch.Generator().manual_seed(seed)
    rounds = math.ceil(count / total)
    return torch.cat([torch.randperm(total, generator=generator) for _ in range(rounds)])[:count]


def sample_augmented(
    pipeline: SamplePipeline, images: torch.Tensor, count: int, seed: int
) -> torch.Tensor:
    """`pipeline` applied to `count` of the uint8 (N, C, H, W) `images`, chosen and augmented
    reproducibly from `seed`; the chosen ones are `sample_indices(len(images), count, seed)`,
    so their labels are `labels[sample_indices(...)]`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = sample_indices(len(images), count, seed)
    return torch.stack([pipeline(images[int(index)], generator) for index in chosen])


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return images.float().clamp(0, 1).mul(255).round().to(torch.uint8)  # float is 0..1


def _to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 (C, H, W) tensor as an RGB Pillow image."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0]).convert("RGB")
    return Image.fromarray(array[:, :, :3].copy())


def _cell_size(height: int, width: int, scale_to: int) -> tuple[int, int]:
    """(width, height) of each picture: small images grow by a whole factor, so pixels stay
    crisp squares; large ones shrink to fit `scale_to`."""
    longest = max(height, width)
    if longest <= scale_to:
        factor = max(1, scale_to // longest)
        return width * factor, height * factor
    return max(1, round(width * scale_to / longest)), max(1, round(height * scale_to / longest))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _label_text(label: int, classes: Sequence[str]) -> str:
    return classes[label] if 0 <= label < len(classes) else str(label)


def preview_grid(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classes: Sequence[str],
    *,
    columns: int = 8,
    scale_to: int = 96,
) -> Image.Image:
    """A white RGB picture of (N, C, H, W) images (gray or RGB, uint8 or float 0..1) in rows of
    `columns` (fewer if N is smaller), each scaled to about `scale_to` px, its class name below."""
    if len(images) == 0:
        raise ValueError("preview_grid needs at least one image")
    images = _to_uint8(images)
    labels = [int(label) for label in labels]
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    cell_width, cell_height = _cell_size(images.shape[2], images.shape[3], scale_to)
    font = ImageFont.load_default()
    text_height = font.getbbox("Ag")[3] + 2
    step_x, step_y = cell_width + GAP, cell_height + text_height + GAP
    grid = Image.new("RGB", (columns * step_x + GAP, rows * step_y + GAP), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    resample = Image.Resampling.NEAREST if cell_width >= images.shape[3] else Image.Resampling.BOX
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        left = GAP + (index % columns) * step_x
        top = GAP + (index // columns) * step_y
        grid.paste(_to_pil(image).resize((cell_width, cell_height), resample), (left, top))
        text = _fit_text(draw, _label_text(label, classes), font, cell_width)
        draw.text((left, top + cell_height + 1), text, fill=TEXT_COLOUR, font=font)
    return grid


def save_preview(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classes: Sequence[str],
    path: str | Path,
    *,
    columns: int = 8,
    scale_to: int = 96,
) -> Path:
    """Write `preview_grid` as a PNG at `path`, atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = preview_grid(images, labels, classes, columns=columns, scale_to=scale_to)
    encoded = io.BytesIO()
    grid.save(encoded, format="PNG")
    write_atomic(path, encoded.getvalue())
    return path


def grid_tensor(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) images as one float 0..1 (3, H', W') grid on white, `padding` pixels
    around and between them, for SummaryWriter.add_image. (torchvision's make_grid draws the
    same; importing torchvision for it cost every training run ~2 s.)"""
    unit = _to_uint8(images).float().div(255.0)
    if unit.shape[1] == 1:  # gray shown as RGB, so the grid's shape is always (3, H', W')
        unit = unit.expand(-1, 3, -1, -1)
    count, _, height, width = unit.shape
    if count == 1:  # one image is its own grid, unpadded (as make_grid has it)
        return unit[0]
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    blanks = unit.new_ones(rows * columns - count, 3, height, width)
    # Each cell gets its padding on the top and left; the grid then gets it on the right and
    # bottom. (rows, columns, 3, h, w) -> (3, rows * h, columns * w).
    cells = F.pad(torch.cat([unit, blanks]), (padding, 0, padding, 0), value=1.0)
    cells = cells.view(rows, columns, 3, height + padding, width + padding)
    grid = cells.permute(2, 0, 3, 1, 4).reshape(3, rows * cells.shape[3], columns * cells.shape[4])
    return F.pad(grid, (0, padding, 0, padding), value=1.0)


def augmented_samples(
    prepared: TrainingData, augment: str, count: int, seed: int
) -> tuple[torch.Tensor, list[int]]:
    """`count` training images as the model sees them (after the run's batch augmentation or
    per-sample pipeline), back in uint8 (N, C, H, W), with their labels. Uses its own
    generator, so showing samples never changes what a run trains on."""
    device = torch.device("cpu")
    # The run's SkipLog: a file that fails here is named once, not again by the epoch.
    batches = Batches(
        prepared.bundle.train, count, device, shuffle=True, workers=0, skips=prepared.skips
    )
    transform, _, _ = batch_transforms(augment, prepared, device, channels_last=False)
    generator = torch.Generator().manual_seed(seed)
    images, labels = next(iter(batches.iterate(generator)))
    normalised = transform(images, generator)  # (B, C, H, W)
    pixels = normalised * transform.std + transform.mean
    return pixels.clamp(0, 1).mul(255).round().to(torch.uint8), labels.tolist()


def preview_training_samples(
    data: DataOptions, augment: str, seed: int, count: int = 32
) -> tuple[torch.Tensor, list[int], list[str]]:
    """What `taolu data preview` shows: augmented training samples, labels and class names."""
    prepared = load_training_data(data)
    images, labels = augmented_samples(prepared, augment, count, seed)
    return images, labels, prepared.bundle.classes
