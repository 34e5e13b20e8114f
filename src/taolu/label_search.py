"""`taolu find-label-issues`: a run's training and validation images pooled, k fold models
trained with the run's own recipe (each an ordinary run in a scratch folder of the run
directory, removed after), each predicting the fold it never saw; confident learning
(label_issues.py) on those out-of-sample probabilities -> RUN/label_issues.csv."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from taolu.checkpoint import find_checkpoint, read_state
from taolu.classifier import load_classifier
from taolu.config import FIELDS, TrainConfig
from taolu.data.bundle import DataBundle, ImageTensors
from taolu.data.embedded import LOADERS, stratified_split
from taolu.data.pipeline import DataOptions, read_bundle
from taolu.data.sources import DISK_SET, EMBEDDED, ImageFiles, data_kind
from taolu.data.user_data import NamedSamples
from taolu.engine.precision import pick_device
from taolu.errors import ConfigError, TrainingInterrupted
from taolu.inference import input_reader, probabilities_of
from taolu.label_issues import LabelIssue, assign_folds, find_label_issues, write_label_issues
from taolu.layout import BEST_NAME, LABEL_FOLDS_DIR, RunDir
from taolu.models.spec import is_spec_path
from taolu.rebuild import rebuild_network
from taolu.run.routine import run_training
from taolu.run.setup import UserParts
from taolu.train_options import (
    USER_PREFIX,
    build_train_config,
    check_users_parts,
    refuse_model_named_by_checkpoint,
)
from taolu.train_state import TrainState

logger = logging.getLogger("taolu")
PREDICT_BATCH = 256


@dataclass(frozen=True)
class Pool:
    """A run's training and validation samples as one list: the samples (train first), their
    given labels and what each is called (its file, or its index in the data set)."""

    bundle: DataBundle
    samples: ImageTensors | Dataset
    labels: torch.Tensor
    names: list[str]

    def part(self, index: torch.Tensor) -> ImageTensors | Dataset:
        if isinstance(self.samples, ImageTensors):
            return ImageTensors(self.samples.images[index], self.samples.labels[index])
        return Subset(self.samples, index.tolist())


@dataclass
class LabelSearch:
    """What `find_label_issues` found: label_issues.csv's rows, most suspect first."""

    path: Path  # RUN/label_issues.csv
    issues: list[dict[str, Any]]  # path, given, suggested, score
    samples: int  # images scored (the pooled splits, less any that could not be read)
    folds: int
    fold_accuracy: list[float]  # each fold model's accuracy on the fold it never saw
    report: Path | None = None  # report.html, redrawn with the list where the run had one


def _split_labels(split: Dataset | ImageTensors) -> list[int]:
    if isinstance(split, ImageTensors):
        return split.labels.tolist()
    if isinstance(split, ImageFiles):
        return list(split.targets)
    return [int(split[index][1]) for index in range(len(split))]  # the user's Dataset


def _split_names(split: Dataset | ImageTensors, part: str) -> list[str]:
    """What each sample is called: its file, its index in the user's Dataset (`part` before
    it when the two splits are separate Datasets), or `part[index]` (a set on disk)."""
    if isinstance(split, ImageTensors) and split.names is not None:
        return list(split.names)
    if isinstance(split, ImageFiles):
        return [str(path) for path, _ in split.files]
    if isinstance(split, NamedSamples):
        named = [split.where(index) for index in range(len(split))]
        return [f"{part} {name}" for name in named] if part else named
    return [f"{part}[{index}]" for index in range(len(split))]


