"""Faults: a process killed mid-epoch or mid-write, a full disk, and checkpoints damaged on
disk (truncated, a flipped bit, pickled code). Each leaves a run that resumes, or a file that
is refused with a CheckpointError (exit code 2 from the CLI) before anything in it is used.

Kills happen in subprocesses (SIGKILL cannot be caught, so nothing gets to clean up); the
rest runs in-process. tests/test_checkpoint.py covers the plain refusals (truncated by half,
garbage, torch.save'd objects that run code); this file adds what the faults add."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import MINIMAL_CONFIG, MINIMAL_PREPROCESSING
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import taolu
import taolu.checkpoint as checkpoint
from taolu.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint

TESTS = Path(__file__).resolve().parent
CLASSES = [str(d) for d in range(10)]
EPOCHS = 4
# A user's Dataset over the embedded digits, as in tests/test_resume.py: 400 to train on,
# 200 to validate on, deterministic, no DataLoader workers, on the CPU.
TRAINING = dict(
    classes=CLASSES,
    epochs=EPOCHS,
    batch_size=50,
    workers=0,
    device="cpu",
    deterministic=True,
    verbose=False,
    progress=False,
    report=False,
)


# --------------------------------------------------------------------------- helpers


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_clean_records(run_dir: Path, epochs: int) -> None:
    """metrics.csv and TensorBoard hold each epoch and each optimizer step exactly once
    (a short form of the helper in tests/test_resume.py)."""
    assert [int(row["epoch"]) for row in read_metrics(run_dir)] == list(range(1, epochs + 1))
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    events = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    for tag in ("val/acc", "val/loss"):
        steps = [event.step for event in events[tag]]
        assert len(steps) == epochs and steps == sorted(set(steps)), tag
    steps = [event.step for event in events["train/loss"]]
    assert steps == list(range(1, len(steps) + 1)), "train/loss steps missing or repeated"


def after_the_newest_event_file(run_dir: Path) -> None:
    """TensorBoard orders event files by name: creation second, host, then pid and counter
    compared as text. Start the resumed run's writer in a later second than the killed one's,
    as any real resume does (see next_second in tests/test_resume.py)."""
    seconds = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.02)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def assert_same_weights(first: dict, second: dict, tolerance: float = 1e-6) -> None:
    assert first.keys() == second.keys()
    for key in first:
        difference = (first[key].double() - second[key].double()).abs().max().item()
        assert difference <= tolerance, f"{key} differs by {difference}"


def start_python(script: str, params: dict, cwd: Path) -> subprocess.Popen:
    """`python -c script` with `params` as JSON in argv[1]; TESTS importable (for conftest)."""
    env = dict(os.environ)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps({"tests": str(TESTS), **params})],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


@pytest.fixture
def digit_parts(digits_arrays, array_dataset):
    images, labels = digits_arrays

    def train_data():
        return array_dataset(images[:400], labels[:400])

    def val_data():
        return array_dataset(images[400:600], labels[400:600])

    return train_data, val_data


# --------------------------------------------------------------------------- SIGKILL


# The training Dataset kills its own process the first time sample KILL_INDEX is fetched
# after the second epoch's checkpoint exists: in the middle of epoch 3's training pass.
KILL_MID_EPOCH = """
import json, os, signal, sys
from pathlib import Path
params = json.loads(sys.argv[1])
sys.path.insert(0, params["tests"])
import torch
import taolu
from conftest import ArrayDataset
from taolu.data.embedded import load_digits

LAST = Path(params["out"]) / params["name"] / "weights" / "last.pt"

class KilledInEpochThree(ArrayDataset):
    def __getitem__(self, index):
        if index == params["kill_index"] and LAST.is_file():
            if torch.load(LAST, weights_only=True)["epoch"] >= 2:
                print("killing myself in epoch 3", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)

