"""The `taolu` command end to end, as a user runs it: `python -m taolu ...` in a subprocess.

Each `python -m taolu` spends a few seconds importing torch, so the commands that do not
depend on each other run concurrently in two waves (module-scoped fixtures); the tests then
check one command's result each. The full matrix of refusals also runs in-process through
`taolu.cli.main`, which is the same code without the start-up cost.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from taolu.cli import main
from taolu.config import FIELDS
from taolu.models import BUILTIN_MODELS

METRIC_COLUMNS = [
    "epoch",
    "elapsed_seconds",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5_acc",
    "val_macro_f1",
    "val_balanced_acc",
    "lr",
    "grad_norm",
    "skipped_batches",
    "train_images_per_second",
]
SUMMARY_KEYS = {
    "best_val_acc",
    "final_val_acc",
    "epochs_completed",
    "train_seconds",
    "images_per_second",
    "device",
    "precision",
    "classes",
    "train_samples",
    "val_samples",
    "run_dir",
    "best_checkpoint",
    "last_checkpoint",
}

# Refusals run as real processes: (argv, words the message must contain).
PROCESS_REFUSALS = {
    "unknown-key": (["--set", "epoch=3"], ["epoch"]),
    "wrong-type": (["--epochs", "abc"], ["epochs", "abc"]),
    "negative-epochs": (["--epochs", "-3"], ["epochs", "-3"]),
    "zero-lr": (["--set", "lr=0"], ["lr", "0"]),
    "unknown-model": (["--model", "resnet999"], ["resnet999", *BUILTIN_MODELS]),
    "unknown-data": (["--data", "no_such_data"], ["data", "no_such_data"]),
    "bad-device": (["--device", "gpu"], ["device", "gpu"]),
    "yaml-bad-value": (["--config", "bad.yaml"], ["batch_size", "0"]),
}

# The same and more, in-process.
INPROCESS_REFUSALS = {
    **PROCESS_REFUSALS,
    "unknown-key-in-yaml": (["--config", "unknown.yaml"], ["epoch"]),
    "missing-yaml": (["--config", "missing.yaml"], ["missing.yaml"]),
    "lr-negative": (["--lr", "-0.5"], ["lr", "-0.5"]),
    "lr-text": (["--lr", "fast"], ["lr", "fast"]),
    "set-without-equals": (["--set", "epochs"], ["epochs", "key=value"]),
    "bad-bool": (["--set", "verbose=maybe"], ["verbose", "maybe"]),
    "bad-choice": (["--optimizer", "lbfgs"], ["optimizer", "lbfgs", "sgd"]),
    "name-is-a-path": (["--name", "../x"], ["name", "../x"]),
}


def write_config_files(folder: Path) -> None:
    (folder / "bad.yaml").write_text("batch_size: 0\n", encoding="utf-8")
    (folder / "unknown.yaml").write_text("epoch: 3\n", encoding="utf-8")


def write_inputs(folder: Path, digits_arrays) -> dict[str, Path]:
    """a.png (gray), b.jpg (RGB, larger than 8x8), bad.jpg (text), and a folder tree."""
    images, _ = digits_arrays
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"a": folder / "a.png", "b": folder / "b.jpg", "bad": folder / "bad.jpg"}
    Image.fromarray(images[0]).save(paths["a"])
    rgb = Image.fromarray(images[1]).convert("RGB").resize((32, 32))
    rgb.save(paths["b"], quality=95)
    paths["bad"].write_text("this is a text file, not a JPEG", encoding="utf-8")
    tree = folder / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / ".hidden").mkdir()
    Image.fromarray(images[2]).save(tree / "x.png")
    Image.fromarray(images[3]).save(tree / "sub" / "y.png")
    Image.fromarray(images[4]).convert("RGB").save(tree / "sub" / "deeper" / "z.jpg")
    Image.fromarray(images[5]).save(tree / ".hidden" / "h.png")
    Image.fromarray(images[6]).save(tree / ".dot.png")
    (tree / "notes.txt").write_text("ignored")
    paths["tree"] = tree
    return paths


def write_malicious(path: Path, marker: Path) -> None:
    import builtins

    import torch

    class Evil:
        def __reduce__(self):
            return (builtins.open, (str(marker), "w"))

    torch.save({"format": "taolu-checkpoint", "version": 1, "model": Evil()}, path)


# --------------------------------------------------------------------------- the two waves


@pytest.fixture(scope="module")
def wave1(tmp_path_factory, run_cli_many):
    """Commands that need nothing but the tools: train, refusals, help, malicious files."""
    base = tmp_path_factory.mktemp("cli")
    write_config_files(base)
    (base / "precedence.yaml").write_text(
        "epochs: 5\nbatch_size: 64\nlr: 0.031\nseed: 7\n", encoding="utf-8"
    )
    marker = base / "pwned"
    write_malicious(base / "evil.pt", marker)
    (base / "x.png").write_bytes(b"")  # an input for predict; never reached
    unsafe = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    jobs = {
        "train": (["train", "--data", "digits", "--epochs", "2", "--out", "OUT"], base),
        "precedence": (
            [
                "train",
                "--config",
                "precedence.yaml",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--lr",
                "0.042",
                "--set",
                "lr=0.053",
                "--out",
                "PREC",
                "--name",
                "p",
                "--no-verbose",
            ],
            base,
        ),
        "help": (["--help"], base),
        "train-help": (["train", "--help"], base),
        "unknown-flag": (["train", "--lr-rate", "0.1", "--out", "FLAG"], base),
        "evil-eval": (["eval", "evil.pt"], base),
        "evil-eval-unsafe-env": (["eval", "evil.pt"], base, unsafe),
        "evil-predict-unsafe-env": (["predict", "evil.pt", "x.png"], base, unsafe),
    }
    for key, (argv, _) in PROCESS_REFUSALS.items():
        jobs[f"refusal:{key}"] = (["train", *argv, "--out", f"REFUSED_{key}"], base)
    return {"base": base, "marker": marker, "results": run_cli_many(jobs)}


@pytest.fixture(scope="module")
def cli_run(wave1) -> Path:
    result = wave1["results"]["train"]
    assert result.returncode == 0, result.stderr
    return wave1["base"] / "OUT" / "train"


@pytest.fixture(scope="module")
def wave2(wave1, cli_run, tree_snapshot, run_cli_many, digits_arrays):
    """Commands on the finished run: eval, predict, resume (on a copy)."""
    base = wave1["base"]
    inputs = write_inputs(base / "inputs", digits_arrays)
    resumed = base / "RESUMED" / "train"
    shutil.copytree(cli_run, resumed)
    before = tree_snapshot(cli_run)
    cwd_before = sorted(p.name for p in base.iterdir())
    jobs = {
        "eval": (["eval", cli_run], base),
        "eval-json": (["eval", cli_run, "--json", "--checkpoint", "last"], base),
        "predict": (
            ["predict", cli_run, inputs["a"], inputs["b"], inputs["bad"], "--topk", "3", "--json"],
            base,
        ),
        "predict-folder": (["predict", cli_run, inputs["tree"], "--json", "--topk", "1"], base),
        "predict-text": (["predict", cli_run, inputs["a"], inputs["bad"]], base),
        "resume": (["train", "--resume", resumed, "--epochs", "3", "--no-verbose"], base),
        "resume-changes-lr": (["train", "--resume", resumed, "--lr", "0.5"], base),
    }
    results = run_cli_many(jobs)
    return {
        "results": results,
        "inputs": inputs,
        "resumed": resumed,
        "unchanged": tree_snapshot(cli_run) == before,
        "cwd_unchanged": sorted(p.name for p in base.iterdir()) == cwd_before,
    }


def assert_clean_refusal(result, words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("taolu: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


# --------------------------------------------------------------------------- train


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(cli_run, wave1):
    result = wave1["results"]["train"]
    assert "epoch" in result.stdout and "Traceback" not in result.stderr
    names = {p.name for p in cli_run.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "weights"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert sorted(p.name for p in (cli_run / "weights").iterdir()) == ["best.pt", "last.pt"]

    with open(cli_run / "metrics.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        assert reader.fieldnames is not None
        assert set(METRIC_COLUMNS) <= set(reader.fieldnames)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row in rows:
        for column in METRIC_COLUMNS:
            float(row[column])  # every value is a number
        assert 0.0 <= float(row["val_acc"]) <= 1.0

    summary = json.loads((cli_run / "summary.json").read_text(encoding="utf-8"))
    assert SUMMARY_KEYS <= set(summary)
    assert summary["epochs_completed"] == 2
    assert summary["classes"] == [str(d) for d in range(10)]
    assert summary["train_samples"] + summary["val_samples"] == 1797
    assert summary["best_val_acc"] == max(float(row["val_acc"]) for row in rows)
    assert summary["final_val_acc"] == pytest.approx(float(rows[-1]["val_acc"]))
    assert Path(summary["best_checkpoint"]).name == "best.pt"
    assert Path(summary["last_checkpoint"]).name == "last.pt"

    accumulator = EventAccumulator(str(cli_run))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "train/lr"} <= tags
    for tag in ("train/acc", "val/loss", "val/acc"):
        assert len(accumulator.Scalars(tag)) == 2, tag
    steps_per_epoch = -(-summary["train_samples"] // FIELDS["batch_size"].default)
    for tag in ("train/loss", "train/lr"):  # one per optimizer step
        assert len(accumulator.Scalars(tag)) == 2 * steps_per_epoch, tag


@pytest.mark.slow
def test_precedence_end_to_end(wave1):
    import yaml

    result = wave1["results"]["precedence"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --no-verbose
    run_dir = wave1["base"] / "PREC" / "p"
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["epochs"] == 1  # flag beats file
    assert config["batch_size"] == 64  # file beats default
    assert config["seed"] == 7  # file beats default
    assert config["lr"] == pytest.approx(0.053)  # --set beats flag and file
    assert config["momentum"] == FIELDS["momentum"].default
    assert set(config) == set(FIELDS)
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(PROCESS_REFUSALS))
def test_refusals_exit_2_with_a_message_and_no_run(wave1, key):
    _, words = PROCESS_REFUSALS[key]
    assert_clean_refusal(wave1["results"][f"refusal:{key}"], words)
    assert not (wave1["base"] / f"REFUSED_{key}").exists()


@pytest.mark.slow
def test_unknown_flag_is_refused_without_traceback(wave1):
    result = wave1["results"]["unknown-flag"]
    assert result.returncode == 2
    assert "--lr-rate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (wave1["base"] / "FLAG").exists()


@pytest.mark.parametrize("key", sorted(INPROCESS_REFUSALS))
def test_refusals_in_process(tmp_path, monkeypatch, capsys, key):
    monkeypatch.chdir(tmp_path)
    write_config_files(tmp_path)
    argv, words = INPROCESS_REFUSALS[key]
    code = main(["train", *argv, "--out", str(tmp_path / "OUT")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("taolu: error:")
    for word in words:
        assert word in captured.err, (word, captured.err)
    assert not (tmp_path / "OUT").exists()


# --------------------------------------------------------------------------- help


def normalised(text: str) -> str:
    return re.sub(r"\s+", "", text)


def default_as_written(value: object) -> str:
    """A default as the README's table and --help write it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "empty" if value == "" else str(value)


