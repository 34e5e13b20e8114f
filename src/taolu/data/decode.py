"""The one decoding policy: how any image file or in-memory image becomes a uint8 (C, H, W) tensor.

Training, eval, predict and export all go through `decode_file` / `to_uint8_chw` and
`fit_to_size`, so a picture is seen the same way everywhere.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from taolu.errors import DataError


class StoredImage(Protocol):
    """An image file kept inside a container (a row of an Arrow table), read when asked: the
    same policy decodes it as a file. `name` stands for a path in messages and records;
    `stamp` changes whenever the container does (the decoded cache's key)."""

    name: str
    stamp: str

    def encoded(self) -> bytes:
        """The image file's bytes; DataError naming the image when they cannot be read."""
        ...


def is_stored(source: object) -> bool:
    """Whether `source` is a StoredImage rather than a path or an EncodedImage."""
    return hasattr(source, "encoded") and hasattr(source, "stamp")


def read_source(source: str | Path | EncodedImage | StoredImage) -> BinaryIO:
    """A file or an image's bytes opened for reading (see open_regular_file)."""
    if isinstance(source, EncodedImage):
        return io.BytesIO(source.data)
    return io.BytesIO(source.encoded()) if is_stored(source) else open_regular_file(source)


# Pillow's own limit (about 89 megapixels); beyond it decoding could exhaust memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes held in memory (an upload to `taolu serve`), with the name that
    results and messages use in place of a path."""

    name: str
    data: bytes


def _flatten_to_rgb_or_gray(image: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 'L' or 'RGB': transparency over white, 16-bit rescaled."""
    mode = image.mode
    if mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        merged = Image.alpha_composite(white, rgba).convert("RGB")
        return merged.convert("L") if mode in ("L", "LA", "La") else merged
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data rescaled to 8 bits over its full range: clipping would saturate it.
        top = 65535.0 if mode.startswith("I") else (1.0 if values.max() <= 1.0 else 255.0)
        return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8))
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


class ImageRefused(DataError):
    """An image file the policy refuses; `kind` names why, in data check's words:
    "unreadable", "too_large", "corrupt", "truncated" or "not_an_image"."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# The first bytes of the formats whose broken headers are worth telling from "not an image".
MAGIC_NUMBERS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF"}


def load_upright(
    file: BinaryIO,
    name: str | Path,
    draft_size: tuple[int, int] | None = None,
    look: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """The policy every reader shares (training, predict, serve and data check): open an image
    file's bytes, refuse it from its header when it claims more pixels than the
    decompression-bomb limit, take the first frame, decode its pixels (a truncated file is
    refused, never padded with grey), and turn it upright by its EXIF orientation.

    `look` sees the image as opened, before any pixel is decoded (data check reads the
    format, mode and orientation there). Raises ImageRefused naming `name` and why."""
    try:
        with Image.open(file) as image:
            # Pillow raises above twice its limit and only warns below; refuse both, from the
            # header, before any pixel is allocated. (No warnings filter: the cache decodes on
            # threads, and changing filters is not thread-safe.)
            if MAX_PIXELS and image.width * image.height > MAX_PIXELS:
                raise ImageRefused(
                    f"{name}: refused, {image.width}x{image.height} pixels is more than "
                    f"the decompression-bomb limit of {MAX_PIXELS:,}",
                    "too_large",
                )
            if look is not None:
                look(image)
            image.seek(0)
            if draft_size is not None and image.format == "JPEG":
                image.draft(image.mode, draft_size)
            upright = ImageOps.exif_transpose(image)
            upright.load()
            return upright
    except Image.DecompressionBombError as error:
        raise ImageRefused(f"{name}: refused, too many pixels ({error})", "too_large") from None
    except UnidentifiedImageError:
        file.seek(0)
        start = file.read(8)
        kind = next((kind for magic, kind in MAGIC_NUMBERS.items() if start.startswith(magic)), "")
        if kind:
            raise ImageRefused(
                f"{name}: starts like a {kind} file, but its header is broken", "corrupt"
            ) from None
        raise ImageRefused(f"{name}: not an image file Pillow can read", "not_an_image") from None
    except ImageRefused:
        raise
    except Exception as error:  # Pillow's plugins raise many kinds for damaged data
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        raise ImageRefused(
            f"{name}: cannot decode image ({type(error).__name__}: {error})", kind
        ) from None


def open_regular_file(path: str | Path) -> BinaryIO:
    """A regular file opened for reading; a FIFO, device or folder is refused (OSError)
    without blocking: opening a FIFO for reading would otherwise wait forever for a writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file (a folder, FIFO or device)")
    return os.fdopen(descriptor, "rb")


