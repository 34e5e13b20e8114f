"""`taolu tune`: a study of ordinary runs that goes on when run again, prunes a bad trial after
its first epoch, and refuses a bad search space naming the key. Tiny: digits, one or two
epochs, a handful of trials."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

import taolu
from taolu.errors import ConfigError
from taolu.tuning.space import read_space

optuna = pytest.importorskip("optuna")

QUIET_SPACE = {"lr": {"low": 0.01, "high": 0.1, "log": True}, "batch_size": [64, 128]}


def read_table(study_dir):
    with open(study_dir / "trials.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_a_study_of_ordinary_runs_goes_on_when_run_again(tmp_path, cli_main):
    study_dir = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(QUIET_SPACE))
    argv = ["tune", "--data", "digits", "--epochs", "1", "--space", space, "--out", study_dir]
    code, out, err = cli_main(*argv, "--trials", "2")
    assert code == 0, err
    rows = read_table(study_dir)
    assert [row["trial"] for row in rows] == ["0", "1"]
    assert [row["state"] for row in rows] == ["complete"] * 2
    assert rows[0]["baseline"] == "True" and rows[0]["lr"] == "default"
    assert {"lr", "batch_size"} <= set(rows[1])
    assert (study_dir / "trials.png").stat().st_size > 0
    # Each trial is an ordinary run that eval reads like any other.
    assert [row["run_dir"] for row in rows] == [
        str(study_dir / "trial-000"),
        str(study_dir / "trial-001"),
    ]
    evaluated = taolu.evaluate(study_dir / "trial-001")
    assert evaluated["acc"] == pytest.approx(float(rows[1]["value"]))
    assert taolu.inspect(study_dir / "trial-001")["images"] > 0
    best = max(rows, key=lambda row: float(row["value"]))
    command = (study_dir / "best_command.txt").read_text().strip()
    assert command in out
    assert command.startswith("taolu train --data digits --epochs 1")
    if best["baseline"] != "True":
        assert f"--batch-size {best['batch_size']}" in command

    # Run again with a larger total: only the missing trial runs; the first two stay.
    result = taolu.tune(
        data="digits", epochs=1, space=space, trials=3, out=study_dir, pruner="none"
    )
    again = read_table(study_dir)
    assert len(again) == 3 and again[:2] == rows
    assert result.best_value == max(float(row["value"]) for row in again)
    # The same total again runs nothing; other fixed options are refused, naming them.
    assert len(taolu.tune(data="digits", epochs=1, space=space, trials=3, out=study_dir).trials)
    assert len(read_table(study_dir)) == 3
    with pytest.raises(ConfigError, match=r"other options \(epochs\)"):
        taolu.tune(data="digits", epochs=2, space=space, trials=4, out=study_dir)


def test_a_hopeless_trial_is_pruned_after_its_first_epoch(tmp_path):
    # Trial 0 is the default recipe; trial 1 can only draw a learning rate far too small to
    # learn anything, so after epoch 1 it is below the median of the finished trials.
    result = taolu.tune(
        data="digits",
        epochs=2,
        trials=2,
        out=tmp_path / "study",
        space={"optimizer": ["sgd"], "lr": [1e-7]},
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1),
    )
    baseline, hopeless = result.trials
    assert baseline["state"] == "complete" and baseline["epochs"] == 2
    assert hopeless["state"] == "pruned" and hopeless["epochs"] == 1
    assert result.best_options == {}  # the default recipe won
    assert "--lr" not in result.command
    summary = yaml.safe_load((tmp_path / "study/trial-001/summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs_completed"] == 1
    assert (tmp_path / "study/trial-001/weights/best.pt").is_file()


@pytest.mark.slow
def test_trials_run_side_by_side_in_processes(tmp_path):
    result = taolu.tune(
        data="digits",
        epochs=1,
        trials=3,
        jobs=2,
        out=tmp_path / "study",
        space=QUIET_SPACE,
        baseline=False,
    )
    assert sorted(row["trial"] for row in result.trials) == [0, 1, 2]
    assert all(row["state"] == "complete" for row in result.trials)
    assert len({row["run_dir"] for row in result.trials}) == 3


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lrr": [0.1]}, r"unknown option 'lrr'; did you mean lr\?"),
        ({"lr": {"low": 0.1, "hihg": 1.0}}, r"option 'lr': unknown key 'hihg'; did you mean high"),
        ({"lr": {"low": 0.1}}, r"option 'lr': the range needs 'high'"),
        ({"lr": {"low": 1.0, "high": 0.1}}, r"option 'lr': 'low' \(1.0\) must be below"),
        ({"weight_decay": {"low": 0, "high": 1, "log": True}}, r"'weight_decay': a log range"),
        ({"weight_decay": [0.1, -1]}, r"'weight_decay'.*-1.*must be >= 0"),
        ({"augment": ["none", "flips"]}, r"'augment'.*'flips' is not allowed"),
        ({"augment": {"low": 0, "high": 1}}, r"'augment': not a number"),
        ({"data": ["digits", "mnist5k"]}, r"option 'data' cannot be searched"),
        ({"epochs": 3}, r"option 'epochs': 3 is neither a list of choices nor a"),
        ({"epochs": []}, r"option 'epochs': the list of choices is empty"),
        ({"model": "fastcnn"}, r"option 'model'"),
        ([], r"must map options to a list of choices or a \{low, high\} range"),
    ],
)
def test_a_bad_space_is_refused_naming_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        read_space(space, fixed=())


def test_a_space_file_is_read_and_checked_before_any_training(tmp_path, cli_main):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.001, high: 0.3, log: true}\nbatch-size: [32, 64]\n")
    read = read_space(space, fixed=())
    assert read.options == ["lr", "batch_size"]
    assert read.dimensions[0].log and read.dimensions[1].choices == (32, 64)
    space.write_text("lr: [0.1\n")
    code, _, err = cli_main("tune", "--space", space, "--out", tmp_path / "study")
    assert code == 2 and f"search space {space} is not valid YAML" in err
    space.write_text("lr: [0.1]\n")
    code, _, err = cli_main("tune", "--space", space, "--lr", "0.1", "--out", tmp_path / "s")
    assert code == 2 and "option 'lr' is searched and also given as a fixed option" in err
    assert not (tmp_path / "study").exists() and not (tmp_path / "s").exists()


def test_the_default_space_leaves_out_what_is_fixed():
    from taolu.tuning.space import default_space

    searched = default_space({"model", "batch_size"}).options
    assert "model" not in searched and "batch_size" not in searched
    assert {"lr", "optimizer", "weight_decay", "augment", "label_smoothing"} <= set(searched)
    assert "optimizer" not in default_space({"lr"}).options  # a fixed lr suits one family


def test_without_optuna_tune_says_how_to_install_it(tmp_path, monkeypatch, cli_main):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    code, _, err = cli_main("tune", "--data", "digits", "--out", tmp_path / "study")
    assert code == 2 and "pip install 'taolu[tune]'" in err


def test_the_default_lr_range_follows_the_drawn_optimizer():
    from taolu.tuning.space import default_space

    space = default_space({"model", "batch_size", "augment", "mixup"})
    drawn = space.draw(
        optuna.trial.FixedTrial(
            {
                "optimizer": "adamw",
                "lr (adamw)": 0.003,
                "weight_decay": 1e-4,
                "label_smoothing": 0.05,
            }
        ),
        fixed={},
    )
    assert drawn == {
        "optimizer": "adamw",
        "lr": 0.003,
        "weight_decay": 1e-4,
        "label_smoothing": 0.05,
    }
    with pytest.warns(UserWarning, match=r"out of the range.*high=0\.01"):  # AdamW's, not SGD's
        space.draw(
            optuna.trial.FixedTrial(
                {
                    "optimizer": "adamw",
                    "lr (adamw)": 0.2,
                    "weight_decay": 1e-4,
                    "label_smoothing": 0,
                }
            ),
            fixed={},
        )


def test_no_trial_starts_once_the_timeout_has_passed(tmp_path):
    result = taolu.tune(data="digits", epochs=1, trials=5, timeout=1e-6, out=tmp_path / "study")
    assert result.trials == [] and result.best_value is None and result.command == ""
    assert (tmp_path / "study/study.db").is_file()
    assert not list((tmp_path / "study").glob("trial-*"))


def test_a_trial_left_running_by_a_stop_is_failed_and_the_baseline_runs_again(tmp_path):
    study_dir = tmp_path / "study"
    fixed = {"data": "digits", "epochs": 1, "space": QUIET_SPACE, "out": study_dir}
    taolu.tune(trials=2, timeout=1e-6, **fixed)  # makes study.db, starts nothing
    # What a killed session leaves: the baseline trial still marked running.
    study = optuna.load_study(study_name="taolu", storage=f"sqlite:///{study_dir}/study.db")
    study.ask().set_user_attr("baseline", True)
    result = taolu.tune(trials=2, **fixed)
    stopped, baseline = result.trials
    assert stopped["state"] == "fail" and stopped["error"] == "interrupted"
    assert baseline["baseline"] and baseline["state"] == "complete"
    assert baseline["run_dir"] == str(study_dir / "trial-001")
