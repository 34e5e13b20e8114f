"""`--track mlflow` against real local MLflow stores (SQLite files in tmp_path),
read back with MLflow's own client: the options as parameters, one metric point per epoch,
the summary, the run's files and exported model as artifacts, a resumed run continuing its
MLflow run, and a store that fails leaving the run itself intact."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import taolu

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

QUIET = dict(data="digits", verbose=False, progress=False, report=False)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory of its own: MLflow puts a SQLite store's artifacts in ./mlruns."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    return tmp_path


def the_run(uri: str, experiment: str = "taolu"):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {uri}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def artifact_paths(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, folder):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


@pytest.mark.slow
def test_sqlite_store_holds_params_epochs_summary_report_and_model(here, offline):
    uri = f"sqlite:///{here / 'store.db'}"
    result = taolu.train(
        epochs=2,
        out=str(here / "runs"),
        track="mlflow",
        mlflow_uri=uri,
        **{**QUIET, "report": True},
    )
    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.run_dir.name
    params = run.data.params
    assert (params["model"], params["epochs"], params["data"]) == ("fastcnn", "2", "digits")
    assert params["lr"] == "0.05"  # the resolved config: the recipe's lr, not "auto"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [point.step for point in history] == [1, 2]
    assert [point.value for point in history] == pytest.approx(
        [row["val_acc"] for row in result.history]
    )
    assert run.data.metrics["summary/best_val_acc"] == pytest.approx(result.best_val_acc)
    files = artifact_paths(client, run.info.run_id)
    for expected in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "report/report.html",
        "weights/best.pt",
        "model/model.safetensors",
    ):
        assert expected in files
    assert not any("tfevents" in path or path.endswith("last.pt") for path in files)
    # The logged model is the one taolu predicts with.
    model_file = Path(client.download_artifacts(run.info.run_id, "model/model.safetensors"))
    assert taolu.predict(model_file, [np.zeros((8, 8), np.uint8)])[0]["predictions"]
    assert offline == []
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


@pytest.mark.slow
def test_store_from_the_environment_and_a_resumed_run_continues(here, monkeypatch):
    store = f"sqlite:///{here / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    first = taolu.train(epochs=1, out=str(here / "runs"), track="mlflow", **QUIET)
    record = json.loads((first.run_dir / "mlflow.json").read_text())
    taolu.train(resume=first.run_dir, epochs=2, verbose=False, progress=False)
    client, run = the_run(store)
    assert run.info.run_id == record["run_id"]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [point.step for point in history] == [1, 2]
    assert run.data.params["epochs"] == "1"  # MLflow keeps a parameter's first value


@pytest.mark.slow
def test_a_stopped_run_is_killed_in_mlflow_with_its_finished_epochs(
    here, digits_arrays, array_dataset
):
    images, labels = digits_arrays
    uri = f"sqlite:///{here / 'store.db'}"
    # Ctrl-C half way through the second epoch's validation pass (200 images an epoch).
    stopper = array_dataset(images[400:600], labels[400:600], interrupt_after=200 + 100)
    with pytest.raises(KeyboardInterrupt):
        taolu.train(
            data=array_dataset(images[:400], labels[:400]),
            val_data=stopper,
            classes=[str(digit) for digit in range(10)],
            epochs=3,
            workers=0,
            out=str(here / "runs"),
            track="mlflow",
            mlflow_uri=uri,
            **{key: value for key, value in QUIET.items() if key != "data"},
        )
    client, run = the_run(uri)
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1


def test_track_mlflow_without_mlflow_says_how_to_install(here, monkeypatch):
    import importlib.util

    from taolu.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'taolu\[mlflow\]'"):
        taolu.train(track="mlflow", out=str(here / "runs"), **QUIET)


def test_a_broken_store_warns_and_the_run_goes_on(here, caplog):
    blocker = here / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    with caplog.at_level(logging.WARNING, logger="taolu"):
        result = taolu.train(
            epochs=1,
            out=str(here / "runs"),
            track="mlflow",
            mlflow_uri=f"sqlite:///{blocker / 'store.db'}",
            **QUIET,
        )
    assert result.best_checkpoint.is_file() and len(result.history) == 1
    assert "MLflow tracking stopped" in caplog.text


def test_tracking_is_an_output_option_that_may_change_on_resume():
    from taolu.config import FIELDS, RESUMABLE_OPTIONS

    assert FIELDS["track"].default == "none"
    assert FIELDS["track"].metadata["choices"] == ("none", "mlflow")
    assert {"track", "mlflow_uri", "mlflow_experiment"} <= RESUMABLE_OPTIONS