def assert_lists_every_option(help_text: str) -> None:
    options_part = help_text.split("options:", 1)[1]
    starts = {}
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        match = re.search(rf"^\s+{re.escape(flag)}\b", options_part, re.MULTILINE)
        assert match, f"{flag} missing from help"
        starts[name] = match.start()
    order = sorted(starts, key=starts.get)
    for index, name in enumerate(order):
        end = starts[order[index + 1]] if index + 1 < len(order) else len(options_part)
        entry = normalised(options_part[starts[name] : end])
        default = normalised(f"(default: {default_as_written(FIELDS[name].default)})")
        assert default in entry, (name, entry)


@pytest.mark.slow
def test_train_help_lists_every_option_with_its_default(wave1):
    result = wave1["results"]["train-help"]
    assert result.returncode == 0
    assert_lists_every_option(result.stdout)
    assert "--config" in result.stdout and "--set" in result.stdout and "--resume" in result.stdout


@pytest.mark.slow
def test_top_level_help_lists_the_commands(wave1):
    result = wave1["results"]["help"]
    assert result.returncode == 0
    for command in ("train", "eval", "predict"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


@pytest.mark.slow
def test_console_script_help(tmp_path):
    import subprocess

    script = Path(sys.executable).with_name("taolu")
    if not script.exists():
        pytest.skip(f"no console script at {script} (taolu not installed in this interpreter)")
    result = subprocess.run(
        [str(script), "train", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert_lists_every_option(result.stdout)


# --------------------------------------------------------------------------- malicious files


@pytest.mark.slow
@pytest.mark.parametrize("key", ["evil-eval", "evil-eval-unsafe-env", "evil-predict-unsafe-env"])
def test_malicious_checkpoint_is_refused_by_eval_and_predict(wave1, key):
    result = wave1["results"][key]
    assert_clean_refusal(result, ["evil.pt"])
    assert not wave1["marker"].exists()


# --------------------------------------------------------------------------- eval


@pytest.mark.slow
def test_eval_prints_accuracy_and_writes_nothing(wave2, cli_run):
    result = wave2["results"]["eval"]
    assert result.returncode == 0, result.stderr
    assert "acc" in result.stdout
    summary = json.loads((cli_run / "summary.json").read_text(encoding="utf-8"))
    assert str(summary["val_samples"]) in result.stdout
    assert wave2["unchanged"], "eval/predict changed the run directory"
    assert wave2["cwd_unchanged"], "eval/predict wrote into the working directory"


@pytest.mark.slow
def test_eval_json(wave2, cli_run):
    result = wave2["results"]["eval-json"]
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert {"checkpoint", "samples", "loss", "acc", "epoch"} <= set(parsed)
    assert parsed["epoch"] == 2  # --checkpoint last
    assert Path(parsed["checkpoint"]).name == "last.pt"
    assert 0.0 <= parsed["acc"] <= 1.0
    rows = list(csv.DictReader(open(cli_run / "metrics.csv", newline="", encoding="utf-8")))
    assert parsed["acc"] == pytest.approx(float(rows[-1]["val_acc"]), abs=0.01)


# --------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_predict_json_one_object_per_input_in_order(wave2):
    result = wave2["results"]["predict"]
    inputs = wave2["inputs"]
    assert result.returncode != 0  # bad.jpg could not be read
    assert "Traceback" not in result.stderr
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, list) and len(parsed) == 3
    assert [item["path"] for item in parsed] == [str(inputs[k]) for k in ("a", "b", "bad")]
    for item in parsed[:2]:
        assert "error" not in item
        predictions = item["predictions"]
        assert len(predictions) == 3
        assert all(set(p) >= {"class", "probability"} for p in predictions)
        assert all(p["class"] in [str(d) for d in range(10)] for p in predictions)
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) <= 1.0 + 1e-5
        assert len({p["class"] for p in predictions}) == 3
    assert "predictions" not in parsed[2]
    assert "bad.jpg" in parsed[2]["error"]


@pytest.mark.slow
def test_predict_text_output_names_the_bad_file(wave2):
    result = wave2["results"]["predict-text"]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(wave2["inputs"]["a"]))
    assert "bad.jpg" in lines[1] and "error" in lines[1]


@pytest.mark.slow
def test_predict_on_a_folder_is_recursive_and_skips_hidden_files(wave2):
    result = wave2["results"]["predict-folder"]
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    tree = wave2["inputs"]["tree"]
    found = sorted(Path(item["path"]).relative_to(tree).as_posix() for item in parsed)
    assert found == ["sub/deeper/z.jpg", "sub/y.png", "x.png"]
    assert all(len(item["predictions"]) == 1 for item in parsed)


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_continues_the_run(wave2):
    result = wave2["results"]["resume"]
    assert result.returncode == 0, result.stderr
    resumed = wave2["resumed"]
    rows = list(csv.DictReader(open(resumed / "metrics.csv", newline="", encoding="utf-8")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    summary = json.loads((resumed / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs_completed"] == 3


@pytest.mark.slow
def test_resume_refuses_to_change_lr(wave2):
    assert_clean_refusal(wave2["results"]["resume-changes-lr"], ["lr"])