def pool_splits(bundle: DataBundle, config: TrainConfig, separate_val: bool = False) -> Pool:
    """Both splits of the run's data, read once, as one Pool (training samples first). An
    embedded set's samples are named by their row in the set (its split recomputed as
    load_embedded makes it), a set on disk's by its split and index; with `separate_val`
    (the user's own val_data), that Dataset's samples are told apart as `val_data ...`."""
    train, val = bundle.train, bundle.val
    if isinstance(train, ImageTensors) and isinstance(val, ImageTensors):
        samples = ImageTensors(
            torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels])
        )
    else:
        samples = ConcatDataset([train, val])
    labels = torch.tensor(_split_labels(train) + _split_labels(val), dtype=torch.long)
    kind = None if config.data.startswith(USER_PREFIX) else data_kind(config.data)
    if kind == EMBEDDED:
        rows = torch.cat(stratified_split(LOADERS[config.data]()[1], config.val_fraction))
        names = [f"{config.data}[{row}]" for row in rows.tolist()]
    elif kind == DISK_SET:  # its own train and test splits
        names = _split_names(train, f"{config.data} train") + _split_names(
            val, f"{config.data} test"
        )
    else:
        names = _split_names(train, "") + _split_names(val, "val_data" if separate_val else "")
    return Pool(bundle, samples, labels, names)


@contextlib.contextmanager
def _fold_warnings_hidden():
    """A fold run's own findings (small validation split, overfitting) are about a scratch
    run the user never sees; the data's problems were already told when it was read."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fresh_network(state: TrainState, model: nn.Module | None) -> nn.Module | None:
    """Each fold starts from scratch: a copy of the user's (untrained) module, or a layer list
    rebuilt from the list the checkpoint holds (never from the file its config names); None
    for nets taolu builds by name."""
    if model is not None:
        return copy.deepcopy(model)
    if is_spec_path(state.config.get("model", "")):
        return rebuild_network(state.to_dict())
    return None


def fold_config(
    saved: dict[str, Any], parts: UserParts, epochs: int | None, device: str | None
) -> TrainConfig:
    """The run's own options as it used them (its recipe's choices included), for a quiet
    fold run without a report; `epochs` and `device` when given."""
    options = {key: value for key, value in saved.items() if key in FIELDS}
    options.update(report=False, histograms=0, lr_find=False, verbose=False, name="")
    if epochs is not None:
        options["epochs"] = epochs
    if device is not None:
        options["device"] = device
    return build_train_config(None, options, parts=parts)


def _held_out_probabilities(
    result_dir: Path, network: nn.Module | None, pool: Pool, held: torch.Tensor, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fold model's probabilities for the held-out samples it can read, read as predict
    reads them: (indices into the pool, probabilities). The fold's best checkpoint: its
    epoch is picked by accuracy over the whole held-out fold, which cannot single out one
    label (measured on the tests' colour folders: the last epoch's sharper model found one
    of two wrong files, the best found both). Uncalibrated: the fold's temperature was
    fitted on these very labels, the wrong ones included, and softens the whole fold
    (measured: a fold holding two flipped images came out below the class thresholds)."""
    classifier = load_classifier(
        result_dir, checkpoint="best", model=network, device=pick_device(device)
    )
    classifier = dataclasses.replace(classifier, temperature=1.0)
    read = input_reader(classifier)
    kept, outputs = [], []
    for start in range(0, len(held), PREDICT_BATCH):
        images, indices = [], []
        for index in held[start : start + PREDICT_BATCH].tolist():
            image = pool.samples[index][0]
            loaded, _ = read(image) if image is not None else (None, None)
            if loaded is not None:
                images.append(loaded)
                indices.append(index)
        if images:
            outputs.append(probabilities_of(classifier, images))
            kept += indices
    if not outputs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, len(pool.bundle.classes))
    return torch.tensor(kept, dtype=torch.long), torch.cat(outputs)


@dataclass(frozen=True)
class FoldPlan:
    """What every fold run shares: the run's state, the user's own (untrained) module if
    any, the parts and options each fold trains with, the pool and each sample's fold."""

    state: TrainState
    model: nn.Module | None
    parts: UserParts
    config: TrainConfig
    pool: Pool
    fold_of: torch.Tensor


