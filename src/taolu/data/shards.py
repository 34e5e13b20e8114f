"""WebDataset tar shards (`--data 'shards/train-{000..009}.tar'`), streamed for data larger than
memory: never cached, read from disk each epoch, each process (torchrun) and DataLoader worker
taking its own shards, shuffled through a buffer; every image decoded by decode.py's policy, a
bad one skipped and named SHARD:KEY. The format itself is shard_files.py's; shard_export.py
writes shards."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from taolu.data.bundle import DataBundle, StreamedSplit, image_size_for
from taolu.data.decode import decode_file, probe_images
from taolu.data.loaders import SkipLog, stack_samples
from taolu.data.shard_files import (
    LABEL_SUFFIX,
    ShardFacts,
    import_webdataset,
    raw_samples,
    read_classes,
    scan_shard,
    split_shards,
    usable,
)
from taolu.errors import DataError

# The buffer starts yielding once it holds this share of its size: less random at the very
# start, but the first batch does not wait for the whole buffer to fill.
INITIAL_SHARE = 0.1


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Decoding:
    """How each image is decoded, and the per-sample pipeline after it (None: none)."""

    channels: int
    size: tuple[int, int]
    resize_mode: str
    pipeline: object = None


def decode_sample(sample: dict, decoding: Decoding) -> tuple:
    """(image, label, "") or, for an image that does not decode, (None, label, (SHARD:KEY,
    why)); (None, -1, "") for what the scan did not count as a sample (passed over)."""
    found = usable(sample)
    if isinstance(found, str):
        return None, -1, ""
    member, label = found
    try:
        image = decode_file(member, decoding.channels, decoding.size, decoding.resize_mode)
    except DataError as error:
        return None, label, (member.name, str(error))
    if decoding.pipeline is not None:
        image = decoding.pipeline(image)
    return image, label, ""


class ShardSamples(IterableDataset):
    """One epoch's samples of some shards, in DataLoader workers: each worker takes every
    n-th shard; with a seed, the shard order and a buffer of raw samples are shuffled."""

    def __init__(self, paths: list[Path], decoding: Decoding, seed: int | None, buffer: int):
        self.paths, self.decoding, self.seed, self.buffer = paths, decoding, seed, buffer

    def __iter__(self) -> Iterator[tuple]:
        worker = get_worker_info()
        index, count = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        mine = list(self.paths[index::count])
        rng = random.Random(self.seed * 1000 + index) if self.seed is not None else None
        if rng is not None:
            rng.shuffle(mine)
        samples: Iterator[dict] = raw_samples(mine)
        if rng is not None and self.buffer > 1:  # raw bytes buffered: smaller than pixels
            shuffle = import_webdataset().filters.shuffle
            initial = max(1, int(self.buffer * INITIAL_SHARE))
            samples = shuffle(self.buffer, initial, rng=rng)(samples)
        for sample in samples:
            decoded = decode_sample(sample, self.decoding)
            if decoded[0] is not None or decoded[2]:
                yield decoded


class ShardStream(StreamedSplit):
    """A split read from tar shards as a stream: its size and labels known from a header-only
    scan, its images decoded only as they stream past."""

    def __init__(self, shards: list[ShardFacts], decoding: Decoding, buffer: int, source: str):
        self.shards, self.decoding, self.buffer, self.source = shards, decoding, buffer, source

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def targets(self) -> torch.Tensor:
        """Every label (counts from the scan; not in stream order)."""
        labels = Counter()
        for shard in self.shards:
            labels.update(shard.labels)
        return torch.tensor([label for label, n in sorted(labels.items()) for _ in range(n)])

    def with_pipeline(self, pipeline: object) -> ShardStream:
        return ShardStream(
            self.shards, replace(self.decoding, pipeline=pipeline), self.buffer, self.source
        )

    def share(self, rank: int, world_size: int) -> list[ShardFacts]:
        """The shards of process `rank`: every world-size-th, the same every epoch (none for
        some processes when there are fewer shards: fine for validation only)."""
        return self.shards[rank::world_size]

    def share_length(self, rank: int, world_size: int, equal: bool) -> int:
        """Samples process `rank` streams; with `equal` (training), the fewest any process
        has, since every process must take the same number of steps."""
        if not equal:
            return sum(shard.count for shard in self.share(rank, world_size))
        if len(self.shards) < world_size:
            raise DataError(
                f"{self.source}: {len(self.shards)} shard(s) for {world_size} processes; each "
                "process trains on whole shards, so give at least one shard per process"
            )
        return min(
            sum(shard.count for shard in self.share(other, world_size))
            for other in range(world_size)
        )

    def holds(self, name: str) -> bool:
        """Whether SHARD:KEY names a sample of one of this split's shards."""
        return name.rsplit(":", 1)[0] in {str(shard.path) for shard in self.shards}

    def first_images(self, limit: int) -> torch.Tensor:
        """Up to `limit` decoded images from up to 8 shards spread over the split (statistics
        and the background): without the pipeline, as the stream decodes them."""
        step = max(1, len(self.shards) // 8)
        picked = [shard.path for shard in self.shards[::step]][:8]
        plain = replace(self.decoding, pipeline=None)
        images = []
        for number, path in enumerate(picked, start=1):
            quota = limit * number // len(picked)  # images wanted once this shard is read
            for sample in raw_samples([path]):
                if len(images) >= quota:
                    break
                image = decode_sample(sample, plain)[0]
                if image is not None:
                    images.append(image)
        if not images:
            raise DataError(f"{self.source}: no image in the shards decodes")
        return torch.stack(images[:limit])

    def batches(
        self,
        batch_size: int,
        device: torch.device,
        *,
        shard: tuple[int, int],
        seed: int | None,
        skip: int,
        count: int,
        workers: int,
        skips: SkipLog,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's batches on `device`. With a seed (training): exactly `count`
        samples after the first `skip`, in batches of `batch_size`, the shards streamed
        again (reshuffled) when bad samples left them short, so every process takes the same
        number of steps. Without (validation): every sample of its shards, in order."""
        if seed is not None:
            self.share_length(*shard, equal=True)  # refuses too few shards
        paths = [facts.path for facts in self.share(*shard)]
        non_blocking = device.type == "cuda"
        if seed is None:
            batches = self._one_pass(paths, None, batch_size, workers, device, skips)
        else:
            endless = self._passes(paths, seed, batch_size, workers, device, skips)
            batches = exact_batches(endless, batch_size, skip, count)
        for images, labels in batches:
            yield images.to(device, non_blocking=non_blocking), labels.to(device)

    def _one_pass(
        self,
        paths: list[Path],
        seed: int | None,
        batch_size: int,
        workers: int,
        device: torch.device,
        skips: SkipLog,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            ShardSamples(paths, self.decoding, seed, self.buffer),
            batch_size=batch_size,
            num_workers=min(workers, len(paths)),
            collate_fn=stack_samples,
            pin_memory=device.type == "cuda",
        )
        for images, labels, errors in loader:
            for name, error in errors:
                skips.add(name, error)
            if images is not None:
                yield images, labels

    def _passes(
        self, paths: list[Path], seed: int, *settings: object
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pass after pass over the shards, each shuffled by its own seed."""
        for number in itertools.count():
            delivered = False
            for batch in self._one_pass(paths, seed + number, *settings):
                delivered = True
                yield batch
            if not delivered:
                raise DataError(f"{self.source}: no image in this process's shards decodes")


def exact_batches(
    source: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int, skip: int, count: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `batch_size` (the last one smaller when `count` says so) holding exactly
    `count` samples of `source` after its first `skip`, whatever sizes `source` comes in
    (each DataLoader worker ends on a part batch of its own)."""
    pending_images: list[torch.Tensor] = []
    pending_labels: list[torch.Tensor] = []
    held = taken = 0
    for images, labels in source:
        if skip:
            drop = min(skip, len(labels))
            images, labels, skip = images[drop:], labels[drop:], skip - drop
        pending_images.append(images)
        pending_labels.append(labels)
        held += len(labels)
        while taken < count and held >= min(batch_size, count - taken):
            size = min(batch_size, count - taken)
            all_images, all_labels = torch.cat(pending_images), torch.cat(pending_labels)
            yield all_images[:size], all_labels[:size]
            pending_images, pending_labels = [all_images[size:]], [all_labels[size:]]
            held, taken = held - size, taken + size
        if taken >= count:
            return


# --------------------------------------------------------------------------- the bundle


def _probe_stream(paths: list[Path], limit: int = 64) -> tuple[int, tuple[int, int] | None]:
    """Channels and common size from the headers of the first images of the first shard."""
    images = []
    for sample in raw_samples(paths[:1]):
        found = usable(sample)
        if not isinstance(found, str):
            images.append(found[0])
        if len(images) >= limit:
            break
    return probe_images(images, limit)


def bundle_shards(
    spec: str,
    *,
    val_shards: str,
    val_fraction: float,
    image_size: int,
    resize_mode: str,
    channels: int,
    shuffle_buffer: int,
) -> DataBundle:
    """Tar shards as a bundle of two ShardStreams, after a header-only scan of every shard
    (sizes, labels); channels and size from the first images unless given."""
    train_paths, val_paths, how = split_shards(spec, val_shards, val_fraction)
    train, val = [scan_shard(p) for p in train_paths], [scan_shard(p) for p in val_paths]
    classes = read_classes(train + val)
    for name, facts in (("train", train), ("validation", val)):
        if not sum(shard.count for shard in facts):
            raise DataError(
                f"{spec}: the {name} shards hold no sample with an image and a .{LABEL_SUFFIX} "
                "label"
            )
    if len(classes) < 2:
        raise DataError(f"{spec}: found {len(classes)} class(es); need at least 2")
    probed_channels, common_size = _probe_stream(train_paths)
    channels = channels or probed_channels
    size = image_size_for(image_size, common_size)
    decoding = Decoding(channels, size, resize_mode)
    return DataBundle(
        train=ShardStream(train, decoding, shuffle_buffer, spec),
        val=ShardStream(val, decoding, 0, val_shards or spec),
        classes=classes,
        channels=channels,
        size=size,
        digits=False,
        description=f"WebDataset shards {how}, streamed",
    )
