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
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taolu.errors import CheckpointError

FORMAT = "taolu-checkpoint"
VERSION = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
CHECKPOINT_DIR = "weights"
DIGEST_KEY = "digest"
DIGEST_ALGORITHM = "sha256"
# How deep loaded contents may nest (taolu's own checkpoints nest about 6 levels), and how many
# values beyond one per byte of the file's pickle they may unfold into (see `check_structure`).
MAX_NESTING = 64
STRUCTURE_ALLOWANCE = 10_000
MARKER_WINDOW = 4096  # bytes of a checkpoint's pickle searched for FORMAT
SCRIPT_EXPANSION = 16  # how many times its size a TorchScript archive may expand (code: ~5)

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
    Before torch reads it, the archive is inspected (see `check_archive`); after, its shape is
    bounded (`check_structure`), the digest is checked before anything else in the file is
    looked at, and then every field's type (`check_fields`; with `resuming`, also the fields
    only a resumed run reads).
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
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer taolu (format {version!r:.40}); upgrade taolu"
        )
    check_fields(state, path, resuming=resuming)
    return state


def read_weights_only(path: Path, what: str) -> Any:
    """What torch.save wrote to `path`, read by torch's weights-only unpickler once the archive
    passed `check_archive`, and bounded by `check_structure`. `what` names the file in
    messages ("checkpoint", "weights file")."""
    check_archive(path, what)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain values "
            f"(loading them could run code). Nothing in it was executed. ({first_line})"
        ) from None
    except RecursionError:
        raise CheckpointError(
            f"{path}: refused: its contents are nested too deeply to read; no {what} taolu "
            "writes looks like this"
        ) from None
    except Exception as error:  # torch raises many kinds for torn or foreign files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable {what} (truncated or corrupt?): {first_line}"
        ) from None
    check_structure(loaded, path, limit=_pickle_size(path) + STRUCTURE_ALLOWANCE)
    return loaded