images, labels = load_digits()
taolu.train(
    data=KilledInEpochThree(images[:400], labels[:400]),
    val_data=ArrayDataset(images[400:600], labels[400:600]),
    out=params["out"], name=params["name"], **params["options"],
)
print("finished without being killed", flush=True)
"""


def test_sigkill_mid_epoch_then_resume_ends_where_an_uninterrupted_run_does(tmp_path, digit_parts):
    train_data, val_data = digit_parts
    killed = start_python(
        KILL_MID_EPOCH,
        {"out": str(tmp_path), "name": "killed", "kill_index": 123, "options": TRAINING},
        tmp_path,
    )
    # The uninterrupted reference trains meanwhile, on the other core.
    reference = taolu.train(
        data=train_data(), val_data=val_data(), out=str(tmp_path), name="whole", **TRAINING
    )
    code, output = finish(killed)
    assert code == -signal.SIGKILL, output
    assert "killing myself in epoch 3" in output
    run_dir = tmp_path / "killed"
    assert load_checkpoint(run_dir / "weights" / "last.pt")["epoch"] == 2
    assert len(read_metrics(run_dir)) == 2
    assert not (run_dir / "summary.json").exists()

    after_the_newest_event_file(run_dir)
    resumed = taolu.train(
        resume=run_dir,
        data=train_data(),
        val_data=val_data(),
        classes=CLASSES,
        workers=0,
        verbose=False,
        progress=False,
        report=False,
    )
    assert [row["epoch"] for row in resumed.history] == list(range(1, EPOCHS + 1))
    ours = load_checkpoint(run_dir / "weights" / "last.pt")
    theirs = load_checkpoint(reference.run_dir / "weights" / "last.pt")
    assert_same_weights(ours["model"], theirs["model"])
    assert [row["val_loss"] for row in resumed.history] == pytest.approx(
        [row["val_loss"] for row in reference.history], abs=1e-6
    )
    assert_clean_records(run_dir, EPOCHS)


# torch.save, as checkpoint.py calls it, writes half of the second checkpoint's bytes and
# then the process is SIGKILLed: a torn temporary file is all the second save leaves.
KILL_MID_WRITE = """
import io, json, os, signal, sys
params = json.loads(sys.argv[1])
import torch
import taolu
import taolu.checkpoint as checkpoint

real_save = checkpoint.torch.save
saves = []