def _train_and_score_fold(
    plan: FoldPlan, fold: int, scratch: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Train fold `fold`'s model on every other fold (an ordinary run in `scratch`) and
    score the fold it never saw: (indices into the pool, probabilities, images trained)."""
    pool = plan.pool
    held = (plan.fold_of == fold).nonzero().flatten()
    kept = (plan.fold_of != fold).nonzero().flatten()
    splits = dataclasses.replace(
        pool.bundle, train=pool.part(kept), val=pool.part(held), listing=None
    )
    network = _fresh_network(plan.state, plan.model)
    parts = dataclasses.replace(plan.parts, model=network, splits=splits)
    options = dataclasses.replace(plan.config, out=scratch, name=f"fold{fold + 1}")
    try:
        with _fold_warnings_hidden():
            result = run_training(options, parts, chosen=set(FIELDS))
    except TrainingInterrupted as stopped:  # its checkpoint goes with the scratch folder
        raise TrainingInterrupted(
            f"label search stopped in fold {fold + 1}; nothing was written (run it again to "
            "start over)",
            stopped.exit_code,
        ) from None
    trained = result.model if network is not None else None
    indices, found = _held_out_probabilities(
        result.run_dir, trained, pool, held, plan.config.device
    )
    return indices, found, len(kept)


def find_label_issues_in_run(
    run: str | Path,
    *,
    folds: int = 4,
    epochs: int | None = None,
    data: Dataset | None = None,
    val_data: Dataset | None = None,
    model: nn.Module | None = None,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> LabelSearch:
    """Out-of-sample probabilities for every image of the run's two splits from `folds` fold
    models, then confident learning; writes RUN/label_issues.csv. A run on your own Dataset
    or nn.Module needs them handed back (the module untrained: each fold trains a copy)."""
    if not 2 <= folds <= 20:
        raise ConfigError(f"folds: {folds} is not allowed; use 2 to 20")
    run_dir = Path(run).expanduser()
    state = read_state(find_checkpoint(run_dir, BEST_NAME))
    check_users_parts(state.config, data, model)
    refuse_model_named_by_checkpoint(state, None, UserParts(model=model))
    classes = list(state.classes)
    parts = UserParts(_fresh_network(state, model), data, val_data, classes)
    config = fold_config(state.config, parts, epochs, device)
    bundle, _, _, _ = read_bundle(
        DataOptions.taken_from(config),
        train_data=data,
        val_data=val_data,
        classes=classes,
        manifest=RunDir(run_dir).manifest,
    )
    pool = pool_splits(bundle, config, separate_val=val_data is not None)
    plan = FoldPlan(
        state, model, parts, config, pool, assign_folds(pool.labels, folds, config.seed)
    )
    probabilities = torch.zeros(len(pool.labels), len(bundle.classes))
    scored = torch.zeros(len(pool.labels), dtype=torch.bool)
    accuracy = []
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=f"{LABEL_FOLDS_DIR}-") as scratch:
        for fold in range(folds):
            indices, found, trained = _train_and_score_fold(plan, fold, scratch)
            probabilities[indices], scored[indices] = found, True
            agree = (found.argmax(1) == pool.labels[indices]).float()
            accuracy.append(agree.mean().item() if len(agree) else float("nan"))
            say(
                f"fold {fold + 1}/{folds}: trained on {trained} images, scored {len(indices)}; "
                f"accuracy on them (given labels) {accuracy[-1]:.4f}"
            )
    search = _write_issues(run_dir, pool, probabilities, scored, folds, accuracy)
    if RunDir(run_dir).report.is_dir():  # the run's page shows the list: kept up to date
        from taolu.track.report import write_report

        search.report = write_report(run_dir)
    return search


def _write_issues(
    run_dir: Path,
    pool: Pool,
    probabilities: torch.Tensor,
    scored: torch.Tensor,
    folds: int,
    accuracy: list[float],
) -> LabelSearch:
    rows = scored.nonzero().flatten()
    found: list[LabelIssue] = find_label_issues(probabilities[rows], pool.labels[rows])
    names = [pool.names[index] for index in rows.tolist()]
    path = RunDir(run_dir).label_issues
    classes = pool.bundle.classes
    write_label_issues(path, found, names, classes)
    issues = [
        {
            "path": names[issue.index],
            "given": classes[issue.given],
            "suggested": classes[issue.suggested],
            "score": issue.score,
        }
        for issue in found
    ]
    return LabelSearch(path, issues, len(rows), folds, accuracy)
