"""Batches on the training device: in-memory splits are sliced directly (no workers, no
per-sample Python); Datasets go through a DataLoader. Either way augmentation and
normalisation run on whole batches on the device, with a separate random choice per image."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from taolu.config import MAX_IMAGE_SIDE, RESIZE_MODES
from taolu.data.bundle import ImageTensors, Split, StreamedSplit
from taolu.data.transform_list import KEPT_FOR_EVAL, parse_transform_list
from taolu.errors import CheckpointError, ConfigError

log = logging.getLogger("taolu")


@dataclass(frozen=True)
class Preprocessing:
    """What turns a uint8 image into model input; stored in checkpoints so predict repeats it."""

    channels: int
    size: tuple[int, int]
    resize_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_transforms: tuple[dict, ...] = ()  # derived eval pipeline, as {name, args} entries

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "size": list(self.size),
            "resize_mode": self.resize_mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "eval_transforms": list(self.eval_transforms),
        }

    @classmethod
    def from_dict(cls, values: Any) -> Preprocessing:
        """The preprocessing a checkpoint or an exported file stored, checked before any of it
        is used (a shared file may be crafted): channels 1 or 3, each side 1..MAX_IMAGE_SIDE, a
        known resize mode, a finite mean and a positive std per channel, and eval transforms
        that pass the same allow-list and bounds as --transforms, deterministic ones only.
        Raises CheckpointError naming the field at fault."""
        if not isinstance(values, Mapping):
            raise CheckpointError(f"stored preprocessing: a mapping expected, got {_kind(values)}")
        missing = [key for key in STORED_KEYS if key not in values]
        if missing:
            raise CheckpointError(f"stored preprocessing: missing {', '.join(missing)}")
        channels = values["channels"]
        if not (_is_whole(channels) and channels in (1, 3)):
            raise CheckpointError(
                f"stored preprocessing: channels must be 1 or 3, not {channels!r:.40}"
            )
        size = values["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(map(_is_side, size))):
            raise CheckpointError(
                f"stored preprocessing: size must be two whole numbers from 1 to "
                f"{MAX_IMAGE_SIDE}, not {size!r:.80}"
            )
        if not (isinstance(values["resize_mode"], str) and values["resize_mode"] in RESIZE_MODES):
            raise CheckpointError(
                f"stored preprocessing: resize_mode {values['resize_mode']!r:.40} is not one of "
                f"{', '.join(RESIZE_MODES)}"
            )
        mean = _per_channel(values["mean"], "mean", channels)
        std = _per_channel(values["std"], "std", channels)
        if not all(value > 0 for value in std):
            raise CheckpointError(f"stored preprocessing: every std must be > 0, got {list(std)}")
        stored = values.get("eval_transforms", [])
        try:
            entries = parse_transform_list(
                list(stored) if isinstance(stored, tuple) else stored,
                option="stored eval_transforms",
            )
        except ConfigError as error:
            raise CheckpointError(str(error)) from None
        random = [entry.name for entry in entries if entry.name not in KEPT_FOR_EVAL]
        if random:
            raise CheckpointError(
                f"stored preprocessing: eval_transforms hold {random[0]}, which is random; an "
                f"eval pipeline keeps only {', '.join(sorted(KEPT_FOR_EVAL))}"
            )
        return cls(
            channels=channels,
            size=(size[0], size[1]),
            resize_mode=values["resize_mode"],
            mean=mean,
            std=std,
            eval_transforms=tuple(entry.describe() for entry in entries),
        )


STORED_KEYS = ("channels", "size", "resize_mode", "mean", "std")


def _kind(value: Any) -> str:
    return type(value).__name__


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_side(value: Any) -> bool:
    return _is_whole(value) and 1 <= value <= MAX_IMAGE_SIDE


def _per_channel(values: Any, name: str, channels: int) -> tuple[float, ...]:
    """One finite number per channel, as floats."""
    if isinstance(values, (list, tuple)) and len(values) == channels:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if all(math.isfinite(v) for v in values):
                return tuple(float(v) for v in values)
    raise CheckpointError(
        f"stored preprocessing: {name} must be {channels} finite number(s), one per channel, "
        f"not {values!r:.80}"
    )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float 0..1; float input is taken to be 0..1 already (ToTensor's range)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def sample_images(split: Split, limit: int = 512) -> torch.Tensor:
    """Up to `limit` images of a split, spread evenly over it, as one (N, C, H, W) tensor."""
    if isinstance(split, ImageTensors):
        return split.images
    if isinstance(split, StreamedSplit):
        return split.first_images(limit)
    step = max(1, len(split) // limit)
    samples = (split[i][0] for i in range(0, len(split), step))
    return torch.stack([image for image in samples if image is not None][:limit])


class BatchTransform:
    """Normalise, and for training augment, a batch on its device in one pass.

    Augmentation: a random shift of up to `shift` pixels (pad with the mean, then crop) and,
    if `flip`, a random horizontal flip, each drawn independently per image.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        device: torch.device,
        *,
        shift: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ):
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(preprocessing.mean, device=device).view(shape)
        self.std = torch.tensor(preprocessing.std, device=device).view(shape)
        self.shift = shift
        self.flip = flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        images = (to_unit_float(images) - self.mean) / self.std  # (B, C, H, W)
        if generator is not None and self.shift:
            images = random_shift(images, self.shift, generator)
        if generator is not None and self.flip:
            flip = torch.rand(images.shape[0], generator=generator) < 0.5
            flip = flip.to(images.device).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(3), images)
        return images.contiguous(memory_format=self.memory_format)


