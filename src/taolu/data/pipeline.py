"""From options to batches: the data source, the decoded cache, the refusal of broken data
sets, and the batch transforms. Training and `taolu data bench` both start here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from taolu.data.bundle import DataBundle, ImageTensors, StreamedSplit
from taolu.data.cache import decode_once
from taolu.data.loaders import (
    BatchTransform,
    Preprocessing,
    SkipLog,
    auto_workers,
    sample_images,
)
from taolu.data.polarity import training_background
from taolu.data.sources import ImageFiles, load_data
from taolu.data.transform_list import parse_transform_list
from taolu.data.transforms import (
    PRESETS,
    SamplePipeline,
    build_eval_pipeline,
    build_train_pipeline,
    normalization_stats,
    preset_for,
)
from taolu.data.user_data import NamedSamples, bundle_datasets
from taolu.errors import ConfigError, DataError

logger = logging.getLogger("taolu")
POLARITY_SAMPLES = 64  # training images that tell its background (data.polarity)


TRANSFORM_PRESETS = ("auto", *PRESETS)


def check_transforms_option(value: object) -> None:
    """Refuse a --transforms value that is neither empty, a preset name, nor a valid list."""
    if isinstance(value, str):
        if value and value not in TRANSFORM_PRESETS:
            raise ConfigError(
                f"option 'transforms': {value!r} is not allowed; give a list of {{name, args}} "
                f"or one of the presets: {', '.join(TRANSFORM_PRESETS)}"
            )
        return
    parse_transform_list(value)


class TransformedSplit(Dataset):
    """A split whose images pass through a per-sample pipeline (in DataLoader workers)."""

    def __init__(self, split: Dataset | ImageTensors, pipeline: SamplePipeline):
        self.split, self.pipeline = split, pipeline

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple:
        image, *rest = self.split[index]
        return (image if image is None else self.pipeline(image), *rest)


@dataclass(frozen=True)
class DataOptions:
    """The options the data side reads, and nothing else: TrainConfig's fields of the same
    names (their defaults and rules live there), handed over with `taken_from`."""

    data: str
    data_root: str
    val_fraction: float
    image_size: int
    resize_mode: str
    channels: int
    workers: int
    cache: str
    cache_dir: str
    max_bad_fraction: float
    transforms: str | list
    normalize: str
    image_column: str
    label_column: str
    val_shards: str
    shuffle_buffer: int

    @classmethod
    def taken_from(cls, options: object) -> DataOptions:
        """The same-named fields of a TrainConfig (or any object that has them)."""
        return cls(**{field.name: getattr(options, field.name) for field in fields(cls)})


@dataclass
class TrainingData:
    """Both splits ready to batch, and how they got there."""

    bundle: DataBundle
    preprocessing: Preprocessing
    skips: SkipLog  # files left out because they could not be decoded
    workers: int  # DataLoader workers; 0 for in-memory tensors
    cache: str  # "tensors" (in memory from the start), "ram", "disk", "off" or "stream"
    per_sample: bool  # a per-sample transform pipeline replaces batch augmentation
    # The training images' background brightness 0..1 (data.polarity), before any per-sample
    # pipeline: kept in checkpoints so predict can warn about inputs the other way round.
    background: float | None = None


def split_names(split: Dataset, skips: SkipLog) -> list[str]:
    """What each sample of `split` is called, in the order evaluation meets it (the files
    that could not be decoded left out, as the batches leave them out): its file for file
    data, `Name[index]` in the user's own Dataset, `#index` in an embedded or on-disk set's
    validation split or in a stream."""
    while isinstance(split, TransformedSplit):
        split = split.split
    if isinstance(split, ImageTensors):
        return (
            list(split.names) if split.names is not None else [f"#{i}" for i in range(len(split))]
        )
    if isinstance(split, ImageFiles):
        return [str(path) for path, _ in split.files if str(path) not in skips.reasons]
    if isinstance(split, NamedSamples):
        return [split.where(index) for index in range(len(split))]
    if isinstance(split, StreamedSplit):  # positions in the stream: its workers interleave
        kept = len(split) - sum(1 for name in skips.reasons if split.holds(name))
        return [f"#{i}" for i in range(kept)]
    return [f"#{i}" for i in range(len(split))]


def refuse_too_many_bad_files(
    data: DataBundle, skips: SkipLog, max_bad_fraction: float, spec: str
) -> None:
    """Training stops before it starts when too much of the data cannot be read: that is a
    broken data set, not a few stray files."""
    if data.listing is not None:
        listed = sum(len(files) for files in data.listing.splits.values())
    else:  # streamed shards: the samples the scan counted
        listed = len(data.train) + len(data.val)
    bad = len(skips.reasons)
    if listed and bad / listed > max_bad_fraction:
        examples = "; ".join(list(skips.reasons.values())[:3])
        raise DataError(
            f"{bad} of {listed} image files ({bad / listed:.1%}) cannot be read, more than "
            f"--max-bad-fraction {max_bad_fraction}; `taolu data check {spec}` lists them all. "
            f"First: {examples}"
        )


def read_bundle(
    config: DataOptions,
    *,
    train_data: Dataset | None = None,
    val_data: Dataset | None = None,
    classes: list[str] | None = None,
    manifest: Path | None = None,
) -> tuple[DataBundle, SkipLog, str, int]:
    """The data of `config` (or the caller's own Datasets) as (bundle, skips, cache, workers):
    file-based data decoded once into the cache when it fits, and refused when too much of
    it is unreadable; no per-sample pipeline yet."""
    sizing = dict(
        val_fraction=config.val_fraction,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        channels=config.channels,
    )
    if train_data is not None:
        bundle = bundle_datasets(train_data, val_data, classes, **sizing)
    else:
        bundle = load_data(
            config.data,
            data_root=config.data_root,
            manifest=manifest,
            image_column=config.image_column,
            label_column=config.label_column,
            val_shards=config.val_shards,
            shuffle_buffer=config.shuffle_buffer,
            **sizing,
        )
    skips = SkipLog()
    workers = auto_workers(config.workers)
    cache = "tensors" if isinstance(bundle.train, ImageTensors) else "off"
    if bundle.streamed:
        cache = "stream"  # shards: read from disk every epoch, never cached
    if bundle.listing is not None:
        for path, why in bundle.listing.passed_over:
            logger.warning("ignored %s: %s", path, why)
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else None
        bundle, cache = decode_once(bundle, config.cache, cache_dir, workers, skips)
        refuse_too_many_bad_files(bundle, skips, config.max_bad_fraction, config.data)
    return bundle, skips, cache, workers


def load_training_data(
    config: DataOptions,
    *,
    train_data: Dataset | None = None,
    val_data: Dataset | None = None,
    classes: list[str] | None = None,
    manifest: Path | None = None,
    preprocessing: Preprocessing | None = None,
    splits: DataBundle | None = None,
) -> TrainingData:
    """The data of `config` (or the caller's own Datasets, or `splits` already read and split:
    the label search's folds), with its per-sample pipelines. The preprocessing is measured
    on the training split unless given (a resumed run's)."""
    if splits is not None:
        bundle, skips, workers = splits, SkipLog(), auto_workers(config.workers)
        cache = "tensors" if isinstance(bundle.train, ImageTensors) else "off"
    else:
        bundle, skips, cache, workers = read_bundle(
            config, train_data=train_data, val_data=val_data, classes=classes, manifest=manifest
        )
    # A few dozen images tell the background; a Dataset or uncached files decode each one.
    background = training_background(sample_images(bundle.train, limit=POLARITY_SAMPLES))
    train_pipeline, eval_pipeline = sample_pipelines(config, bundle)
    if preprocessing is None:
        preprocessing = measure_preprocessing(config, bundle, train_pipeline, eval_pipeline)
    if train_pipeline is not None and bundle.streamed:
        bundle = replace(
            bundle,
            train=bundle.train.with_pipeline(train_pipeline),
            val=bundle.val.with_pipeline(eval_pipeline),
        )
    elif train_pipeline is not None:
        bundle = replace(
            bundle,
            train=TransformedSplit(bundle.train, train_pipeline),
            val=TransformedSplit(bundle.val, eval_pipeline)
            if eval_pipeline.has_steps
            else bundle.val,
        )
    in_memory = isinstance(bundle.train, ImageTensors)
    return TrainingData(
        bundle,
        preprocessing,
        skips,
        workers=0 if in_memory else workers,
        cache=cache,
        per_sample=train_pipeline is not None,
        background=background,
    )


def sample_pipelines(
    config: DataOptions, bundle: DataBundle
) -> tuple[SamplePipeline | None, SamplePipeline | None]:
    """(train, eval) per-sample pipelines for --transforms, or (None, None) without it."""
    option = config.transforms
    if not option:
        return None, None
    if isinstance(option, str):
        preset = (
            preset_for(bundle.size, bundle.channels, bundle.digits) if option == "auto" else option
        )
        spec = None
    else:
        preset, spec = "none", option
    sizing = dict(size=bundle.size, channels=bundle.channels, resize_mode=config.resize_mode)
    return (
        build_train_pipeline(spec, preset=preset, **sizing),
        build_eval_pipeline(spec, preset=preset, **sizing),
    )


def stored_eval_pipeline(preprocessing: Preprocessing) -> SamplePipeline | None:
    """The eval pipeline a checkpoint recorded, rebuilt for eval and predict (None if none)."""
    if not preprocessing.eval_transforms:
        return None
    return SamplePipeline(
        parse_transform_list(list(preprocessing.eval_transforms)),
        size=preprocessing.size,
        channels=preprocessing.channels,
        resize_mode=preprocessing.resize_mode,
    )


def measure_preprocessing(
    config: DataOptions,
    bundle: DataBundle,
    train_pipeline: SamplePipeline | None,
    eval_pipeline: SamplePipeline | None,
) -> Preprocessing:
    """Mean and std from a Normalize entry of --transforms, else from --normalize (measured on
    up to 512 training images for auto); the eval pipeline is stored for predict."""
    if train_pipeline is not None and train_pipeline.normalization is not None:
        mean, std = train_pipeline.normalization
    elif config.normalize == "auto":
        mean, std = normalization_stats("auto", sample_images(bundle.train))
    else:
        mean, std = normalization_stats(config.normalize, torch.zeros(1, bundle.channels, 1, 1))
    described = tuple(eval_pipeline.describe()) if eval_pipeline is not None else ()
    return Preprocessing(bundle.channels, bundle.size, config.resize_mode, mean, std, described)


# `auto` does not shift images smaller than this: the shift's smallest step, one pixel, is an
# eighth of an 8x8 digit (measured, benchmarks/recipe_zoo.py digits8x8: 0.986 shifted, 0.994
# not).
MIN_AUTO_SHIFT_SIDE = 14


def batch_transforms(
    augment: str, prepared: TrainingData, device: torch.device, channels_last: bool
) -> tuple[BatchTransform, BatchTransform, str]:
    """(train transform, eval transform, augmentation used). `auto` shifts every image and
    also flips those a flip keeps in their class (DataBundle.flips_keep_classes); the shift is
    about 1/14 of the image side (2 px at 28 px), and images under 14 px are left as they
    are. With a per-sample pipeline the batches are
    only normalised: the pipeline already augmented."""
    bundle, preprocessing = prepared.bundle, prepared.preprocessing
    if prepared.per_sample:
        augment = "none"
    elif augment == "auto" and min(bundle.size) < MIN_AUTO_SHIFT_SIDE:
        augment = "none"
    elif augment == "auto":
        augment = "shift-flip" if bundle.flips_keep_classes else "shift"
    shift = 0 if augment == "none" else max(1, round(min(bundle.size) / 14))
    train = BatchTransform(
        preprocessing,
        device,
        shift=shift,
        flip=augment == "shift-flip",
        channels_last=channels_last,
    )
    used = "per-sample transforms" if prepared.per_sample else augment
    return train, BatchTransform(preprocessing, device, channels_last=channels_last), used
