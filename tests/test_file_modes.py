"""The files taolu writes take the user's umask, like any file the user's own programs write:
readable by others under umask 022, never narrowed to the owner alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import taolu
from taolu.data.preview import save_preview


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_a_runs_files_and_a_preview_take_the_umask(tmp_path, umask_022):
    result = taolu.train(data="digits", epochs=1, out=str(tmp_path), progress=False, verbose=False)
    run = Path(result.run_dir)
    preview = save_preview(
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8), [0, 1, 2, 3], list("0123"),
        tmp_path / "preview.png",
    )  # fmt: skip
    found = modes(run)
    found["preview.png"] = stat.S_IMODE(preview.stat().st_mode)
    # The files the issue named are among them: the report's samples and the preview.
    assert {"report/val_samples.safetensors", "report/report.html", "preview.png"} <= set(found)
    assert {name: mode for name, mode in found.items() if mode != 0o644} == {}
