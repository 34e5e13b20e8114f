"""--track: where a run is logged besides its run directory (MLflow), open for the run's whole
length, so that it also sees the report and the exported model, written after the records
close. Rank 0 alone tracks; a tracker's failure is a warning, never the run's end."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from taolu.config import TrainConfig
from taolu.errors import TrainingInterrupted

if TYPE_CHECKING:  # the module imports mlflow only when a run starts tracking
    from taolu.run.progress import TrainResult
    from taolu.run.setup import Run
    from taolu.track.mlflow_tracker import MlflowTracker

logger = logging.getLogger("taolu")


@contextlib.contextmanager
def open_tracking(config: TrainConfig, is_main: bool) -> Iterator[MlflowTracker | None]:
    """The run's MLflow tracker (None without --track mlflow, and in processes other than
    rank 0), whose MLflow run is closed FINISHED, KILLED (a stop) or FAILED however the run
    ends. It starts logging once open_records has made the run directory."""
    if config.track != "mlflow" or not is_main:
        yield None
        return
    from taolu.track.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(config.mlflow_uri, config.mlflow_experiment)
    try:
        yield tracker
    except (TrainingInterrupted, KeyboardInterrupt):
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")


def log_outcome(tracker: MlflowTracker | None, run: Run, result: TrainResult) -> None:
    """The run's files to the tracker, with its best weights exported as safetensors (to
    RUN/export/, where `taolu export` puts them) for the tracker's model/ folder."""
    if tracker is None:
        return
    tracker.log_files(result.run_dir, _exported_model(run, result.run_dir))


def _exported_model(run: Run, run_dir: Path) -> Path | None:
    """RUN/export/model.safetensors from the best checkpoint; None (with a warning) when the
    export fails, which leaves the run and its other files to be logged."""
    from taolu.errors import TaoluError
    from taolu.model_export import export

    try:
        # The network in memory is handed over, so a factory's or your own module exports too.
        return export(run_dir, format="safetensors", model=run.model.model).path
    except TaoluError as error:
        logger.warning("the model was not exported for MLflow: %s", error)
        return None