def save_then_die(obj, handle, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("format") == "taolu-checkpoint":
        saves.append(obj["epoch"])
        if len(saves) == 2:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            print("killed while writing epoch", obj["epoch"], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *args, **kwargs)

checkpoint.torch.save = save_then_die
taolu.train(data="digits", epochs=2, device="cpu", out=params["out"], name="torn",
            verbose=False, progress=False, report=False)
print("finished without being killed", flush=True)
"""


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, quiet):
    code, output = finish(start_python(KILL_MID_WRITE, {"out": str(tmp_path)}, tmp_path))
    assert code == -signal.SIGKILL, output
    assert "killed while writing epoch 2" in output
    weights = tmp_path / "torn" / "weights"
    left = temporaries(weights)
    assert len(left) == 1 and left[0].startswith(".last.pt."), left  # the torn write

    assert load_checkpoint(weights / "last.pt")["epoch"] == 1  # intact, digest and all
    assert taolu.evaluate(weights.parent, checkpoint="last")["samples"] > 0  # ignores the .tmp

    after_the_newest_event_file(weights.parent)
    resumed = taolu.train(resume=weights.parent, **quiet)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert load_checkpoint(weights / "last.pt")["epoch"] == 2
    assert temporaries(weights) == []  # the dead process's file was cleared by the next save
    assert_clean_records(weights.parent, 2)


# --------------------------------------------------------------------------- disk full


class DiskFull(io.BufferedWriter):
    """A file on a disk with `room` bytes left: the write past them fails with ENOSPC."""

    def __init__(self, path, room: int):
        super().__init__(io.FileIO(path, "wb"))
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def test_disk_full_during_a_save_stops_the_run_with_the_last_checkpoint_intact(
    tmp_path, monkeypatch, quiet
):
    """The second epoch's last.pt hits a full disk inside torch.save: a CheckpointError that
    says so, last.pt of epoch 1 still loads, no temporary file; once there is room again,
    resume finishes the run with clean records."""
    opened = []

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(".last.pt.") and mode == "wb":
            opened.append(path)
            if len(opened) == 2:
                return DiskFull(path, room=4096)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(taolu.CheckpointError) as caught:
        taolu.train(data="digits", epochs=2, device="cpu", out=str(tmp_path), name="full", **quiet)
    run_dir = tmp_path / "full"
    message = str(caught.value)
    assert "no space left on device" in message
    assert f"writing {run_dir / 'weights' / 'last.pt'} (epoch 2)" in message
    assert "previous last.pt is intact" in message
    assert f"taolu train --resume {run_dir}" in message
    assert load_checkpoint(run_dir / "weights" / "last.pt")["epoch"] == 1
    assert temporaries(run_dir / "weights") == []

    monkeypatch.undo()  # space freed
    after_the_newest_event_file(run_dir)
    resumed = taolu.train(resume=run_dir, **quiet)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert_clean_records(run_dir, 2)


def small_state(epoch: int = 1) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "model": {"0.weight": torch.randn(16, 64, generator=generator), "0.bias": torch.zeros(16)},
        "config": dict(MINIMAL_CONFIG),
        "classes": ["ant", "bee"],
        "preprocessing": dict(MINIMAL_PREPROCESSING),
        "epoch": epoch,
        "model_class": "torch.nn.modules.container.Sequential",
        "history": [{"epoch": 1, "val_acc": 0.5, "flags": (True, None)}],
    }


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("fsync", errno.ENOSPC),
        ("fsync", errno.EDQUOT),
        ("replace", errno.EIO),
        ("copy", errno.ENOSPC),
    ],
)
def test_every_failed_write_keeps_the_old_file_and_says_why(tmp_path, monkeypatch, where, error):
    weights = tmp_path / "run" / "weights"
    save_checkpoint(small_state(1), weights / "last.pt")
    copy_checkpoint(weights / "last.pt", weights / "best.pt")
    before = {name: (weights / name).read_bytes() for name in ("last.pt", "best.pt")}

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    if where == "copy":
        monkeypatch.setattr(checkpoint.shutil, "copyfile", fail)
    else:
        monkeypatch.setattr(checkpoint.os, where, fail)
    with pytest.raises(taolu.CheckpointError) as caught:
        if where == "copy":
            copy_checkpoint(weights / "last.pt", weights / "best.pt")
        else:
            save_checkpoint(small_state(2), weights / "last.pt")
    monkeypatch.undo()
    message = str(caught.value)
    words = {errno.ENOSPC: "no space left", errno.EDQUOT: "quota", errno.EIO: "input/output"}
    assert words[error] in message and "intact" in message
    assert f"--resume {weights.parent}" in message
    assert {name: (weights / name).read_bytes() for name in before} == before
    assert temporaries(weights) == []
    assert load_checkpoint(weights / "last.pt")["epoch"] == 1


# --------------------------------------------------------------------------- leftovers


def test_only_taolus_own_dead_temporary_files_are_removed(tmp_path):
    """What a killed writer leaves is ignored by readers and cleared by the next write;
    files that merely look alike, and a live process's temporary file, are left alone."""
    weights = tmp_path / "weights"
    weights.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    stale = [f".last.pt.{dead_pid}.tmp", f".best.pt.{dead_pid}.tmp"]
    kept = [
        f".last.pt.{os.getppid()}.tmp",  # a live process (pytest's parent) may be writing
        f".last.pt.{dead_pid}.tmp.keep",
        f"last.pt.{dead_pid}.tmp",
        f".other.pt.{dead_pid}.tmp",
        f".last.pt.x{dead_pid}.tmp",
        "notes.txt",
    ]
    for name in stale + kept:
        (weights / name).write_bytes(b"PK\x03\x04 torn")
    (weights / f".best.pt.{dead_pid + 1}.tmp").mkdir()  # not a file: left alone
    kept.append(f".best.pt.{dead_pid + 1}.tmp")
    (weights / f".last.pt.{dead_pid + 2}.tmp").symlink_to(weights / "notes.txt")
    kept.append(f".last.pt.{dead_pid + 2}.tmp")

    save_checkpoint(small_state(), weights / "last.pt")
    assert load_checkpoint(weights / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in weights.iterdir()) == sorted([*kept, "last.pt"])


# --------------------------------------------------------------------------- damaged files


def entry_data_offset(path: Path, name_suffix: str) -> tuple[int, int]:
    """(offset of the first data byte, size) of the zip entry ending in `name_suffix`."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if i.filename.endswith(name_suffix)),
            key=lambda i: i.file_size,
        )
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    assert info.compress_type == zipfile.ZIP_STORED
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def flip_bit(path: Path, offset: int, bit: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


class ExecOnUnpickle:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def write_hand_made_malicious(good: Path, path: Path, marker: Path) -> None:
    """A copy of a good checkpoint's zip with data.pkl replaced by a hand-made pickle: the
    checkpoint's entries, and 'model' an exec() call that creates `marker`."""
    state = {"format": "taolu-checkpoint", "version": 1, **small_state()}
    state["model"] = ExecOnUnpickle(f"open({str(marker)!r}, 'w').close()")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(state, protocol=2)
            target.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)


