"""Files torch.save wrote, read without trusting them: the zip archive inspected before torch
reads it (no compressed entries, no TorchScript, no growth beyond the file), torch's
weights-only unpickler, and what it loaded bounded in depth and size."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taolu.errors import CheckpointError

# How deep loaded contents may nest (taolu's own checkpoints nest about 6 levels), and how many
# values beyond one per byte of the file's pickle they may unfold into (see `check_structure`).
MAX_NESTING = 64
STRUCTURE_ALLOWANCE = 10_000
SCRIPT_EXPANSION = 16  # how many times its size a TorchScript archive may expand (code: ~5)
TORCHSCRIPT = "TorchScript"  # `what` for an archive that is meant to hold code


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
    if scripted and what != TORCHSCRIPT:
        raise CheckpointError(
            f"{path}: refused: this is a TorchScript archive, which holds code, not a {what}. "
            "taolu loads TorchScript only as an exported model named *.torchscript.pt, and "
            "only with --trust-code (taolu predict or serve)"
        )
    compressed = [entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    size, expanded = path.stat().st_size, sum(entry.file_size for entry in entries)
    if what == TORCHSCRIPT:  # torch.jit.save deflates the code: bound the growth instead
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
