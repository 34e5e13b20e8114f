"""Resume: an interrupted run continued from its last checkpoint ends exactly where an
uninterrupted one does; its records have no gaps or duplicates; run directories are never
overwritten."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import taolu
import taolu.run.routine as routine

EPOCHS = 4
CLASSES = [str(d) for d in range(10)]


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def scalars(run_dir):
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def next_second():
    """TensorBoard orders a run's event files by name: creation time in whole seconds, then a
    per-process counter compared as text. A resume in the same process and the same second
    as the interrupted start could sort before it (counter '10' < '9'), which no real
    Ctrl-C-then-resume does; start the resumed writer in a later second."""
    time.sleep(1.02 - time.time() % 1)


def final_weights(run_dir):
    return torch.load(run_dir / "weights" / "last.pt", weights_only=True)["model"]


def assert_same_weights(first, second, tolerance=1e-6):
    assert first.keys() == second.keys()
    for key in first:
        difference = (first[key].double() - second[key].double()).abs().max().item()
        assert difference <= tolerance, f"{key} differs by {difference}"


def assert_clean_records(run_dir, epochs):
    rows = read_metrics(run_dir)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    events = scalars(run_dir)
    for tag in ("val/acc", "val/loss", "train/acc"):
        assert len(events[tag]) == epochs, tag
        steps = [event.step for event in events[tag]]
        assert steps == sorted(set(steps)), tag
    for tag in ("train/loss", "train/lr", "train/grad_norm"):  # one per optimizer step
        steps = [event.step for event in events[tag]]
        assert len(steps) == len(set(steps)), f"{tag} has duplicate steps"
        assert steps == list(range(1, len(steps) + 1)), tag
    # val/acc in TensorBoard is the metrics.csv column, epoch by epoch
    for event, row in zip(events["val/acc"], rows, strict=True):
        assert event.value == pytest.approx(float(row["val_acc"]), abs=1e-6)


def interrupt_third_evaluation(monkeypatch, start_run):
    """Run `start_run()` with Ctrl-C raised as the third epoch's evaluation begins: two
    epochs are checkpointed, the third's training steps are logged but not saved."""
    real_evaluate = routine.evaluate
    calls = []

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(routine, "evaluate", evaluate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        start_run()
    monkeypatch.setattr(routine, "evaluate", real_evaluate)


@pytest.fixture
def digit_parts(digits_arrays, array_dataset):
    """Factories for a 400-image training Dataset and a fixed 200-image validation Dataset
    over the embedded digits (uint8 numpy images, as a user's Dataset would give)."""
    images, labels = digits_arrays

    def train_data(**kwargs):
        return array_dataset(images[:400], labels[:400], **kwargs)

    def val_data(**kwargs):
        return array_dataset(images[400:600], labels[400:600], **kwargs)

    return train_data, val_data


def test_interrupted_user_dataset_run_resumes_to_identical_weights(tmp_path, digit_parts, quiet):
    train_data, val_data = digit_parts
    common = dict(
        classes=CLASSES,
        epochs=EPOCHS,
        batch_size=50,
        workers=0,
        device="cpu",
        out=str(tmp_path),
        **quiet,
    )
    reference = taolu.train(data=train_data(), val_data=val_data(), name="whole", **common)

    # Ctrl-C half way through the third epoch's validation pass: the third epoch's
    # train/loss steps are already logged, its checkpoint is not yet written.
    stopper = val_data(interrupt_after=2 * 200 + 100)
    with pytest.raises(KeyboardInterrupt):
        taolu.train(data=train_data(), val_data=stopper, name="cut", **common)
    run_dir = tmp_path / "cut"
    assert torch.load(run_dir / "weights" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (run_dir / "summary.json").exists()

    next_second()
    resumed = taolu.train(
        resume=run_dir, data=train_data(), val_data=val_data(), classes=CLASSES, workers=0, **quiet
    )
    assert resumed.run_dir == run_dir
    assert len(resumed.history) == EPOCHS
    assert resumed.history[-1]["val_loss"] == pytest.approx(
        reference.history[-1]["val_loss"], abs=1e-6
    )
    assert resumed.best_val_acc == pytest.approx(reference.best_val_acc, abs=1e-9)
    assert_same_weights(final_weights(run_dir), final_weights(reference.run_dir))
    for key in ("train_loss", "val_loss", "val_acc", "lr"):
        assert [row[key] for row in resumed.history] == pytest.approx(
            [row[key] for row in reference.history], abs=1e-6
        ), key
    assert_clean_records(run_dir, EPOCHS)


def test_interrupted_embedded_run_resumes_to_identical_weights(tmp_path, monkeypatch, quiet):
    """The default path (embedded data sliced in memory): stop with Ctrl-C during the third
    epoch's evaluation, then resume."""
    common = dict(data="digits", epochs=EPOCHS, device="cpu", out=str(tmp_path), **quiet)
    reference = taolu.train(name="whole", **common)

    interrupt_third_evaluation(monkeypatch, lambda: taolu.train(name="cut", **common))
    run_dir = tmp_path / "cut"
    assert len(read_metrics(run_dir)) == 2

    next_second()
    resumed = taolu.train(resume=run_dir, **quiet)
    assert resumed.history[-1]["val_loss"] == pytest.approx(
        reference.history[-1]["val_loss"], abs=1e-6
    )
    assert_same_weights(final_weights(run_dir), final_weights(reference.run_dir))
    assert_clean_records(run_dir, EPOCHS)
    summary = resumed.summary
    assert summary["epochs_completed"] == EPOCHS


def test_resume_with_more_epochs_continues_the_records(tmp_path, quiet):
    first = taolu.train(data="digits", epochs=2, out=str(tmp_path), **quiet)
    next_second()
    resumed = taolu.train(resume=first.run_dir, epochs=3, **quiet)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    assert_clean_records(first.run_dir, 3)


def test_resume_of_a_finished_run_is_refused(tmp_path, quiet):
    first = taolu.train(data="digits", epochs=2, out=str(tmp_path), **quiet)
    with pytest.raises(taolu.ConfigError, match="epochs"):
        taolu.train(resume=first.run_dir, **quiet)


@pytest.mark.parametrize(
    ("option", "value"),
    [("lr", 0.5), ("batch_size", 16), ("model", "lenet5"), ("seed", 3), ("data", "mnist5k")],
)
def test_resume_refuses_to_change_what_defines_the_run(
    tmp_path, quiet, tree_snapshot, option, value
):
    first = taolu.train(data="digits", epochs=1, out=str(tmp_path), **quiet)
    before = tree_snapshot(first.run_dir)
    with pytest.raises(taolu.ConfigError) as caught:
        taolu.train(resume=first.run_dir, epochs=2, **{option: value}, **quiet)
    assert option in str(caught.value)
    assert tree_snapshot(first.run_dir) == before


def _flat_net(hidden):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )


@pytest.fixture
def users_first_run(tmp_path, array_dataset, easy_images, quiet):
    """One finished epoch of a user's own net on a user's Dataset, and the parts to resume it."""
    images, labels = easy_images(24, seed=0, size=8)
    parts = dict(
        data=array_dataset(images, labels),
        val_data=array_dataset(images, labels),
        classes=["ant", "bee"],
        workers=0,
        **quiet,
    )
    first = taolu.train(model=_flat_net(8), epochs=1, out=str(tmp_path), **parts)
    return first, parts


def test_resume_of_a_users_model_needs_the_model(users_first_run):
    first, parts = users_first_run
    with pytest.raises(taolu.ConfigError, match="model"):
        taolu.train(resume=first.run_dir, epochs=2, **parts)
    resumed = taolu.train(resume=first.run_dir, model=_flat_net(8), epochs=2, **parts)
    assert len(resumed.history) == 2


def test_resume_with_a_different_model_is_a_taolu_error(users_first_run):
    first, parts = users_first_run
    with pytest.raises(taolu.TaoluError):
        taolu.train(resume=first.run_dir, model=_flat_net(16), epochs=2, **parts)


# --------------------------------------------------------------------------- run directories


def test_run_names_go_train_train2_train3(tmp_path, quiet):
    names = [
        taolu.train(data="digits", epochs=1, out=str(tmp_path), **quiet).run_dir.name
        for _ in range(3)
    ]
    assert names == ["train", "train2", "train3"]


def test_existing_run_directory_is_never_overwritten(tmp_path, quiet, tree_snapshot):
    first = taolu.train(data="digits", epochs=1, name="mine", out=str(tmp_path), **quiet)
    before = tree_snapshot(first.run_dir)
    assert "weights/best.pt" in before and "metrics.csv" in before
    with pytest.raises(taolu.ConfigError, match="mine"):
        taolu.train(data="digits", epochs=1, name="mine", seed=1, out=str(tmp_path), **quiet)
    assert tree_snapshot(first.run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_named_folder_with_a_users_file_is_not_used(tmp_path, quiet, tree_snapshot):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(taolu.ConfigError):
        taolu.train(data="digits", epochs=1, name="mine", out=str(tmp_path), **quiet)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_resume_with_more_epochs_shows_no_torch_warning(tmp_path, quiet):
    import warnings

    first = taolu.train(data="digits", epochs=1, out=str(tmp_path), **quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        taolu.train(resume=first.run_dir, epochs=2, **quiet)
    scheduler_warnings = [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert not scheduler_warnings


@pytest.mark.parametrize(
    "options",
    [
        dict(
            ema=0.9,
            scheduler="cosine",
            warmup_epochs=1,
            accumulate=2,
            clip_grad=1.0,
            mixup=0.2,
            cutmix=1.0,
            sampler="balanced",
            class_weights="auto",
        ),
        dict(scheduler="plateau", plateau_patience=0, monitor="val/loss", optimizer="adamw"),
    ],
    ids=["ema-cosine-warmup-accumulate-clip-mix-balanced", "plateau-adamw"],
)
def test_resume_is_exact_with_every_stateful_option_on(tmp_path, monkeypatch, quiet, options):
    """EMA, the schedule (warm-up, plateau), accumulation, mixup/cutmix draws and the
    balanced sampler all continue exactly after an interruption."""
    common = dict(data="digits", epochs=EPOCHS, device="cpu", out=str(tmp_path), **options)
    reference = taolu.train(name="whole", **common, **quiet)

    interrupt_third_evaluation(monkeypatch, lambda: taolu.train(name="cut", **common, **quiet))
    run_dir = tmp_path / "cut"

    next_second()
    resumed = taolu.train(resume=run_dir, **quiet)
    ours = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    theirs = torch.load(reference.run_dir / "weights" / "last.pt", weights_only=True)
    assert_same_weights(ours["model"], theirs["model"])
    if "ema_model" in theirs:
        assert_same_weights(ours["ema_model"], theirs["ema_model"])
        assert ours["ema_updates"] == theirs["ema_updates"]
    assert ours["scheduler"] == theirs["scheduler"]
    for key in ("train_loss", "val_loss", "val_acc", "lr", "val_macro_f1"):
        assert [row[key] for row in resumed.history] == pytest.approx(
            [row[key] for row in reference.history], abs=1e-6
        ), key
    assert_clean_records(run_dir, EPOCHS)


def test_sigterm_mid_epoch_saves_a_last_checkpoint_that_resumes_exactly(
    tmp_path, digit_parts, array_dataset, digits_arrays, quiet
):
    """SIGTERM in the middle of epoch 3: the run stops after that optimizer step, saves
    last.pt with where the epoch stands, says how to resume; the resumed run ends on the
    uninterrupted run's weights, with no step missing or repeated in the records."""
    train_data, val_data = digit_parts
    images, labels = digits_arrays

    class TermAt(type(train_data())):
        def __getitem__(self, index):
            self.fetched = getattr(self, "fetched", 0) + 1
            # (mean/std and the sample grid read some first; 400 an epoch then)
            if self.fetched == 400 + 2 * 400 + 130:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__getitem__(index)

    common = dict(
        classes=CLASSES, epochs=EPOCHS, batch_size=50, workers=0, out=str(tmp_path), **quiet
    )
    reference = taolu.train(data=train_data(), val_data=val_data(), name="whole", **common)
    with pytest.raises(taolu.TrainingInterrupted) as stopped:
        taolu.train(
            data=TermAt(images[:400], labels[:400]), val_data=val_data(), name="cut", **common
        )
    run_dir = tmp_path / "cut"
    assert f"Resume with: taolu train --resume {run_dir}" in str(stopped.value)
    assert "SIGTERM in epoch 3" in str(stopped.value)
    assert stopped.value.exit_code == 143
    saved = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    done = saved["partial_epoch"]["first_batch"]  # batches of epoch 3 already trained
    assert saved["epoch"] == 2 and 0 < done < 8 and saved["step"] == 2 * 8 + done
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back

    next_second()
    resumed = taolu.train(
        resume=run_dir, data=train_data(), val_data=val_data(), classes=CLASSES, workers=0, **quiet
    )
    assert_same_weights(final_weights(run_dir), final_weights(reference.run_dir))
    for key in ("train_loss", "val_loss", "val_acc"):
        assert [row[key] for row in resumed.history] == pytest.approx(
            [row[key] for row in reference.history], abs=1e-6
        ), key
    assert_clean_records(run_dir, EPOCHS)


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_saves_and_says_how_to_resume(tmp_path):
    command = [sys.executable, "-m", "taolu", "train", "--data", "digits", "--epochs", "60"]
    command += ["--no-progress", "--out", str(tmp_path), "--name", "run"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch   1/"):
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "stopping after the current step" in stderr
    assert f"Resume with: taolu train --resume {tmp_path / 'run'}" in stderr
    assert "Traceback" not in stderr
    saved = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1
