"""Checkpoints: round trip, atomic writes, and refusal of anything that is not a plain taolu
checkpoint -- above all, files that would run code when unpickled."""

from __future__ import annotations

import builtins
import pathlib

import pytest
import torch
from conftest import MINIMAL_CONFIG, MINIMAL_PREPROCESSING

import taolu
from taolu.checkpoint import load_checkpoint, save_checkpoint


class CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a file could run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class TouchesFileWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


PAYLOADS = {
    "open": CreatesFileWhenUnpickled,
    "path-touch": TouchesFileWhenUnpickled,
}


def write_malicious(path: pathlib.Path, marker: pathlib.Path, payload: str = "open") -> None:
    """A file that looks like a taolu checkpoint but carries code in its 'model' entry."""
    evil = PAYLOADS[payload](marker)
    torch.save({"format": "taolu-checkpoint", "version": 1, "model": evil, "epoch": 1}, path)


@pytest.fixture
def sample_state():
    torch.manual_seed(0)
    return {
        "model": {"0.weight": torch.randn(4, 3), "0.bias": torch.zeros(4)},
        "epoch": 3,
        "step": 42,
        "best_val_acc": 0.875,
        "classes": ["ant", "bee"],
        "history": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}],
        "model_name": None,
        "flags": (True, False),
        "rng": {"torch": torch.get_rng_state()},
        "config": dict(MINIMAL_CONFIG),
        "preprocessing": dict(MINIMAL_PREPROCESSING),
        "model_class": "torch.nn.modules.container.Sequential",
    }


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path, sample_state):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint(sample_state, path)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "taolu-checkpoint"
    for key in ("epoch", "step", "best_val_acc", "classes", "history", "model_name"):
        assert loaded[key] == sample_state[key], key
    assert tuple(loaded["flags"]) == (True, False)
    for key, tensor in sample_state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert torch.equal(loaded["rng"]["torch"], sample_state["rng"]["torch"])


def test_save_leaves_no_temporary_files(tmp_path, sample_state):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint(sample_state, path)
    save_checkpoint({**sample_state, "epoch": 4}, path)  # overwrite
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 4


def test_failed_save_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path, sample_state):
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        save_checkpoint({**sample_state, "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 3


def test_run_directory_holds_only_the_two_checkpoints(digits_run):
    names = sorted(p.name for p in (digits_run.run_dir / "weights").iterdir())
    assert names == ["best.pt", "last.pt"]
    assert not [p for p in digits_run.run_dir.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- refusals


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(taolu.CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_torch_file_that_is_not_a_taolu_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(taolu.CheckpointError, match="not a taolu checkpoint"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(taolu.CheckpointError):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path, digits_run):
    data = digits_run.last_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(taolu.CheckpointError, match="cut.pt"):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "taolu-checkpoint", "version": 99}, path)
    with pytest.raises(taolu.CheckpointError, match="newer"):
        load_checkpoint(path)


def deterministic_bytes(count: int, seed: int) -> bytes:
    import hashlib

    out = b""
    counter = 0
    while len(out) < count:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return out[:count]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_refused(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(deterministic_bytes(4096, seed))
    with pytest.raises(taolu.CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"hello world\n", id="text-file"),
        pytest.param(b"\x80\x02a", id="pickle-append-on-empty-stack"),
        pytest.param(b"K", id="truncated-int-opcode"),
    ],
)
def test_garbage_files_are_refused(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(taolu.CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_the_malicious_file_really_runs_code_when_loaded_unsafely(tmp_path, payload):
    """Proves the payload works, so the refusal tests below can fail."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious(path, marker, payload)
    assert not marker.exists()
    loaded = torch.load(path, weights_only=False)
    if hasattr(loaded["model"], "close"):
        loaded["model"].close()
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["plain", "TORCH_FORCE_NO_WO"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, payload, force_unsafe):
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    else:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious(path, marker, payload)
    with pytest.raises(taolu.CheckpointError) as caught:
        load_checkpoint(path)
    assert "evil.pt" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["plain", "TORCH_FORCE_NO_WO"])
def test_api_refuses_malicious_checkpoints_everywhere(tmp_path, monkeypatch, force_unsafe, quiet):
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        write_malicious(run_dir / "weights" / name, marker)
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    with pytest.raises(taolu.CheckpointError):
        taolu.evaluate(run_dir)
    with pytest.raises(taolu.CheckpointError):
        taolu.evaluate(run_dir / "weights" / "best.pt")
    with pytest.raises(taolu.CheckpointError):
        taolu.predict(run_dir, [image])
    with pytest.raises(taolu.CheckpointError):
        taolu.train(resume=run_dir, **quiet)
    assert not marker.exists()


def test_checkpoint_missing_entries_is_refused(tmp_path):
    path = tmp_path / "hollow.pt"
    torch.save({"format": "taolu-checkpoint", "version": 1}, path)
    with pytest.raises(taolu.CheckpointError):
        taolu.evaluate(path)
