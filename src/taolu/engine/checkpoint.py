"""Checkpoints: written atomically, read only through torch's weights-only unpickler.

A checkpoint is a dict of tensors and plain values (no pickled objects), so
`torch.load(weights_only=True)` reads it and a file carrying code is refused unrun.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from taolu.errors import CheckpointError

FORMAT = "taolu-checkpoint"
VERSION = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
CHECKPOINT_DIR = "weights"
# What eval, predict and resume read from every checkpoint.
REQUIRED_KEYS = ("model", "config", "classes", "preprocessing", "epoch", "model_class")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a kill at any moment leaves the old file or the new one,
    never a torn one: write a temporary file beside it, fsync, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a taolu checkpoint, refusing anything else with a CheckpointError.

    weights_only=True is passed explicitly, which torch honours even when
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: no object in the file is ever constructed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (or, long ago, a pickle stream starting with 0x80).
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{path}: not a taolu checkpoint: it is not a file torch.save wrote "
            f"(it starts with {head!r}); pass a run directory or a .pt checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain values "
            f"(loading them could run code). Nothing in it was executed. ({first_line})"
        ) from None
    except Exception as error:  # torch raises many kinds for torn or foreign files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {error}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a taolu checkpoint (no '{FORMAT}' marker)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer taolu (format {state.get('version')}); upgrade taolu"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete taolu checkpoint, missing {', '.join(missing)}")
    return state


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights eval, predict and export use: the moving average when --ema kept one."""
    return state.get("ema_model") or state["model"]


def find_checkpoint(run_or_file: str | Path, which: str = BEST_NAME) -> Path:
    """A checkpoint file given directly, or `which` inside a run directory."""
    path = Path(run_or_file)
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / which
        if not candidate.is_file():
            raise CheckpointError(
                f"no checkpoint in {path}: looked for {candidate}; is this a taolu run directory?"
            )
        return candidate
    if not path.exists():
        raise CheckpointError(f"no such run directory or checkpoint file: {path}")
    return path


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream a run draws from, as tensors."""
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def copy_checkpoint(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of the checkpoint `source` (cheaper than saving twice)."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
