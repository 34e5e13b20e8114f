"""The run directory by name: every file and folder a run writes, in one place, for training,
resume, eval, predict, export and the report alike."""

from __future__ import annotations

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


def new_run_dir(out: str, name: str) -> Path:
    """OUT/NAME, created empty. Without a name: the first free of train, train2, train3, ...
    A folder that already holds files is never reused: only --resume continues a run."""
    root = Path(out).expanduser()
    if name:
        run_dir = root / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"run directory {run_dir} already holds a run; choose another --name, "
                f"or continue it with --resume {run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    root.mkdir(parents=True, exist_ok=True)
    for number in range(1, 100_000):
        run_dir = root / ("train" if number == 1 else f"train{number}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                return run_dir
    raise ConfigError(f"no free run directory name left under {root}")
