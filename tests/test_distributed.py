"""Several processes with torchrun and DistributedDataParallel on the CPU (gloo): rank 0 alone
writes the run, and validation counts every sample exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import taolu

pytestmark = pytest.mark.slow

DIGITS_VAL = 359  # the embedded digits' fixed validation split


def run(command, cwd, timeout=300, env=None):
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "taolu", "train", "--nproc", "2", "--data", "digits"]
    command += ["--epochs", "2", "--name", "ddp", "--out", str(folder), "--no-progress"]
    result = run(command, folder)
    return folder / "ddp", result.stdout


def test_two_processes_train_with_ddp_and_rank_0_alone_writes(ddp_run):
    run_dir, stdout = ddp_run
    assert "torch.distributed.run --standalone --nproc_per_node=2" in stdout
    assert "batch 64 per process x 2 processes = 128 per optimizer step" in stdout
    assert stdout.count("taolu: best val acc") == 1  # the other process prints nothing
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "report" / "report.html").is_file()
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["best.pt", "last.pt"]


def test_distributed_evaluation_counts_every_sample_once(ddp_run):
    run_dir, _ = ddp_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_samples"] == DIGITS_VAL
    assert sum(row["support"] for row in summary["per_class"].values()) == DIGITS_VAL
    single = taolu.evaluate(run_dir, device="cpu")  # one process, the same weights
    assert single["samples"] == DIGITS_VAL
    assert single["acc"] == pytest.approx(summary["best_val_acc"], abs=1e-12)


def test_sync_bn_and_lr_find_are_refused_where_they_cannot_work(tmp_path, quiet):
    with pytest.raises(taolu.ConfigError, match="sync_bn"):
        taolu.train(data="digits", epochs=1, sync_bn=True, out=str(tmp_path), **quiet)
