"""Checkpoints: written atomically, verified by a digest, read only through torch's
weights-only unpickler.

A checkpoint is a dict of tensors and plain values (no pickled objects), so
`torch.load(weights_only=True)` reads it and a file carrying code is refused unrun.

Integrity: torch's zip reader does not check the CRCs it writes, so a flipped bit in tensor
data would load silently. Every checkpoint therefore carries "digest", a SHA-256 over its
content (see `content_digest`), recomputed on load; a mismatch is refused as corrupt before
anything in the file is used. Checkpoints without a digest (older taolu) still load.

Writes go to a temporary file beside the target, `.NAME.PID.tmp` (e.g. `.last.pt.4242.tmp`),
which is fsynced and renamed over the target: a kill at any moment leaves the old checkpoint or
the new one. A process killed mid-write leaves its temporary file behind; nothing ever reads
it (eval, predict and resume open only best.pt and last.pt), and the next write in that folder
removes it once its process is gone. A write that fails (disk full, quota, I/O error) raises a
CheckpointError saying so, with the previous checkpoint intact and the temporary file removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taolu.errors import CheckpointError
from taolu.layout import BEST_NAME, CHECKPOINT_DIR, LAST_NAME
from taolu.torch_files import read_weights_only
from taolu.train_state import VERSION, TrainState, check_fields, inference_weights

FORMAT = "taolu-checkpoint"
DIGEST_KEY = "digest"
DIGEST_ALGORITHM = "sha256"
MARKER_WINDOW = 4096  # bytes of a checkpoint's pickle searched for FORMAT

# What a failed write tells the user: the errno's plain words, and what to do about it.
_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota"),
    errno.EIO: ("input/output error (a failing disk or a lost network mount?)", "check the disk"),
    errno.EROFS: ("read-only file system", "make the folder writable"),
    errno.EFBIG: ("file too large for this file system", "move the run to another disk"),
}


# --------------------------------------------------------------------------- digest


def content_digest(state: Mapping[str, Any]) -> str:
    """'sha256:HEX' over `state`'s content, the same before saving and after loading.

    Canonical form: the nested dicts, lists and plain values in order, each with a type tag;
    each tensor by its dtype, shape and the SHA-256 of its bytes. Lists and tuples count as the
    same, so the digest does not depend on how the unpickler rebuilds sequences.

    Cost, measured on this project's 2-core CPU for a resnet18-sized state (model + SGD
    momentum + EMA, 134 MB of tensors; median of 7): 0.08 s (SHA-256 runs at about 1.7 GB/s
    with the CPU's SHA instructions; blake2b took 0.15 s, and hashing on two threads was
    slower still), once per save and once per load; torch.save + fsync of that state alone
    took 0.13 s. A CUDA state is also copied to the CPU for hashing.
    """
    parts: list[bytes] = []
    tensors: list[torch.Tensor] = []
    _encode(state, parts, tensors)
    total = hashlib.new(DIGEST_ALGORITHM)
    for part in parts:
        total.update(part)
    for tensor in tensors:
        total.update(_tensor_digest(tensor))
    return f"{DIGEST_ALGORITHM}:{total.hexdigest()}"


def _encode(value: Any, parts: list[bytes], tensors: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        parts.append(f"T{value.dtype}{tuple(value.shape)};".encode())
    elif value is None:
        parts.append(b"N;")
    elif isinstance(value, bool):
        parts.append(b"B1;" if value else b"B0;")
    elif isinstance(value, int):
        parts.append(f"I{value};".encode())
    elif isinstance(value, float):
        parts.append(f"F{value.hex()};".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        parts.append(b"S%d:" % len(data) + data)
    elif isinstance(value, (bytes, bytearray)):
        parts.append(b"Y%d:" % len(value) + bytes(value))
    elif isinstance(value, Mapping):
        parts.append(b"D%d:" % len(value))
        for key, item in value.items():
            _encode(key, parts, tensors)
            _encode(item, parts, tensors)
    elif isinstance(value, (list, tuple)):
        parts.append(b"L%d:" % len(value))
        for item in value:
            _encode(item, parts, tensors)
    elif isinstance(value, (set, frozenset)):  # iteration order varies between processes
        members = []
        for item in value:
            encoded: list[bytes] = []
            _encode(item, encoded, tensors)
            members.append(b"".join(encoded))
        parts.append(b"E%d:" % len(value) + b"".join(sorted(members)))
    else:  # torch.dtype, torch.device, ...: what weights_only rebuilds has a stable repr
        parts.append(f"R{type(value).__qualname__}:{value!r};".encode())


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    flat = tensor.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return hashlib.new(DIGEST_ALGORITHM, flat.view(torch.uint8).numpy()).digest()


# --------------------------------------------------------------------------- writing


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a kill at any moment leaves the old file or the new one,
    never a torn one: write a temporary file beside it, fsync, then rename over.

    A failed write (disk full, quota, I/O error) raises a CheckpointError naming the cause;
    the previous file at `path` is then intact and the temporary file removed."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    payload.pop(DIGEST_KEY, None)
    payload[DIGEST_KEY] = content_digest(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(error, path, state.get("epoch")) from None
    _remove_stale_temporaries(path)
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            sink = _WriteRecorder(handle)
            try:
                torch.save(payload, sink)
            except RuntimeError as error:
                # torch reports a failed handle.write as "unexpected pos ..."; the OSError
                # behind it is what the user needs to hear.
                if sink.error is None:
                    raise
                raise sink.error from error
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise _write_error(error, path, state.get("epoch")) from None
    finally:
        _unlink_quietly(temporary)
    _sync_directory(path)


def copy_checkpoint(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of the checkpoint `source` (cheaper than saving twice).
    Fails like save_checkpoint: a CheckpointError, the previous `target` intact."""
    source, target = Path(source), Path(target)
    _remove_stale_temporaries(target)
    temporary = _temporary_name(target)
    try:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as error:
        raise _write_error(error, target, None, copied_from=source) from None
    finally:
        _unlink_quietly(temporary)
    _sync_directory(target)


