"""`--track mlflow`: a run's options, per-epoch metrics, summary, report and files logged to an
MLflow tracking store, so `mlflow ui` shows taolu's runs beside the team's others.

mlflow is imported here only, and only when a run asks for it (importing it takes ~2.5 s).
The store is the one the user names (`--mlflow-uri`, else MLFLOW_TRACKING_URI), else MLflow's
own local default in the working directory (sqlite:///mlflow.db, or ./mlruns where that
already holds runs): taolu itself never names a remote server, and MLflow's usage telemetry is
switched off unless the user set it. The tracker never stops a run: the first thing that
fails is warned about, and tracking stops there while training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from taolu.errors import ConfigError

logger = logging.getLogger("taolu")

INSTALL_HINT = "pip install 'taolu[mlflow]'"

MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
# Files of the run directory logged as artifacts; TensorBoard's event files and last.pt stay
# out (TensorBoard shows the former, and best.pt is the model predict and export use).
SKIPPED_FILES = ("events.out.tfevents", "last.pt", "mlflow.json", ".")


def check_track_option(track: str) -> None:
    """--track mlflow needs mlflow installed: refused before anything runs, not warned about
    after the first epoch (found without importing it)."""
    import importlib.util

    if track == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"option 'track': mlflow is not installed; {INSTALL_HINT}")


class MlflowTracker:
    """One taolu run as one MLflow run. Every method is a no-op once tracking has failed."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client: Any = None
        self.run_id: str | None = None
        self.failed = False

    def start(self, run_dir: Path, params: dict[str, Any], record: Path) -> None:
        """Begin the MLflow run (or continue the one `record` names, when a resumed taolu run
        logged to the same store before) and log the options as its parameters."""
        self._guard("start", self._start, run_dir, params, record)

    def _start(self, run_dir: Path, params: dict[str, Any], record: Path) -> None:
        # Before the import: MLflow reads this when it loads, and would otherwise ask a
        # server for its telemetry settings.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri or None)
        uri = self.client.tracking_uri
        earlier = _read_record(record)
        logged: dict[str, str] = {}
        if earlier.get("tracking_uri") == uri and earlier.get("run_id"):
            self.run_id = earlier["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        else:
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(self.experiment)
            )
            tags = {"mlflow.runName": run_dir.name, "mlflow.source.name": "taolu train"}
            tags["taolu.run_dir"] = str(run_dir.resolve())
            self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
            record.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}) + "\n")
        from mlflow.entities import Param

        # A resumed run keeps the values it started with (MLflow refuses to change a
        # parameter); an option changed on resume is in config.yaml and the report.
        fresh = [
            Param(key, _param_text(value)) for key, value in params.items() if key not in logged
        ]
        for first in range(0, len(fresh), 100):  # MLflow takes up to 100 per batch
            self.client.log_batch(self.run_id, params=fresh[first : first + 100])
        logger.info("taolu: tracking in MLflow run %s at %s", self.run_id, uri)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """The epoch's numbers (metrics.csv's columns) at step = the epoch."""
        self._guard("log the epoch", self._log_metrics, _numbers(row), int(row["epoch"]))

    def log_summary(self, summary: dict[str, Any]) -> None:
        """summary.json's numbers as metrics of the run (summary/best_val_acc, ...)."""
        numbers = _numbers(summary)
        numbers.update(
            {f"best_{key}": value for key, value in _numbers(summary["best_metrics"]).items()}
        )
        self._guard(
            "log the summary",
            self._log_metrics,
            {f"summary/{key}": value for key, value in numbers.items()},
            int(summary.get("epochs_completed", 0)),
        )

    def log_files(self, run_dir: Path, model_file: Path | None) -> None:
        """The run directory's records, its report and best checkpoint as artifacts, and the
        exported model under model/."""
        self._guard("log the run's files", self._log_files, run_dir, model_file)

    def end(self, status: str) -> None:
        """Close the MLflow run: FINISHED, FAILED or KILLED."""
        self._guard("close the run", self._end, status)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if not values or self.run_id is None:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in values.items()]
        for first in range(0, len(metrics), 1000):  # MLflow takes up to 1000 per batch
            self.client.log_batch(self.run_id, metrics=metrics[first : first + 1000])

    def _log_files(self, run_dir: Path, model_file: Path | None) -> None:
        if self.run_id is None:
            return
        for path, folder in _artifacts(run_dir):
            self.client.log_artifact(self.run_id, str(path), folder)
        if model_file is not None:
            self.client.log_artifact(self.run_id, str(model_file), "model")

    def _end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def _guard(self, what: str, action: Any, *arguments: Any) -> None:
        """Run `action`; when it fails, warn once and stop tracking (the run goes on)."""
        if self.failed:
            return
        try:
            action(*arguments)
        except Exception as error:  # a tracker's failure of any kind must not lose the run
            logger.warning(
                "MLflow tracking stopped: could not %s at %s: %s: %s; the run goes on, and "
                "its records are in its run directory as always",
                what,
                self.client.tracking_uri
                if self.client is not None
                else self.uri or "MLflow's default store",
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "",
            )
            self.failed = True


def _read_record(record: Path) -> dict[str, Any]:
    """RUN/mlflow.json: the store and MLflow run an earlier session of this run logged to."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[: MAX_PARAM_LENGTH - 3] + "..." if len(text) > MAX_PARAM_LENGTH else text


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among `values` (not the epoch, not booleans or nested tables)."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and key != "epoch"
        and math.isfinite(value)
    }


def _artifacts(run_dir: Path) -> Iterable[tuple[Path, str | None]]:
    """(file, artifact folder) for each file of the run directory MLflow keeps."""
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or any(part.startswith(SKIPPED_FILES) for part in relative.parts):
            continue
        if relative.parts[0] == "export":  # logged once, as model/
            continue
        folder = str(relative.parent) if relative.parent != Path(".") else None
        yield path, folder
