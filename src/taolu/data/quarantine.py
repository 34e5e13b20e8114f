"""`taolu data check --quarantine DIR`: the one place taolu moves a user's files, and only
when asked: the unreadable files a DataReport lists go into DIR at their paths relative to the
data root, never over an existing file, never a file outside the root."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from taolu.data.check_report import DataReport
from taolu.errors import ConfigError, DataError

# Move a symlink itself, as `mv` would, not the file it points to.
LINK_OPTIONS = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}


def quarantine(report: DataReport, target: Path, data_root: Path) -> list[tuple[Path, Path]]:
    """Move `report.bad_files` into `target`, each at its path relative to `data_root`.

    Nothing in `target` is overwritten: a name already taken gets a number (x.1.jpg). Every
    path is checked before the first move. Returns (from, to) for each file moved.
    """
    root, target = Path(os.path.abspath(data_root)), Path(os.path.abspath(target))
    real_root = Path(os.path.realpath(root))
    if Path(os.path.realpath(target)).is_relative_to(real_root):
        raise ConfigError(
            f"quarantine folder {target} is inside the data root {root}; "
            "training would read it as data, choose a folder outside"
        )
    plans = []
    for path in report.bad_files:
        source = Path(os.path.abspath(path))
        if not os.path.lexists(source):  # already moved by an earlier call with this report
            continue
        # Resolved, not compared as text: a linked folder inside the root (or a link as the
        # file) may lead anywhere, and only what really lies in the root is moved.
        real_folder = Path(os.path.realpath(source.parent))
        real_file = Path(os.path.realpath(source))
        if not (
            source.is_relative_to(root)
            and real_folder.is_relative_to(real_root)
            and real_file.is_relative_to(real_root)
        ):
            raise DataError(
                f"{source} is not inside the data root {real_root} once links are followed "
                f"(it is {real_file}); quarantine moves only files that lie in the root. "
                "Nothing was moved"
            )
        plans.append((source, real_folder / source.name, target / source.relative_to(root)))
    moves = []
    for source, real_source, destination in plans:
        try:
            moves.append((source, _move_without_overwrite(real_source, destination)))
        except OSError as error:
            raise DataError(
                f"could not move {source} ({error}); {len(moves)} moved before it"
            ) from None
    return moves


def _move_without_overwrite(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = destination.stem, destination.suffix
    for number in range(10_000):
        candidate = destination.with_name(f"{stem}.{number}{suffix}") if number else destination
        if _place(source, candidate):
            os.unlink(source)
            return candidate
    raise OSError(errno.EEXIST, f"no free name for {source.name} in {destination.parent}")


def _place(source: Path, destination: Path) -> bool:
    """Link, or else copy, `source` to `destination`; False if that name is taken. A hard
    link or an exclusive create fails on an existing name, where a rename would replace it."""
    try:
        os.link(source, destination, **LINK_OPTIONS)
        return True
    except FileExistsError:
        return False
    except OSError as error:  # another file system, or one without hard links: copy instead
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    try:
        with open(source, "rb") as reader, open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer)
    except FileExistsError:
        return False
    shutil.copystat(source, destination)
    return True