def random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-shift, shift], filling with zeros
    (the mean, after normalisation)."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    # Random draws come from the CPU generator so one saved state reproduces them on any device.
    offsets = torch.randint(0, 2 * shift + 1, (2, batch, 1), generator=generator)
    offsets = offsets.to(images.device)
    rows = (offsets[0] + torch.arange(height, device=images.device)).view(batch, 1, height, 1)
    cols = (offsets[1] + torch.arange(width, device=images.device)).view(batch, 1, 1, width)
    index_b = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    index_c = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[index_b, index_c, rows, cols]


def auto_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return min(4, os.cpu_count() or 1)


class SkipLog:
    """Files skipped because they could not be decoded: each is warned about once and
    listed in summary.json."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        if path not in self.reasons:
            self.reasons[path] = reason
            log.warning("skipped %s", reason)

    def as_list(self) -> list[dict[str, str]]:
        return [{"path": path, "reason": reason} for path, reason in self.reasons.items()]


def stack_samples(
    samples: list[tuple],
) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str]]]:
    """Collate (image, label) or (image-or-None, label, (path, error)) samples, leaving out
    the samples whose file could not be decoded and returning their (path, error) pairs."""
    errors = [sample[2] for sample in samples if sample[0] is None]
    samples = [sample for sample in samples if sample[0] is not None]
    images = [sample[0] for sample in samples]
    if any(image.dtype != torch.uint8 for image in images):
        images = [to_unit_float(image) for image in images]
    labels = torch.tensor([sample[1] for sample in samples], dtype=torch.long)
    return (torch.stack(images) if images else None), labels, errors


def split_labels(split: Split) -> torch.Tensor:
    """Every label of a split (N,), read without decoding images where the split knows them:
    in-memory tensors, file lists and Datasets with torchvision's `targets`."""
    while True:
        if isinstance(split, ImageTensors):
            return split.labels
        targets = getattr(split, "targets", None)
        if targets is not None:
            return torch.as_tensor(list(targets), dtype=torch.long)
        inner = getattr(split, "split", None) or getattr(split, "dataset", None)
        if inner is None or len(inner) != len(split):
            break
        split = inner
    return torch.tensor([int(split[index][1]) for index in range(len(split))], dtype=torch.long)


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample drawing weights that give every class the same total: 1 / its count."""
    counts = torch.bincount(labels).float()
    return 1.0 / counts[labels]


class Batches:
    """Iterates (images, labels) batches of a split on `device`, images still uint8 (or float).

    Shuffled batches take their order from `generator` (a CPU torch.Generator), whose state
    the checkpoint saves, so a resumed run sees the same order as an uninterrupted one.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        workers: int = 0,
        skips: SkipLog | None = None,
        sample_weights: torch.Tensor | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        self.split = split
        # (rank, world size): under DDP each process takes every world-size-th sample of the
        # epoch's order. Training shards are cut to equal length, since every process must
        # take the same number of steps; validation shards keep every sample exactly once.
        self.rank, self.world_size = shard
        # With weights, each epoch draws len(split) samples with replacement (class-balanced).
        self.sample_weights = sample_weights
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.workers = workers
        self.skips = skips if skips is not None else SkipLog()
        self.stream_seed = 0  # a streamed split's shuffle seed, drawn by each `order`
        if isinstance(split, StreamedSplit) and sample_weights is not None:
            raise ConfigError(
                "--sampler balanced draws samples by index, and shards are streamed in order; "
                "use --class-weights auto"
            )
        if isinstance(split, ImageTensors):
            self._hold(split)

    def _hold(self, split: ImageTensors) -> None:
        # Small enough to hold: move it to the device once, not per batch.
        self.split = split
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)

    def _shard_size(self) -> int:
        if isinstance(self.split, StreamedSplit):  # whole tar shards per process
            return self.split.share_length(self.rank, self.world_size, equal=self.shuffle)
        total = len(self.split)
        if self.world_size == 1:
            return total
        if self.shuffle:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        full, rest = divmod(self._shard_size(), self.batch_size)
        # A training batch of one image breaks BatchNorm; it is dropped when shuffling.
        return full + (1 if rest > (1 if self.shuffle else 0) else 0)

    def order(self, generator: torch.Generator | None) -> torch.Tensor:
        if isinstance(self.split, StreamedSplit):
            return self._stream_order(generator)
        if self.sample_weights is not None:
            order = torch.multinomial(
                self.sample_weights, len(self.split), replacement=True, generator=generator
            )
        elif self.shuffle:
            order = torch.randperm(len(self.split), generator=generator)
        else:
            order = torch.arange(len(self.split))
        if self.world_size > 1:  # every process drew the same order; each takes its share
            if self.shuffle:
                order = order[: self._shard_size() * self.world_size]
            order = order[self.rank :: self.world_size]
        return order[: len(self) * self.batch_size] if self.shuffle else order

    def _stream_order(self, generator: torch.Generator | None) -> torch.Tensor:
        """A stream has no indices: the order is the epoch's positions in this process's
        stream (a resumed epoch continues from the first one left), and the stream's shuffle
        seed is drawn here from `generator`, so the same state gives the same stream."""
        if self.shuffle and generator is not None:
            self.stream_seed = int(torch.randint(2**31, (1,), generator=generator))
        return torch.arange(min(len(self) * self.batch_size, self._shard_size()))

    def iterate(
        self, generator: torch.Generator | None = None, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (sample indices), or in a new order drawn from `generator`."""
        if order is None:
            order = self.order(generator)
        if isinstance(self.split, StreamedSplit):
            yield from self.split.batches(
                self.batch_size,
                self.device,
                shard=(self.rank, self.world_size),
                seed=self.stream_seed if self.shuffle else None,
                skip=int(order[0]) if len(order) else 0,
                count=len(order),
                workers=self.workers,
                skips=self.skips,
            )
            return
        if isinstance(self.split, ImageTensors):
            order = order.to(self.device)
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                yield self.images[index], self.labels[index]
            return
        loader = self._loader(self.split, order.tolist())
        non_blocking = self.device.type == "cuda"
        for images, labels, errors in loader:
            for path, error in errors:
                self.skips.add(path, error)
            if images is None:
                continue
            yield images.to(self.device, non_blocking=non_blocking), labels.to(self.device)

    def _loader(self, dataset: Dataset, order: list[int]) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.workers,
            collate_fn=stack_samples,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
