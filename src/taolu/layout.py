"""The run directory by name: every file and folder a run writes, in one place, for training,
resume, eval, predict, export and the report alike."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from taolu.errors import ConfigError

CONFIG_NAME = "config.yaml"  # the resolved TrainConfig
METRICS_NAME = "metrics.csv"  # one row per epoch
PER_CLASS_NAME = "per_class.csv"  # one row per epoch and class
SUMMARY_NAME = "summary.json"  # written once the run ends
MANIFEST_NAME = "split.json"  # the files of each split of folder and CSV data
CHECKPOINT_DIR = "weights"
BEST_NAME = "best.pt"  # the monitored metric's best epoch
LAST_NAME = "last.pt"  # the latest epoch (or the step a stop was asked at)
REPORT_FOLDER = "report"
LR_FIND_CSV = "lr_find.csv"
LR_FIND_PLOT = "lr_find.png"
EXPORT_DIR = "export"
VAL_PREDICTIONS_NAME = "val_predictions.csv"  # the best model on each validation image
LABEL_ISSUES_NAME = "label_issues.csv"  # `taolu find-label-issues`: likely mislabelled images
LABEL_FOLDS_DIR = "label_folds"  # its fold runs while they train (removed after)
EJECT_NAME = "eject.py"  # `taolu eject`: the run as a standalone plain PyTorch script
MLFLOW_NAME = "mlflow.json"  # --track mlflow: the store and MLflow run this run logs to


@dataclass(frozen=True)
class RunDir:
    """The paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_NAME

    @property
    def per_class(self) -> Path:
        return self.root / PER_CLASS_NAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def best(self) -> Path:
        return self.root / CHECKPOINT_DIR / BEST_NAME

    @property
    def last(self) -> Path:
        return self.root / CHECKPOINT_DIR / LAST_NAME

    @property
    def report(self) -> Path:
        return self.root / REPORT_FOLDER

    @property
    def val_predictions(self) -> Path:
        return self.root / VAL_PREDICTIONS_NAME

    @property
    def label_issues(self) -> Path:
        return self.root / LABEL_ISSUES_NAME

    @property
    def eject(self) -> Path:
        return self.root / EJECT_NAME

    @property
    def mlflow(self) -> Path:
        return self.root / MLFLOW_NAME


def check_run_place(out: str, name: str) -> None:
    """Refuse, before any data is read, a place where a new run cannot be made: an --out that
    is a file (or lies under one), and with --name, an OUT/NAME that already exists: a file,
    a folder holding a run (continue that with --resume), an empty folder, or someone else's
    folder. (--name itself is a plain folder name: config.py checks that.)"""
    root = Path(out).expanduser()
    existing = next((folder for folder in (root, *root.parents) if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == root else f" (its folder {existing} is a file)"
        raise ConfigError(
            f"option 'out': {out} cannot hold runs{where}; --out names a folder (default runs)"
        )
    if name:
        run_dir = root / name
        if os.path.lexists(run_dir):
            raise _taken(run_dir)


def _taken(run_dir: Path) -> ConfigError:
    """Why an existing OUT/NAME is not made a new run's directory, and what to do instead."""
    if not run_dir.is_dir() or run_dir.is_symlink():
        kind = "a link" if run_dir.is_symlink() else "a file"
        return ConfigError(
            f"run directory {run_dir} is {kind}, not a new folder; choose another --name"
        )
    layout = RunDir(run_dir)
    if layout.config.is_file() or layout.last.is_file():
        return ConfigError(
            f"run directory {run_dir} already holds a run; choose another --name, "
            f"or continue it with --resume {run_dir}"
        )
    try:
        held = sorted(entry.name for entry in run_dir.iterdir())
    except OSError as error:
        held = [f"unreadable: {error.strerror or error}"]
    what = f"holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}" if held else "is empty"
    return ConfigError(
        f"run directory {run_dir} already exists and is not a taolu run (it {what}); taolu "
        "makes each run's folder itself, so that no two runs (and none of your files) ever "
        "share one: choose another --name"
    )


def new_run_dir(out: str, name: str) -> Path:
    """OUT/NAME, made here and now by one mkdir that fails if it exists, so two runs started
    at the same moment never share a folder. Without a name: the first of train, train2,
    train3, ... that this mkdir makes. An existing folder is never reused (only --resume
    continues a run)."""
    check_run_place(out, name)
    root = Path(out).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot make the runs folder {root}: {error.strerror or error}"
        ) from None
    names = [name] if name else ["train" if n == 1 else f"train{n}" for n in range(1, 100_000)]
    for candidate in names:
        run_dir = root / candidate
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if name:  # taken since check_run_place looked: another run chose it too
                raise _taken(run_dir) from None
        except OSError as error:
            raise ConfigError(
                f"cannot make the run directory {run_dir}: {error.strerror or error}"
            ) from None
    raise ConfigError(f"no free run directory name left under {root}")