@pytest.fixture
def damaged(tmp_path):
    """Good and damaged copies of one checkpoint, and the marker the malicious one makes."""
    good = tmp_path / "good.pt"
    save_checkpoint(small_state(), good)
    files = {"good": good}

    files["truncated"] = tmp_path / "truncated.pt"  # the zip's directory at the end cut off
    files["truncated"].write_bytes(good.read_bytes()[:-30])

    files["bit-flip"] = tmp_path / "bitflip.pt"  # one bit in the middle of 0.weight's data
    files["bit-flip"].write_bytes(good.read_bytes())
    start, size = entry_data_offset(good, "/data/0")
    assert size == 16 * 64 * 4
    flip_bit(files["bit-flip"], start + size // 2)

    files["bit-flip-pickle"] = tmp_path / "bitflip_pickle.pt"  # 'bee' becomes 'bue'
    files["bit-flip-pickle"].write_bytes(good.read_bytes())
    start, size = entry_data_offset(good, "/data.pkl")
    at = good.read_bytes().index(b"bee", start, start + size) + 1
    flip_bit(files["bit-flip-pickle"], at, bit=4)

    marker = tmp_path / "pwned"
    files["malicious"] = tmp_path / "malicious.pt"
    write_hand_made_malicious(good, files["malicious"], marker)
    return files, marker


def test_the_damage_is_real_and_torch_alone_would_not_notice(damaged):
    """Proves the refusal tests below can fail: torch loads both bit flips without a word,
    and the hand-made pickle runs its code when loaded unsafely."""
    files, marker = damaged
    good = torch.load(files["good"], weights_only=True)
    flipped = torch.load(files["bit-flip"], weights_only=True)
    changed = (flipped["model"]["0.weight"] != good["model"]["0.weight"]).sum().item()
    assert changed == 1
    assert torch.load(files["bit-flip-pickle"], weights_only=True)["classes"] == ["ant", "bue"]
    with pytest.raises(Exception):  # noqa: B017 - whatever a truncated zip raises
        torch.load(files["truncated"], weights_only=True)
    torch.load(files["malicious"], weights_only=False)
    assert marker.exists()
    marker.unlink()


REFUSALS = {
    "truncated": "truncated or corrupt",
    "bit-flip": "corrupt: its contents do not match the digest",
    "bit-flip-pickle": "corrupt: its contents do not match the digest",
    "malicious": "Nothing in it was executed",
}


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["plain", "TORCH_FORCE_NO_WO"])
def test_damaged_checkpoints_are_refused_by_load_checkpoint(damaged, monkeypatch, force_unsafe):
    files, marker = damaged
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    else:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    assert load_checkpoint(files["good"])["classes"] == ["ant", "bee"]
    for kind, words in REFUSALS.items():
        with pytest.raises(taolu.CheckpointError) as caught:
            load_checkpoint(files[kind])
        assert str(files[kind]) in str(caught.value) and words in str(caught.value), kind
    assert not marker.exists()


def test_damaged_checkpoints_are_refused_by_the_cli(damaged, cli_main, run_cli_many, tmp_path):
    """`taolu eval FILE`: exit code 2, the reason, no traceback, nothing run -- in-process,
    and as a real process with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in its environment."""
    files, marker = damaged
    unsafe = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    processes = run_cli_many(
        {kind: (["eval", files[kind]], tmp_path, unsafe) for kind in ("bit-flip", "malicious")}
    )
    results = {
        f"{kind} (process, unsafe env)": (r.returncode, r.stderr) for kind, r in processes.items()
    }
    for kind in REFUSALS:
        code, _, err = cli_main("eval", files[kind])
        results[kind] = (code, err)
    for name, (code, err) in results.items():
        kind = name.split(" ")[0]
        assert code == 2, (name, err)
        assert REFUSALS[kind] in err and files[kind].name in err, (name, err)
        assert "Traceback" not in err, (name, err)
    assert not marker.exists()
