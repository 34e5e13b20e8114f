"""What a standalone script needs to know about a run: its final options, its data (classes,
channels, size, mean and std, augmentation) and its network, gathered the same way for a
finished run (its checkpoint and summary.json) and for a configuration not yet trained."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.checkpoint import find_checkpoint, read_state
from taolu.config import FIELDS, TrainConfig
from taolu.data.bundle import DataBundle, ImageTensors
from taolu.data.loaders import Preprocessing, SkipLog
from taolu.data.pipeline import (
    DataOptions,
    TrainingData,
    batch_transforms,
    measure_preprocessing,
    sample_pipelines,
)
from taolu.data.sources import load_data
from taolu.engine.batchnorm import slow_batchnorm
from taolu.engine.precision import pick_device, pick_precision
from taolu.errors import ConfigError
from taolu.layout import LAST_NAME, RunDir
from taolu.models import build_model
from taolu.option_values import resolve_config
from taolu.run.setup import settle_recipe
from taolu.run.transfer import head_name
from taolu.train_options import USER_PREFIX


@dataclass(frozen=True)
class RunFacts:
    """Everything the script is written from."""

    config: TrainConfig  # the final options, the recipe's choices included
    origin: str  # which run (or configuration) the script came from, for its header
    classes: list[str]
    train_images: int
    channels: int
    size: tuple[int, int]  # (H, W) the images are fitted to
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shift: int  # the batch augmentation's random shift, in pixels (0 = none)
    flip: bool  # random horizontal flips
    train_transforms: list[dict[str, Any]] | None  # --transforms: the per-sample entries
    eval_transforms: list[dict[str, Any]] | None
    precision: str  # fp32, bf16 or fp16, as the run computed
    network: nn.Module | None  # built as taolu built it; None for the caller's own module
    head: str | None  # the classifier head's dotted name, where taolu can tell it
    own_model: str | None  # the caller's nn.Module class (taolu.train(model=...)), if any
    own_data: str | None  # the caller's Dataset class (taolu.train(data=...)), if any
    slow_batchnorm: bool  # taolu re-measures BatchNorm statistics before each test
    best_val_acc: float | None  # the run's, for the header; None before training
    lr_measured: bool  # the lr came from (or, untrained, would come from) a range test


def facts_of_run(run_dir: str | Path) -> RunFacts:
    """The facts of a trained (or stopped) run, from its last checkpoint and summary.json."""
    run = RunDir(Path(run_dir))
    state = read_state(find_checkpoint(run.root, LAST_NAME))
    config = resolve_config({k: v for k, v in state.config.items() if k in FIELDS})
    summary = json.loads(run.summary.read_text(encoding="utf-8")) if run.summary.is_file() else {}
    preprocessing = Preprocessing.from_dict(state.preprocessing)
    if config.data.startswith(USER_PREFIX):  # the caller's Datasets: only what the run kept
        bundle = _stand_in_bundle(state.classes, preprocessing)
    else:
        bundle = _load_bundle(config)
    network = None
    if not config.model.startswith(USER_PREFIX):
        network = _network(config, bundle, state.model_spec)
    precision = summary.get("precision") or _precision(config)
    lr_auto = summary.get("lr_auto")
    return _gather(
        config,
        f"run {run.root}",
        bundle,
        preprocessing,
        network,
        precision,
        best_val_acc=summary.get("best_val_acc"),
        lr_measured=bool(lr_auto),
        train_images=summary.get("train_samples"),
    )


def facts_of_config(config: TrainConfig, chosen: Collection[str]) -> RunFacts:
    """The facts of a configuration before training: the data is read (not trained on), the
    network built and the recipe settled for the options not in `chosen`, as `taolu train`
    would; an lr the recipe leaves to a range test stays "auto"."""
    bundle = _load_bundle(config)
    data = DataOptions.taken_from(config)
    train_pipeline, eval_pipeline = sample_pipelines(data, bundle)
    preprocessing = measure_preprocessing(data, bundle, train_pipeline, eval_pipeline)
    torch.manual_seed(config.seed)
    network = _network(config, bundle, None)
    prepared = _prepared(config, bundle, preprocessing)
    recipe = settle_recipe(config, chosen, prepared, network, users_model=False, resumed=False)
    return _gather(
        recipe.config,
        "a configuration (taolu train --eject), not yet trained",
        bundle,
        preprocessing,
        network,
        _precision(config),
        best_val_acc=None,
        lr_measured=recipe.sweep_lr,
    )


def _load_bundle(config: TrainConfig) -> DataBundle:
    return load_data(
        config.data,
        val_fraction=config.val_fraction,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        channels=config.channels,
        data_root=config.data_root,
        image_column=config.image_column,
        label_column=config.label_column,
        val_shards=config.val_shards,
        shuffle_buffer=config.shuffle_buffer,
    )


def _stand_in_bundle(classes: list[str], preprocessing: Preprocessing) -> DataBundle:
    """What the run recorded of the caller's own Datasets, in place of the data: the classes,
    the image size and channels."""
    channels, size = preprocessing.channels, preprocessing.size
    empty = ImageTensors(torch.zeros(0, channels, *size, dtype=torch.uint8), torch.zeros(0))
    return DataBundle(
        train=empty,
        val=empty,
        classes=list(classes),
        channels=channels,
        size=size,
        digits=False,
        description="your own Datasets",
        user_data=True,
    )


def _network(config: TrainConfig, bundle: DataBundle, layers: list | None) -> nn.Module:
    # Weights are not loaded: the script loads them itself; only the shapes matter here.
    return build_model(
        config.model,
        bundle.channels,
        bundle.size,
        len(bundle.classes),
        weights=config.weights or None,
        layers=layers,
    )


def _precision(config: TrainConfig) -> str:
    return pick_precision(config.precision, pick_device(config.device)).name


def _prepared(
    config: TrainConfig, bundle: DataBundle, preprocessing: Preprocessing
) -> TrainingData:
    """The data as the recipe and the batch transforms see it (nothing decoded)."""
    return TrainingData(
        bundle,
        preprocessing,
        SkipLog(),
        workers=0,
        cache="off",
        per_sample=bool(config.transforms),
    )


def _gather(
    config: TrainConfig,
    origin: str,
    bundle: DataBundle,
    preprocessing: Preprocessing,
    network: nn.Module | None,
    precision: str,
    *,
    best_val_acc: float | None,
    lr_measured: bool,
    train_images: int | None = None,
) -> RunFacts:
    prepared = _prepared(config, bundle, preprocessing)
    train, _, _ = batch_transforms(config.augment, prepared, torch.device("cpu"), False)
    train_pipeline, eval_pipeline = sample_pipelines(DataOptions.taken_from(config), bundle)
    return RunFacts(
        config=config,
        origin=origin,
        classes=list(bundle.classes),
        train_images=train_images or len(bundle.train),
        channels=bundle.channels,
        size=tuple(bundle.size),
        mean=tuple(preprocessing.mean),
        std=tuple(preprocessing.std),
        shift=train.shift,
        flip=train.flip,
        train_transforms=train_pipeline.describe() if train_pipeline else None,
        eval_transforms=eval_pipeline.describe() if eval_pipeline else None,
        precision=precision,
        network=network,
        head=_head(network),
        own_model=config.model.removeprefix(USER_PREFIX) if network is None else None,
        own_data=config.data.removeprefix(USER_PREFIX) if bundle.user_data else None,
        slow_batchnorm=network is not None and slow_batchnorm(network),
        best_val_acc=best_val_acc,
        lr_measured=lr_measured,
    )


def _head(network: nn.Module | None) -> str | None:
    if network is None:
        return None
    try:
        return head_name(network)
    except ConfigError:  # no Linear layer: nothing for --freeze backbone to spare
        return None