@contextmanager
def strict_pillow() -> Iterator[None]:
    """For a whole pass over many files from one thread (data check): Pillow's
    LOAD_TRUNCATED_IMAGES off (with it on, a cut-off file decodes silently as grey) and its
    decompression-bomb warning silenced (load_upright refuses those images itself, by
    name), then both restored. Global settings, so not for the training cache's threads."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def open_image(
    source: str | Path | EncodedImage | StoredImage, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Open an image file (or an image file's bytes) as an 'L' or 'RGB' Pillow image, upright,
    first frame only, by `load_upright`'s policy.

    `draft_size` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding, as long
    as both sides stay at least that large: several times faster for photos bound for a
    small training size. Raises DataError naming the file for anything unreadable.
    """
    if is_stored(source):
        source = EncodedImage(source.name, source.encoded())
    if isinstance(source, EncodedImage):
        return _flatten_to_rgb_or_gray(
            load_upright(io.BytesIO(source.data), source.name, draft_size)
        )
    path = Path(source)
    try:
        file = open_regular_file(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except OSError as error:
        raise DataError(f"{path}: {error.strerror or error}") from None
    with file:
        return _flatten_to_rgb_or_gray(load_upright(file, path, draft_size))


def to_uint8_chw(image: object) -> torch.Tensor:
    """Any in-memory image (PIL, numpy HWC/HW, tensor CHW/HW) as a (C, H, W) tensor.

    uint8 stays uint8; float stays float (taken to be already scaled to 0..1, as ToTensor does).
    """
    if isinstance(image, Image.Image):
        image = np.asarray(_flatten_to_rgb_or_gray(image))
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array.transpose(2, 0, 1)  # numpy images are HWC, as PIL and cv2 give them
        array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()  # tensors are CHW, as torchvision gives them
    else:
        raise DataError(
            f"an image must be a PIL image, a numpy array or a tensor, not {type(image).__name__}"
        )
    if tensor.is_floating_point():
        tensor = tensor.float()
    elif tensor.dtype != torch.uint8:
        tensor = tensor.clamp(0, 255).to(torch.uint8)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise DataError(f"an image must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (..., C, H, W) to `channels` (1 or 3): gray is repeated, colour uses luminance."""
    have = image.shape[-3]
    if have == 4:
        image, have = image[..., :3, :, :], 3
    if have == channels:
        return image
    if channels == 3 and have == 1:
        return image.expand(*image.shape[:-3], 3, -1, -1).contiguous()
    if channels == 1 and have == 3:
        from torchvision.transforms.v2 import functional as TF  # see fit_to_size

        return TF.rgb_to_grayscale(image, num_output_channels=1)
    raise DataError(f"cannot turn an image with {have} channels into {channels}")


def fit_to_size(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (C, H, W) to `size` (H, W): squash ignores aspect, crop fills and cuts the centre,
    pad fits inside and pads with zeros."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    # Imported on first use: torchvision takes ~2 s to import (it pulls in torch._dynamo),
    # which a run on in-memory tensors at their own size, like the default one, never needs.
    from torchvision.transforms.v2 import functional as TF

    if mode == "squash":
        return TF.resize(image, list(size), antialias=True)
    scale_of = max if mode == "crop" else min
    scale = scale_of(size[0] / height, size[1] / width)
    inner = [max(1, round(height * scale)), max(1, round(width * scale))]
    resized = TF.resize(image, inner, antialias=True)
    if mode == "crop":
        return TF.center_crop(resized, list(size))
    top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
    return TF.pad(resized, [left, top, size[1] - inner[1] - left, size[0] - inner[0] - top])


def decode_file(
    path: str | Path | EncodedImage | StoredImage,
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
) -> torch.Tensor:
    """An image file (or its bytes) as uint8 (channels, H, W) at `size`, by the one policy."""
    image = to_uint8_chw(open_image(path, draft_size=(size[1], size[0])))
    return fit_to_size(match_channels(image, channels), size, resize_mode)


def probe_images(files: list, limit: int = 64) -> tuple[int, tuple[int, int] | None]:
    """Channels by majority and the common size (None if sizes differ) of the first files
    (paths, EncodedImages or StoredImages), from their headers."""
    modes, sizes = Counter(), set()
    for path in files[:limit]:
        try:
            with read_source(path) as file, Image.open(file) as image:
                gray = image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;")
                modes[1 if gray else 3] += 1
                sizes.add((image.height, image.width))
        except (OSError, ValueError, SyntaxError, DataError):
            continue
    channels = 1 if modes[1] > modes[3] else 3
    return channels, (sizes.pop() if len(sizes) == 1 else None)
