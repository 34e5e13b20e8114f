"""`taolu data check|export|preview|bench` as a user runs them: `python -m taolu data ...` in
subprocesses, started together in one wave (each spends seconds importing torch), and the
quick refusals in-process through `taolu.cli.main`.

The pieces behind the commands have their own tests (test_data_check.py, test_export.py,
test_transforms.py); these check the commands: exit codes, what they print, what they
write, and that they leave the user's files alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_check import noise, tree_state, write_corrupt_jpeg

CLASSES = ("ant", "bee")


def clean_folder(root: Path, per_class: int = 10) -> Path:
    """root/<ant|bee>/ of distinct 16 px RGB PNGs."""
    for label, name in enumerate(CLASSES):
        for index in range(per_class):
            noise(root / name / f"{name}{index}.png", seed=100 * label + index)
    return root


def bad_folder(root: Path) -> tuple[Path, list[Path]]:
    """16 good images and 3 unreadable ones (15.8%, more than the 10% training accepts)."""
    clean_folder(root, per_class=8)
    zero, text = root / "ant" / "empty.jpg", root / "bee" / "readme.jpg"
    zero.write_bytes(b"")
    text.write_text("these are bees\n")
    corrupt = write_corrupt_jpeg(root / "bee" / "broken.jpg")
    return root, sorted([zero, text, corrupt])


@pytest.fixture(scope="module")
def wave(tmp_path_factory, run_cli_many):
    """Every data command that needs its own process, run concurrently; the inputs, their
    state before, and the results by key."""
    base = tmp_path_factory.mktemp("data_cli")
    clean = clean_folder(base / "clean")
    bad, bad_files = bad_folder(base / "bad")
    to_quarantine, quarantined = bad_folder(base / "to_quarantine")
    photos = clean_folder(base / "photos", per_class=12)
    before = {name: tree_state(base / name) for name in ("clean", "bad", "photos")}
    before["to_quarantine"] = tree_state(to_quarantine)
    jobs = {
        "check-clean": (["data", "check", clean], base),
        "check-bad": (["data", "check", bad], base),
        "quarantine": (["data", "check", to_quarantine, "--quarantine", base / "held"], base),
        "export": (["data", "export", "digits", base / "exported"], base),
        "preview": (["data", "preview", photos, "--output", base / "grid.png"], base),
        "bench-mnist": (["data", "bench", "mnist5k", "--epochs", 2, "--json"], base),
        "bench-folder": (
            [
                "data",
                "bench",
                photos,
                "--image-size",
                16,
                "--cache",
                "ram",
                "--epochs",
                2,
                "--batch-size",
                8,
                "--json",
            ],
            base,
        ),  # fmt: skip
    }
    results = run_cli_many(jobs)
    return {
        "base": base,
        "results": results,
        "before": before,
        "bad_files": bad_files,
        "quarantined": quarantined,
    }


def ran(wave: dict, key: str):
    result = wave["results"][key]
    assert "Traceback" not in result.stderr, result.stderr
    return result


# --------------------------------------------------------------------------- data check


@pytest.mark.slow
def test_check_passes_a_clean_folder_and_changes_nothing(wave):
    result = ran(wave, "check-clean")
    assert result.returncode == 0, result.stderr
    assert "ok to train" in result.stdout
    assert "ant" in result.stdout and "bee" in result.stdout
    assert tree_state(wave["base"] / "clean") == wave["before"]["clean"]


@pytest.mark.slow
def test_check_fails_a_folder_with_too_many_unreadable_files_and_prints_them(wave):
    result = ran(wave, "check-bad")
    assert result.returncode == 1
    for path in wave["bad_files"]:
        assert str(path) in result.stdout
    assert "training would refuse" in result.stdout and "3 of 19" in result.stdout
    # Without --quarantine the check moves, writes and changes nothing.
    assert tree_state(wave["base"] / "bad") == wave["before"]["bad"]


@pytest.mark.slow
def test_quarantine_moves_only_the_bad_files_and_reports_each_move(wave):
    result = ran(wave, "quarantine")
    assert result.returncode == 1  # the report is of the data as it was found
    root, held = wave["base"] / "to_quarantine", wave["base"] / "held"
    before = wave["before"]["to_quarantine"]
    bad = {str(path.relative_to(root)): path for path in wave["quarantined"]}
    for relative, path in bad.items():
        target = held / relative
        assert f"moved {path} -> {target}" in result.stderr
        assert not path.exists()
        assert tree_state(held)[relative][1] == before[relative][1]  # same bytes, kept place
    assert "moved 3 unreadable file(s)" in result.stderr
    # The good files are untouched, byte for byte and by modification time.
    assert tree_state(root) == {key: value for key, value in before.items() if key not in bad}
    moved = {str(p.relative_to(held)) for p in held.rglob("*") if p.is_file()}
    assert moved == set(bad)


def test_check_json_parses_and_lists_the_bad_files(tmp_path, cli_main):
    root, bad = bad_folder(tmp_path / "bad")
    before = tree_state(root)
    code, out, _ = cli_main("data", "check", root, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["blocking"] is True
    assert report["bad_files"] == [str(path) for path in bad]
    assert report["classes"] == list(CLASSES)
    assert tree_state(root) == before


def test_check_of_a_missing_folder_exits_2_without_a_traceback(tmp_path, cli_main):
    code, out, err = cli_main("data", "check", tmp_path / "nothing_here")
    assert code == 2
    assert err.startswith("taolu: error:") and "nothing_here" in err
    assert "Traceback" not in err and out == ""


# --------------------------------------------------------------------------- data export


@pytest.mark.slow
def test_export_writes_train_and_val_class_folders_of_pngs(wave):
    result = ran(wave, "export")
    assert result.returncode == 0, result.stderr
    target = wave["base"] / "exported"
    assert sorted(p.name for p in target.iterdir()) == ["train", "val"]
    counts = {}
    for split in ("train", "val"):
        folders = sorted(p.name for p in (target / split).iterdir())
        assert folders == [str(d) for d in range(10)]
        files = list((target / split).rglob("*"))
        assert all(p.suffix == ".png" for p in files if p.is_file())
        counts[split] = sum(p.is_file() for p in files)
    assert counts["train"] + counts["val"] == 1797 and counts["val"] > 300
    assert f"{counts['train']} train" in result.stdout and f"{counts['val']} val" in result.stdout
    with Image.open(next((target / "val" / "7").iterdir())) as image:
        assert image.size == (8, 8) and image.mode == "L"
    assert not [p for p in wave["base"].iterdir() if p.name.startswith(".exported")]


def test_export_into_a_non_empty_folder_fails_without_touching_it(tmp_path, cli_main):
    target = tmp_path / "mine"
    (target / "train").mkdir(parents=True)
    (target / "notes.txt").write_text("my notes\n")
    (target / "train" / "keep.png").write_bytes(b"\x89PNG not really")
    before = tree_state(target)
    code, out, err = cli_main("data", "export", "digits", target)
    assert code == 2
    assert "not empty" in err and "never overwrites" in err and str(target) in err
    assert "Traceback" not in err
    assert tree_state(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left


# --------------------------------------------------------------------------- data preview


@pytest.mark.slow
def test_preview_writes_a_png_grid_and_leaves_the_data_alone(wave):
    result = ran(wave, "preview")
    assert result.returncode == 0, result.stderr
    grid = wave["base"] / "grid.png"
    assert grid.stat().st_size > 0
    with Image.open(grid) as image:
        assert image.format == "PNG"
        assert image.width > 16 and image.height > 16
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # a picture, not a blank canvas
    assert str(grid) in result.stdout
    assert tree_state(wave["base"] / "photos") == wave["before"]["photos"]


def test_preview_never_overwrites_an_existing_file(tmp_path, cli_main):
    root = clean_folder(tmp_path / "photos", per_class=4)
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"my own picture")
    code, _, err = cli_main("data", "preview", root, "--output", existing)
    assert code == 2
    assert "already exists" in err and str(existing) in err
    assert existing.read_bytes() == b"my own picture"


# --------------------------------------------------------------------------- data bench


@pytest.mark.slow
def test_bench_of_an_embedded_set_prints_one_json_object(wave):
    result = ran(wave, "bench-mnist")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the whole of stdout is the one object
    assert isinstance(report, dict)
    rates = report["images_per_second"]
    assert isinstance(rates, list) and len(rates) == 2
    assert all(isinstance(rate, (int, float)) and rate > 0 for rate in rates)
    assert report["cache"] == "tensors"  # embedded data is in memory from the start
    assert report["images"] == 4000 and report["size"] == [28, 28]


@pytest.mark.slow
def test_bench_of_a_folder_reports_the_ram_cache_at_the_asked_size(wave):
    result = ran(wave, "bench-folder")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cache"] == "ram"
    assert report["size"] == [16, 16]
    assert report["images"] + 4 == 24  # 20% of 2 x 12 held out for validation
    assert len(report["images_per_second"]) == 2
    assert all(rate > 0 for rate in report["images_per_second"])
    assert report["skipped_files"] == 0
    assert tree_state(wave["base"] / "photos") == wave["before"]["photos"]


def test_bench_refuses_an_unknown_data_set_and_a_bad_option(tmp_path, cli_main):
    code, out, err = cli_main("data", "bench", tmp_path / "absent", "--epochs", 1)
    assert code == 2 and "absent" in err and "Traceback" not in err and out == ""
    root = clean_folder(tmp_path / "photos", per_class=4)
    code, out, err = cli_main("data", "bench", root, "--cache", "sometimes", "--json")
    assert code == 2 and "cache" in err and "sometimes" in err and out == ""
