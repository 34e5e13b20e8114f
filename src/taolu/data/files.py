"""Finding files under a data folder safely: hidden files, symlink loops, links that leave the
root, FIFOs and unreadable folders are passed over with a reason, never followed into a hang."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class FolderWalk:
    """What a walk under one folder found, each list sorted by path."""

    images: list[Path] = field(default_factory=list)  # regular files with an image suffix
    others: list[Path] = field(default_factory=list)  # regular files of any other kind
    passed_over: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def walk_folder(folder: Path, root: Path | None = None) -> FolderWalk:
    """Every file under `folder`, recursively, in sorted order.

    Symlinks are followed only when they resolve inside `root` (default: `folder`) and
    were not visited before (so loops end); FIFOs, sockets and devices are never opened.
    """
    folder = Path(folder)
    root_resolved = Path(root or folder).resolve()
    walk = FolderWalk()
    seen_dirs: set[Path] = set()
    pending = [folder]
    while pending:
        directory = pending.pop()
        real = directory.resolve()
        if real in seen_dirs:
            walk.passed_over.append((directory, "symlink loop: folder already visited"))
            continue
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            walk.passed_over.append((directory, f"folder not readable: {error.strerror}"))
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if is_hidden(entry.name):
                continue
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    walk.passed_over.append((path, "broken symlink or symlink loop"))
                    continue
                if not target.is_relative_to(root_resolved):
                    walk.passed_over.append(
                        (path, f"symlink points outside the data root ({target})")
                    )
                    continue
            try:
                mode = os.stat(path).st_mode  # follows links: they point inside the root
            except OSError as error:
                walk.passed_over.append((path, f"cannot stat: {error.strerror}"))
                continue
            if stat.S_ISDIR(mode):
                subfolders.append(path)
            elif not stat.S_ISREG(mode):
                walk.passed_over.append((path, "not a regular file (FIFO, socket or device)"))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                walk.images.append(path)
            else:
                walk.others.append(path)
        pending.extend(reversed(subfolders))
    walk.images.sort()
    walk.others.sort()
    return walk