def _pickle_size(path: Path) -> int:
    """The bytes of the pickle in a file torch.save wrote: its data.pkl entry (the tensors'
    bytes lie in entries of their own), or the whole file in torch's old format."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            sizes = [e.file_size for e in archive.infolist() if e.filename.endswith("data.pkl")]
        if sizes:
            return max(sizes)
    return path.stat().st_size


def check_archive(path: Path, what: str = "checkpoint") -> None:
    """Refuse a zip archive that would grow in memory beyond the file: torch.save stores every
    entry uncompressed, so a compressed entry, or entries whose sizes add up to more than the
    file holds (entries sharing their bytes), mark a file made to expand when read (a zip
    bomb). Nothing is decompressed to find out; a file that is not a zip archive (torch's old
    format, which has no compression) passes. When `what` is not "TorchScript", an archive
    holding TorchScript (code) is refused too: it is never a checkpoint or weights file. A
    TorchScript archive (whose code torch deflates) may expand SCRIPT_EXPANSION-fold."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{path}: a damaged zip archive: {error}") from None
    scripted = any(entry.filename.endswith("/constants.pkl") for entry in entries)
    if scripted and what != "TorchScript":
        raise CheckpointError(
            f"{path}: refused: this is a TorchScript archive, which holds code, not a {what}. "
            "taolu loads TorchScript only as an exported model named *.torchscript.pt, with "
            "taolu predict --trust-code"
        )
    compressed = [entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    size, expanded = path.stat().st_size, sum(entry.file_size for entry in entries)
    if what == "TorchScript":  # torch.jit.save deflates the code: bound the growth instead
        if expanded > SCRIPT_EXPANSION * size + (1 << 20):
            raise CheckpointError(
                f"{path}: refused: its entries expand to {expanded:,} bytes from a file of "
                f"{size:,} (a zip bomb). Nothing in it was loaded"
            )
        return
    if compressed:
        raise CheckpointError(
            f"{path}: refused: its entry {compressed[0]!r:.120} is compressed, but torch.save "
            "stores every entry as it is; a compressed entry can expand to many times the "
            "file's size in memory (a zip bomb). Nothing in it was loaded"
        )
    if expanded > size:
        raise CheckpointError(
            f"{path}: refused: its entries add up to {expanded:,} bytes, more than the file's "
            f"own {size:,}, so they share bytes (a zip bomb). Nothing in it was loaded"
        )


def check_structure(value: Any, path: Path, *, limit: int) -> None:
    """Refuse loaded contents nested deeper than MAX_NESTING, or that unfold into more than
    `limit` values. A pickle can name one list many times over in a few bytes, so a small file
    could stand for billions of values (and hang whatever walks them, the digest included);
    in what torch.save writes every value costs at least a byte of its pickle. The walk is
    iterative, so no depth raises a RecursionError here."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if count > limit:
            raise CheckpointError(
                f"{path}: refused: its contents unfold into more than {limit:,} values (one "
                "part named many times over); no file taolu writes looks like this"
            )
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if children and depth >= MAX_NESTING:
            raise CheckpointError(
                f"{path}: refused: its contents are nested more than {MAX_NESTING} levels "
                "deep; no file taolu writes looks like this"
            )
        pending.extend((child, depth + 1) for child in children)


# Each top-level field a checkpoint may hold: the types its value may have, and whether every
# checkpoint must hold it. RESUME_FIELDS are further required to resume a run.
FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "model": ((Mapping,), True),
    "config": ((Mapping,), True),
    "classes": ((list, tuple), True),
    "preprocessing": ((Mapping,), True),
    "epoch": ((int,), True),
    "model_class": ((str,), True),
    "model_name": ((str, type(None)), False),
    "model_spec": ((list, type(None)), False),
    "ema_model": ((Mapping, type(None)), False),
    "ema_updates": ((int,), False),
    "optimizer": ((Mapping,), False),
    "scheduler": ((Mapping,), False),
    "grad_scaler": ((Mapping,), False),
    "total_steps": ((int,), False),
    "step": ((int,), False),
    "elapsed_seconds": ((int, float), False),
    "history": ((list, tuple), False),
    "best_val_acc": ((int, float), False),
    "best_epoch": ((int,), False),
    "rng": ((Mapping,), False),
    "partial_epoch": ((Mapping, type(None)), False),
    "confusion_matrix": ((list, tuple), False),
}
RESUME_FIELDS = (
    "optimizer",
    "scheduler",
    "total_steps",
    "step",
    "elapsed_seconds",
    "history",
    "best_val_acc",
    "best_epoch",
    "rng",
)
# The saved options that eval, predict and export read, and their types; the first four must
# be there (resume checks the whole saved config against TrainConfig's rules).
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "val_fraction": (int, float),
    "precision": (str,),
    "label_smoothing": (int, float),
    "model": (str,),
    "weights": (str, type(None)),
    "data_root": (str,),
}
REQUIRED_CONFIG = ("data", "val_fraction", "precision", "label_smoothing")


def check_fields(state: Mapping[str, Any], path: Path | str, *, resuming: bool = False) -> None:
    """Refuse a checkpoint whose fields are missing or of the wrong type (FIELD_TYPES,
    CONFIG_TYPES), whose weights are not name -> tensor, whose classes are not names, or whose
    stored preprocessing is out of bounds; with `resuming`, also one that lacks RESUME_FIELDS.
    Every reader can then use the fields without meeting a TypeError or KeyError."""
    from taolu.data.loaders import Preprocessing  # imported late: it pulls in the data sources

    def shown(types: tuple[type, ...]) -> str:
        return " or ".join("None" if kind is type(None) else kind.__name__ for kind in types)

    required = [key for key, (_, needed) in FIELD_TYPES.items() if needed]
    missing = [key for key in (*required, *(RESUME_FIELDS if resuming else ())) if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete taolu checkpoint, missing {', '.join(missing)}")
    for key, (types, _) in FIELD_TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or isinstance(value, bool)):
            raise CheckpointError(
                f"{path}: damaged checkpoint: {key!r} is a {type(value).__name__}, "
                f"not a {shown(types)}"
            )
    for key in ("model", "ema_model"):
        weights = state.get(key) or {}
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
            raise CheckpointError(f"{path}: damaged checkpoint: {key!r} is not name -> tensor")
    classes = state["classes"]
    if not classes or not all(isinstance(name, str) for name in classes):
        raise CheckpointError(f"{path}: damaged checkpoint: 'classes' must be a list of names")
    config = state["config"]
    missing = [key for key in REQUIRED_CONFIG if key not in config]
    if missing:
        raise CheckpointError(
            f"{path}: damaged checkpoint: its saved config lacks {', '.join(missing)}"
        )
    for key, types in CONFIG_TYPES.items():
        value = config.get(key)
        if key in config and (not isinstance(value, types) or isinstance(value, bool)):
            raise CheckpointError(
                f"{path}: damaged checkpoint: its saved option {key!r} is a "
                f"{type(value).__name__}, not a {shown(types)}"
            )
    try:
        Preprocessing.from_dict(state["preprocessing"])
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


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
