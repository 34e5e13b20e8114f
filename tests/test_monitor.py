"""--monitor picks the best checkpoint by any metric; --patience stops a run that has stopped
improving."""

from __future__ import annotations

import pytest

import taolu
from taolu.checkpoint import load_checkpoint

QUIET = dict(verbose=False, progress=False, data="digits")


@pytest.mark.parametrize(
    ("monitor", "pick"),
    [("val/loss", min), ("val/acc", max), ("train/loss", min)],
)
def test_the_best_checkpoint_is_the_monitored_metrics_best_epoch(tmp_path, monitor, pick):
    result = taolu.train(epochs=4, monitor=monitor, out=str(tmp_path), **QUIET)
    key = monitor.replace("/", "_")
    values = [row[key] for row in result.history]
    expected = values.index(pick(values)) + 1  # the first epoch reaching the best value
    assert result.summary["best_epoch"] == expected
    assert result.summary["monitor"] == monitor
    assert load_checkpoint(result.best_checkpoint)["epoch"] == expected
    assert result.best_val_acc == result.history[expected - 1]["val_acc"]


def test_patience_stops_a_run_that_no_longer_improves(tmp_path):
    # A learning rate this small leaves the weights (and so every metric) where they started.
    result = taolu.train(model="tudui", lr=1e-9, epochs=10, patience=2, out=str(tmp_path), **QUIET)
    assert result.summary["stopped_early"] is True
    assert result.summary["epochs_completed"] == 3  # the best epoch, then 2 without better
    assert result.summary["best_epoch"] == 1
    assert len(result.history) == 3


def test_without_patience_every_epoch_runs(tmp_path):
    result = taolu.train(model="tudui", lr=1e-9, epochs=4, out=str(tmp_path), **QUIET)
    assert result.summary["stopped_early"] is False
    assert result.summary["epochs_completed"] == 4


def test_an_unknown_monitor_is_refused():
    with pytest.raises(taolu.ConfigError, match="monitor"):
        taolu.train(monitor="val/f1", **QUIET)