class _WriteRecorder:
    """The file handle torch.save writes to, keeping the first OSError a write raised."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            if self.error is None:
                self.error = error
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as error:
            if self.error is None:
                self.error = error
            raise


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. EIO on a failing disk: the error already raised says more
        pass


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what a process killed while writing `path` left behind: files named exactly
    `.NAME.PID.tmp` in `path`'s folder (NAME being `path`'s name, or best.pt / last.pt in a
    weights folder) whose PID is no running process. Nothing else is ever touched."""
    if os.name != "posix":  # os.kill(pid, 0) is the liveness test; on Windows it would kill
        return
    names = {path.name}
    if path.parent.name == CHECKPOINT_DIR:
        names |= {BEST_NAME, LAST_NAME}
    alternatives = "|".join(re.escape(name) for name in sorted(names))
    pattern = re.compile(rf"\.({alternatives})\.([0-9]+)\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and not _process_exists(pid):
            _unlink_quietly(Path(entry.path))


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return True  # not a real process id: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process; anything else: be careful
        return True
    return True


def _sync_directory(path: Path) -> None:
    """fsync `path`'s folder, making the rename itself durable (where the system can)."""
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            reason, _ = _WRITE_ERRORS.get(error.errno, (error.strerror or str(error), ""))
            raise CheckpointError(
                f"{reason} while syncing {path.parent} after writing {path}: the new "
                f"checkpoint is in place but may not survive a power loss ({error})"
            ) from None
    finally:
        os.close(directory)


def _write_error(
    error: OSError, path: Path, epoch: Any, copied_from: Path | None = None
) -> CheckpointError:
    """What a failed checkpoint write means for the run, and what to do."""
    reason, fix = _WRITE_ERRORS.get(
        error.errno, (error.strerror or type(error).__name__, "fix the cause")
    )
    what = f"copying {copied_from.name} to {path}" if copied_from else f"writing {path}"
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        what += f" (epoch {epoch})"
    kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was replaced"
    if copied_from is not None and copied_from.is_file():
        kept += f"; {copied_from} holds this epoch"
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
    if run_dir is not None and (path.parent / LAST_NAME).is_file():
        then = f"{fix} and resume with: taolu train --resume {run_dir}"
    else:
        then = f"{fix} and train again"
    detail = f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error)
    return CheckpointError(f"{reason} while {what}; {kept}; {then} ({detail})")


# --------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path, *, resuming: bool = False) -> dict[str, Any]:
    """Read a taolu checkpoint, refusing anything else with a CheckpointError.

    weights_only=True is passed explicitly, which torch honours even when
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: no object in the file is ever constructed.
    Before torch reads it, the archive is inspected, and what it holds is bounded after
    (`torch_files.read_weights_only`); the digest is checked before anything else in the file
    is looked at, then the version and every field's type (`train_state.check_fields`; with
    `resuming`, also the fields only a resumed run reads).
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
    state = read_weights_only(path, "checkpoint")
    if isinstance(state, dict) and DIGEST_KEY in state:
        _verify_digest(state, path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a taolu checkpoint (no '{FORMAT}' marker)")
    check_fields(state, path, resuming=resuming)
    return state


def is_checkpoint_file(path: Path) -> bool:
    """Whether `path` is a file torch.save wrote with taolu's checkpoint marker in it: looked
    for in the first bytes of its pickle (the marker is the first key), loading nothing."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.filename.endswith("/data.pkl"):
                    with archive.open(entry) as handle:
                        return FORMAT.encode() in handle.read(MARKER_WINDOW)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        return False
    return False


def _verify_digest(state: dict[str, Any], path: Path) -> None:
    """Check (and take out) the digest save_checkpoint stored; refuse the file on mismatch."""
    stored = state.pop(DIGEST_KEY)
    algorithm = stored.partition(":")[0] if isinstance(stored, str) else None
    if algorithm != DIGEST_ALGORITHM:
        raise CheckpointError(
            f"{path}: corrupt or written by a newer taolu: its digest {stored!r:.80} is not "
            f"a {DIGEST_ALGORITHM} digest; nothing from it was used"
        )
    if content_digest(state) != stored:
        raise CheckpointError(
            f"{path}: corrupt: its contents do not match the digest saved with them (a "
            f"flipped bit on disk or a damaged copy); nothing from it was used. Use the run's "
            f"other checkpoint ({BEST_NAME} or {LAST_NAME}) or a backup copy"
        )


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


def read_state(path: str | Path, *, resuming: bool = False) -> TrainState:
    """The TrainState in a checkpoint file, read by `load_checkpoint` and checked field by field
    (with `resuming`, also for what only a resumed run reads)."""
    return TrainState.from_dict(
        load_checkpoint(path, resuming=resuming), source=path, resuming=resuming
    )


def save_state(state: TrainState, path: Path) -> None:
    """`save_checkpoint` of a TrainState."""
    save_checkpoint(state.to_dict(), path)


__all__ = [
    "BEST_NAME",
    "CHECKPOINT_DIR",
    "FORMAT",
    "LAST_NAME",
    "copy_checkpoint",
    "find_checkpoint",
    "inference_weights",
    "load_checkpoint",
    "read_state",
    "save_checkpoint",
    "save_state",
]
