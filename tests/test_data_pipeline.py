"""The data path working as one, through `taolu.train`, `taolu.evaluate`, `taolu.predict` and
the CLI's `main`: source -> decoded cache -> refusal of broken data -> per-sample transforms ->
batches, on tiny data generated in tmp_path (nothing downloaded, no timing asserted).

The pieces have their own tests (test_data.py, test_data_check.py, test_disk_sets.py,
test_transforms.py, test_export.py); these check that they hold together in real runs.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_data_check import (
    noise,
    tree_state,
    write_bomb_png,
    write_corrupt_jpeg,
    write_odd_images,
    write_truncated_png,
)
from test_disk_sets import CIFAR10_NAMES, write_cifar10_root

import taolu
from taolu.checkpoint import load_checkpoint
from taolu.data.decode import decode_file
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from taolu.rebuild import restore_model

CLASSES = ("ant", "bee")
TRANSFORM_LIST = [
    {"name": "RandomHorizontalFlip"},
    {"name": "RandomCrop", "args": {"size": 24, "padding": 2}},
]
TRANSFORM_YAML = "[{name: RandomHorizontalFlip}, {name: RandomCrop, args: {size: 24, padding: 2}}]"


# --------------------------------------------------------------------------- helpers


def tiny(out: Path, quiet: dict, **options) -> dict:
    """The options of a tiny run into `out`: 1 epoch, small batches, no worker processes."""
    return {"epochs": 1, "batch_size": 8, "workers": 0, "out": str(out), **quiet, **options}


def two_class_folder(make_class_folder, root: Path, count: int, size: int) -> Path:
    """root/ant (dark) and root/bee (bright): `count` PNGs of `size` px each."""
    for label, name in enumerate(CLASSES):
        make_class_folder(root / name, label, count, seed=10 + label, size=size)
    return root


def summary_of(result: taolu.TrainResult) -> dict:
    """summary.json as written in the run directory (not the in-memory copy)."""
    return json.loads((result.run_dir / "summary.json").read_text(encoding="utf-8"))


def manifest_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "split.json").read_text(encoding="utf-8"))


def cache_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file in a cache folder: name -> (inode, mtime_ns)."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def learned(history: list[dict]) -> list[dict]:
    """The history without its clock readings: what two identical runs must share."""
    return [{k: v for k, v in row.items() if "second" not in k} for row in history]


def weight_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.pt")) if out.exists() else []


def probabilities(result: dict) -> dict[str, float]:
    return {p["class"]: p["probability"] for p in result["predictions"]}


def within(seconds: float, job):
    """Run `job()` on a thread; fail if it has not finished in `seconds` (a FIFO opened for
    reading, or a symlink loop followed, would block or spin forever)."""
    result: dict = {}

    def run():
        try:
            result["value"] = job()
        except BaseException as error:  # handed to the test's thread
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def loader_spy(monkeypatch):
    """Records the worker count of every DataLoader that Batches builds (it still builds it):
    an empty list means the batches came straight from in-memory tensors."""
    made: list[int] = []
    original = Batches._loader

    def spy(self, dataset, order):
        loader = original(self, dataset, order)
        made.append(loader.num_workers)
        return loader

    monkeypatch.setattr(Batches, "_loader", spy)
    return made


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, make_class_folder, quiet):
    """One finished run on a 24 px colour folder (squash), for the predict tests. A gentle lr
    keeps its probabilities short of 0 and 1, so a wrongly turned image shows in them."""
    base = tmp_path_factory.mktemp("colour_run")
    root = two_class_folder(make_class_folder, base / "photos", 10, 24)
    return taolu.train(data=str(root), **tiny(base / "runs", quiet, epochs=2, lr=0.005))


# --------------------------------------------------------------------------- 1. decoded cache


def test_ram_cache_trains_from_memory_without_a_dataloader(
    tmp_path, make_class_folder, quiet, loader_spy
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    result = taolu.train(data=str(root), cache="ram", **tiny(tmp_path / "runs", quiet))
    assert summary_of(result)["cache"] == "ram"
    assert loader_spy == []  # every batch was sliced from the decoded tensors


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_off_reads_files_through_a_dataloader_every_epoch(
    tmp_path, make_class_folder, quiet, loader_spy, workers
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    options = tiny(tmp_path / "runs", quiet, epochs=2, workers=workers)
    result = taolu.train(data=str(root), cache="off", **options)
    summary = summary_of(result)
    assert summary["cache"] == "off"
    assert summary["epochs_completed"] == 2
    # At least a train and a val loader per epoch, with the asked worker processes.
    assert loader_spy.count(workers) >= 4, loader_spy
    assert summary["skipped_files"] == []


def test_disk_cache_is_written_outside_the_data_reused_and_rebuilt_on_any_change(
    tmp_path, make_class_folder, quiet, tree_snapshot
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    cache = tmp_path / "cache"
    options = tiny(tmp_path / "runs", quiet, cache="disk", cache_dir=str(cache))
    data_before = tree_snapshot(root)

    first = taolu.train(data=str(root), **options)
    built = cache_files(cache)
    keys = {Path(name).stem for name in built}
    # One memory-mapped file and one metadata file per split, and nothing else.
    assert sorted(built) == sorted(f"{key}{ext}" for key in keys for ext in (".u8", ".json"))
    assert len(keys) == 2
    assert summary_of(first)["cache"] == "disk"
    for key in keys:
        meta = json.loads((cache / f"{key}.json").read_text())
        assert (cache / f"{key}.u8").stat().st_size == int(np.prod(meta["shape"]))
        assert meta["shape"][1:] == [3, 16, 16]

    second = taolu.train(data=str(root), **options)
    assert cache_files(cache) == built  # reused: same files, same inodes, not rewritten
    assert summary_of(second)["cache"] == "disk"
    # Same seed, same decoded pixels: the reused cache trains exactly like the fresh one.
    assert learned(second.history) == learned(first.history)
    assert tree_snapshot(root) == data_before  # nothing written into the data folder

    def new_keys_after(change) -> set[str]:
        before = set(cache_files(cache))
        change()
        taolu.train(data=str(root), **options)
        after = set(cache_files(cache))
        assert before <= after  # old entries are left for the runs that still match them
        added = after - before
        stems = {Path(name).stem for name in added}
        assert added == {f"{stem}{ext}" for stem in stems for ext in (".u8", ".json")}
        return stems

    # Touching one file changes the key of the one split that holds it.
    touched = root / "ant" / "img000.png"
    status = touched.stat()

    def touch():
        os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))

    assert len(new_keys_after(touch)) == 1
    make_class_folder(tmp_path / "extra", 0, 1, seed=99, size=16)
    added = root / "ant" / "added.png"
    assert new_keys_after(lambda: (tmp_path / "extra" / "img000.png").rename(added))
    assert new_keys_after(lambda: (root / "bee" / "img003.png").unlink())
    options["image_size"] = 12
    assert len(new_keys_after(lambda: None)) == 2
    # No run ever wrote into the data folder: only the user's own edits differ.
    after = tree_snapshot(root)
    assert set(after) == (set(data_before) | {"ant/added.png"}) - {"bee/img003.png"}
    assert all(not name.startswith(".") for name in os.listdir(root / "ant"))


def test_disk_cache_without_cache_dir_goes_to_the_user_cache_not_the_data(
    tmp_path, make_class_folder, quiet, tree_snapshot, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = two_class_folder(make_class_folder, tmp_path / "photos", 6, 16)
    before = tree_snapshot(root)
    taolu.train(data=str(root), cache="disk", **tiny(tmp_path / "runs", quiet))
    written = cache_files(tmp_path / "xdg" / "taolu")
    assert len([name for name in written if name.endswith(".u8")]) == 2
    assert tree_snapshot(root) == before


def test_disk_and_ram_caches_train_identically(tmp_path, make_class_folder, quiet):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    runs = {
        mode: taolu.train(
            data=str(root),
            cache=mode,
            cache_dir=str(tmp_path / "cache"),
            **tiny(tmp_path / "runs", quiet, epochs=2),
        )
        for mode in ("ram", "disk")
    }
    losses = {mode: [row["train_loss"] for row in run.history] for mode, run in runs.items()}
    val = {mode: [row["val_loss"] for row in run.history] for mode, run in runs.items()}
    assert losses["ram"] == losses["disk"]
    assert val["ram"] == val["disk"]


# --------------------------------------------------------------------------- 2. equivalence


def test_cached_and_uncached_training_reach_comparable_accuracy(tmp_path, make_class_folder, quiet):
    """The issue's requirement: the decoded cache changes speed, not what is learned."""
    root = two_class_folder(make_class_folder, tmp_path / "easy", 40, 24)
    accuracy = {}
    for mode in ("ram", "off"):
        options = tiny(tmp_path / "runs", quiet, epochs=2, batch_size=16)
        result = taolu.train(data=str(root), cache=mode, **options)
        summary = summary_of(result)
        assert summary["cache"] == mode
        assert summary["train_samples"] == 64 and summary["val_samples"] == 16
        accuracy[mode] = summary["best_val_acc"]
    # Both learn the easy task, and neither way falls behind the other.
    assert min(accuracy.values()) >= 0.9, accuracy
    assert abs(accuracy["ram"] - accuracy["off"]) <= 0.15, accuracy


# --------------------------------------------------------------------------- 3. bad files


@pytest.fixture
def folder_with_bad_files(tmp_path, make_class_folder) -> tuple[Path, list[Path]]:
    """40 good images and 4 unreadable ones (9.1%, under the default 10%): a corrupt JPEG,
    a truncated PNG, a zero-byte file and text named .jpg."""
    root = two_class_folder(make_class_folder, tmp_path / "photos", 20, 16)
    zero, text = root / "ant" / "zero.jpg", root / "bee" / "notes.jpg"
    zero.write_bytes(b"")
    text.write_text("not a picture\n")
    corrupt = write_corrupt_jpeg(root / "ant" / "corrupt.jpg")
    truncated = write_truncated_png(root / "bee" / "truncated.png")
    return root, [corrupt, zero, truncated, text]


@pytest.mark.parametrize("cache, workers", [("ram", 0), ("disk", 0), ("off", 2)])
def test_unreadable_files_are_skipped_and_each_listed_once(
    tmp_path, folder_with_bad_files, quiet, cache, workers, tree_snapshot
):
    root, bad = folder_with_bad_files
    before = tree_snapshot(root)
    options = tiny(tmp_path / "runs", quiet, epochs=2, workers=workers)
    result = taolu.train(data=str(root), cache=cache, cache_dir=str(tmp_path / "cache"), **options)
    summary = summary_of(result)
    assert summary["cache"] == cache
    assert summary["epochs_completed"] == 2
    listed = [entry["path"] for entry in summary["skipped_files"]]
    assert sorted(listed) == sorted(str(path) for path in bad)  # each exactly once
    for entry in summary["skipped_files"]:
        assert entry["reason"].startswith(entry["path"] + ": ")
        assert len(entry["reason"]) > len(entry["path"]) + 5
    assert tree_snapshot(root) == before


def test_too_many_unreadable_files_refuse_training_before_it_starts(
    tmp_path, folder_with_bad_files, quiet
):
    root, bad = folder_with_bad_files
    out = tmp_path / "runs"
    with pytest.raises(taolu.DataError) as caught:
        taolu.train(data=str(root), cache="ram", max_bad_fraction=0.05, **tiny(out, quiet))
    message = str(caught.value)
    assert "4 of 44" in message and "9.1%" in message
    assert f"taolu data check {root}" in message
    assert any(str(path) in message for path in bad)
    assert weight_files(out) == []
    assert not out.exists() or not any(out.rglob("summary.json"))


def test_max_bad_fraction_one_trains_on_whatever_is_readable(tmp_path, make_class_folder, quiet):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    bad = [root / name / f"broken{i}.png" for name in CLASSES for i in range(10)]
    for path in bad:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 7)
    options = tiny(tmp_path / "runs", quiet)
    with pytest.raises(taolu.DataError):
        taolu.train(data=str(root), cache="ram", **options)
    result = taolu.train(data=str(root), cache="ram", max_bad_fraction=1.0, **options)
    summary = summary_of(result)
    assert sorted(entry["path"] for entry in summary["skipped_files"]) == sorted(map(str, bad))
    assert summary["train_samples"] + summary["val_samples"] == 16


def test_cache_off_refuses_the_same_broken_data_as_the_ram_cache(
    tmp_path, make_class_folder, quiet
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 16)
    for name in CLASSES:
        for index in range(3):
            write_truncated_png(root / name / f"cut{index}.png")
    options = tiny(tmp_path / "runs", quiet)
    with pytest.raises(taolu.DataError):  # 6 of 22 unreadable
        taolu.train(data=str(root), cache="ram", **options)
    with pytest.raises(taolu.DataError):
        taolu.train(data=str(root), cache="off", **options)


def test_a_skipped_file_with_a_colon_in_its_name_is_listed_under_its_full_path(
    tmp_path, make_class_folder, quiet
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 10, 16)
    bad = root / "ant" / "scan: page 2.jpg"
    bad.write_text("not a picture\n")
    result = taolu.train(data=str(root), cache="ram", **tiny(tmp_path / "runs", quiet))
    assert [entry["path"] for entry in summary_of(result)["skipped_files"]] == [str(bad)]


def hostile_tree(tmp_path: Path, make_class_folder) -> tuple[Path, dict]:
    """A folder of 2 x 10 good images plus everything a real folder may hold that must be
    passed over: hidden files, a .git folder, symlink loops, links out of the root and into
    a sibling class, and a FIFO named like an image."""
    root = two_class_folder(make_class_folder, tmp_path / "photos", 10, 16)
    outside = tmp_path / "elsewhere"
    make_class_folder(outside, 1, 1, seed=7, size=16)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "ant" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    # macOS's AppleDouble companions: named like images, unreadable as images.
    (root / "ant" / "._img000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (root / "bee" / ".thumbs").mkdir()
    (root / "bee" / ".thumbs" / "img000.png").write_bytes(b"\x89PNG cut short")
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".git" / "objects" / "junk.png").write_bytes(b"not a png")
    ant = root / "ant"
    links = {
        "loop_dir": (ant / "loop", ant),  # a folder link back to its own folder
        "loop_a": (ant / "a.jpg", Path("b.jpg")),  # two links pointing at each other
        "loop_b": (ant / "b.jpg", Path("a.jpg")),
        "outside": (ant / "outside.png", outside / "img000.png"),
        "sibling_file": (ant / "bee_photo.png", Path("../bee/img000.png")),
        "sibling_dir": (ant / "bees", Path("../bee")),
    }
    for link, target in links.values():
        os.symlink(target, link)
    fifo = ant / "x.jpg"
    os.mkfifo(fifo)
    return root, {"fifo": fifo, **{key: link for key, (link, _) in links.items()}}


@pytest.mark.parametrize("cache, workers", [("ram", 0), ("off", 2)])
def test_links_fifos_and_hidden_files_never_hang_mislabel_or_change_anything(
    tmp_path, make_class_folder, quiet, cache, workers
):
    root, odd = hostile_tree(tmp_path, make_class_folder)
    before = tree_state(root)
    options = tiny(tmp_path / "runs", quiet, workers=workers)

    def everything():
        result = taolu.train(data=str(root), cache=cache, **options)
        evaluated = taolu.evaluate(result.run_dir)
        predicted = taolu.predict(result.run_dir, [root / "ant", odd["fifo"]], topk=1)
        return result, evaluated, predicted

    result, evaluated, predicted = within(120, everything)
    summary = summary_of(result)
    # Exactly the 20 real images: no link, FIFO or hidden file was used or counted as bad.
    assert summary["train_samples"] + summary["val_samples"] == 20
    assert summary["skipped_files"] == []
    paths = {entry["path"] for entry in manifest_of(result.run_dir)["files"]}
    assert paths == {f"{name}/img{i:03d}.png" for name in CLASSES for i in range(10)}
    assert evaluated["samples"] == summary["val_samples"]
    *images, fifo_result = predicted
    # The folder gives ant's own 10 images once each: links leaving it are not followed.
    assert sorted(Path(item["path"]).name for item in images) == [
        f"img{i:03d}.png" for i in range(10)
    ]
    assert all("predictions" in item for item in images)
    assert fifo_result["path"] == str(odd["fifo"]) and str(odd["fifo"]) in fifo_result["error"]
    # The user's files are exactly as they were: bytes, links and the FIFO.
    assert tree_state(root) == before
    assert stat.S_ISFIFO(os.lstat(odd["fifo"]).st_mode)
    assert os.readlink(odd["sibling_file"]) == "../bee/img000.png"


# --------------------------------------------------------------------------- 4. split manifest


@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory, make_class_folder, quiet):
    base = tmp_path_factory.mktemp("manifest")
    root = two_class_folder(make_class_folder, base / "photos", 10, 16)
    result = taolu.train(data=str(root), **tiny(base / "runs", quiet))
    return root, result


def test_a_folder_run_writes_its_split_with_relative_paths(manifest_run):
    root, result = manifest_run
    manifest = manifest_of(result.run_dir)
    summary = summary_of(result)
    assert manifest["classes"] == list(CLASSES) == summary["classes"]
    files = manifest["files"]
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert sorted(entry["path"] for entry in files) == on_disk
    for entry in files:
        assert not Path(entry["path"]).is_absolute()
        assert entry["label"] == entry["path"].split("/")[0]
        assert entry["split"] in ("train", "val")
    splits = [entry["split"] for entry in files]
    assert splits.count("train") == summary["train_samples"] == 16
    assert splits.count("val") == summary["val_samples"] == 4
    for name in CLASSES:  # stratified: each class is held out in proportion
        assert [e["split"] for e in files if e["label"] == name].count("val") == 2


@pytest.fixture(scope="module")
def resumed_after_adding(manifest_run, make_class_folder, tmp_path_factory):
    """The manifest run resumed for a second epoch after 6 images were added to its folder."""
    root, first = manifest_run
    before = (first.run_dir / "split.json").read_bytes()
    extra = tmp_path_factory.mktemp("extra")
    for label, name in enumerate(CLASSES):
        make_class_folder(extra / name, label, 3, seed=50 + label, size=16)
        for path in sorted((extra / name).iterdir()):
            path.rename(root / name / f"added_{path.name}")
    resumed = taolu.train(resume=first.run_dir, epochs=2, verbose=False, progress=False)
    return first, resumed, before


def test_resuming_keeps_the_split_even_after_images_were_added(resumed_after_adding):
    first, resumed, before = resumed_after_adding
    old, new = summary_of(first), summary_of(resumed)
    assert new["epochs_completed"] == 2
    assert new["val_samples"] == old["val_samples"] == 4
    assert new["train_samples"] == old["train_samples"] == 16
    assert (resumed.run_dir / "split.json").read_bytes() == before
    assert not any("added_" in entry["path"] for entry in manifest_of(resumed.run_dir)["files"])


def test_evaluating_a_run_uses_its_recorded_validation_split(resumed_after_adding):
    _, resumed, _ = resumed_after_adding
    assert taolu.evaluate(resumed.run_dir)["samples"] == summary_of(resumed)["val_samples"]


# --------------------------------------------------------------------------- 5. sources


def test_a_csv_list_with_relative_paths_trains(tmp_path, quiet):
    base = tmp_path / "listed"
    rows = ["path,label"]
    for label, name in enumerate(("cat", "dog")):
        for index in range(8):
            relative = f"pictures/{name}_{index}.png"
            shade = 50 if label == 0 else 200
            pixels = np.full((16, 16, 3), shade, np.uint8) + np.uint8(index)
            (base / "pictures").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(base / relative)
            rows.append(f"{relative},{name}")
    (base / "list.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = taolu.train(data=str(base / "list.csv"), **tiny(tmp_path / "runs", quiet))
    summary = summary_of(result)
    assert summary["classes"] == ["cat", "dog"]
    assert summary["train_samples"] + summary["val_samples"] == 16
    manifest = manifest_of(result.run_dir)
    assert {entry["path"] for entry in manifest["files"]} == {row.split(",")[0] for row in rows[1:]}
    assert taolu.evaluate(result.run_dir)["samples"] == summary["val_samples"]


def test_a_cifar10_root_trains_through_the_api(tmp_path, quiet, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar10_root(tmp_path / "datasets")
    result = taolu.train(
        data="cifar10", data_root=str(tmp_path / "datasets"), **tiny(tmp_path / "runs", quiet)
    )
    summary = summary_of(result)
    assert summary["classes"] == CIFAR10_NAMES
    assert (summary["train_samples"], summary["val_samples"]) == (15, 4)


def test_a_cifar10_root_trains_through_the_cli(tmp_path, cli_main, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar10_root(tmp_path / "datasets")
    code, out, err = cli_main(
        "train", "--data", "cifar10", "--data-root", tmp_path / "datasets", "--epochs", 1,
        "--batch-size", 8, "--out", tmp_path / "runs", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "runs" / "train" / "weights" / "best.pt").is_file()


def test_a_missing_cifar10_root_names_the_expected_files_without_a_traceback(tmp_path, cli_main):
    missing = tmp_path / "nowhere"
    code, out, err = cli_main(
        "train", "--data", "cifar10", "--data-root", missing, "--epochs", 1,
        "--out", tmp_path / "runs", "--no-progress", "--no-verbose",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("taolu: error:") and "Traceback" not in err
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert name in err
    assert not (tmp_path / "runs").exists()


def test_channels_3_on_gray_digits_and_1_on_colour_folders(
    tmp_path, make_class_folder, cli_main, digits_arrays
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 6, 16)
    common = ["--epochs", 1, "--batch-size", 32, "--no-progress", "--no-verbose"]
    gray_to_rgb = [*common, "--out", tmp_path / "a", "--data", "digits", "--channels", 3]
    rgb_to_gray = [*common, "--out", tmp_path / "b", "--data", root, "--channels", 1]
    for argv in (gray_to_rgb, rgb_to_gray):
        code, _, err = cli_main("train", *argv)
        assert code == 0, err
    gray_png = tmp_path / "digit.png"
    Image.fromarray((digits_arrays[0][0] * 16).clip(0, 255).astype(np.uint8)).save(gray_png)
    for run, channels, other in ((tmp_path / "a" / "train", 3, root / "ant" / "img000.png"),
                                 (tmp_path / "b" / "train", 1, gray_png)):  # fmt: skip
        state = load_checkpoint(run / "weights" / "best.pt")
        assert state["preprocessing"]["channels"] == channels
        assert state["config"]["channels"] == channels
        first_conv = next(v for k, v in state["model"].items() if k.endswith("weight"))
        assert first_conv.shape[1] == channels
        # Either kind of file is converted to the run's channels by predict.
        for item in taolu.predict(run, [gray_png, other]):
            assert "predictions" in item, item


def write_wide_folder(root: Path) -> Path:
    """root/<ant|bee>/ of 16 x 40 images: a dark or bright centre between grey side bands."""
    rng = np.random.default_rng(3)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(8):
            pixels = np.full((16, 40, 3), 128, np.float64)
            pixels[:, 12:28] = 50 if label == 0 else 205
            pixels += rng.normal(0, 20, pixels.shape)
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            image.save(root / name / f"wide{index}.png")
    return root


def model_probabilities(run: Path, path: Path, mode: str) -> dict[str, float]:
    """The run's model applied by hand to `path` decoded with `mode` (probabilities
    calibrated by the run's temperature, as predict reports them)."""
    state = load_checkpoint(run / "weights" / "best.pt")
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    image = decode_file(path, preprocessing.channels, preprocessing.size, mode)
    batch = BatchTransform(preprocessing, torch.device("cpu"))(image[None].float() / 255)
    with torch.no_grad():
        logits = restore_model(state)(batch) / state.get("temperature", 1.0)
        values = logits.softmax(dim=1)[0].tolist()
    return dict(zip(state["classes"], values, strict=True))


def test_crop_and_pad_runs_and_predict_repeats_the_runs_resize_mode(tmp_path, quiet):
    root = write_wide_folder(tmp_path / "wide")
    runs = {
        mode: taolu.train(
            data=str(root), image_size=16, resize_mode=mode, **tiny(tmp_path / "runs", quiet)
        )
        for mode in ("crop", "pad")
    }
    for mode, result in runs.items():
        state = load_checkpoint(result.best_checkpoint)
        assert state["preprocessing"]["resize_mode"] == mode
        assert state["preprocessing"]["size"] == [16, 16]
    probe = tmp_path / "probe.png"
    pixels = np.full((16, 40, 3), 60, np.uint8)
    pixels[:, :10] = 250  # a bright band that padding keeps and cropping cuts
    Image.fromarray(pixels).save(probe)
    run = runs["pad"].run_dir
    [predicted] = taolu.predict(run, [probe], topk=2)
    by_hand = {mode: model_probabilities(run, probe, mode) for mode in ("pad", "squash", "crop")}
    for name, probability in probabilities(predicted).items():
        assert probability == pytest.approx(by_hand["pad"][name], abs=1e-5)
    # The check can tell the modes apart on this picture.
    for other in ("squash", "crop"):
        assert any(abs(by_hand[other][n] - by_hand["pad"][n]) > 1e-4 for n in CLASSES)


# --------------------------------------------------------------------------- 6. decoding parity


def test_an_exif_rotated_jpeg_predicts_exactly_as_its_upright_copy(colour_run, tmp_path):
    rng = np.random.default_rng(4)
    stored = np.full((24, 32, 3), 90, np.float64)
    stored[:, :12] = 220  # bright on the left as stored: on top once upright
    stored[4:10, 20:30] = 10
    stored = (stored + rng.normal(0, 10, stored.shape)).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated_jpeg = tmp_path / "camera.jpg"
    Image.fromarray(stored).save(rotated_jpeg, quality=100, exif=exif)
    # The upright copy: the JPEG's own decoded pixels, turned as orientation 6 says, lossless.
    with Image.open(rotated_jpeg) as image:
        as_stored = image.convert("RGB")
    upright_png = tmp_path / "upright.png"
    as_stored.transpose(Image.Transpose.ROTATE_270).save(upright_png)
    unturned_png = tmp_path / "unturned.png"
    as_stored.save(unturned_png)
    exif_png = tmp_path / "exif.png"  # the same orientation tag in a PNG's eXIf chunk
    as_stored.save(exif_png, exif=exif)
    with Image.open(exif_png) as image:
        assert image.getexif().get(0x0112) == 6
    files = [rotated_jpeg, upright_png, unturned_png, exif_png]
    results = taolu.predict(colour_run.run_dir, files, topk=2)
    rotated, upright, unturned, exif_tagged = (probabilities(r) for r in results)
    for name in CLASSES:
        assert rotated[name] == pytest.approx(upright[name], abs=1e-4)
        assert exif_tagged[name] == pytest.approx(upright[name], abs=1e-4)
    # Sensitivity: ignoring the orientation would have given a different answer.
    assert any(abs(unturned[n] - upright[n]) > 1e-4 for n in CLASSES), (unturned, upright)


def test_odd_but_readable_formats_predict_without_error(colour_run, tmp_path):
    paths = write_odd_images(tmp_path / "odd")
    results = taolu.predict(colour_run.run_dir, list(paths.values()), topk=2)
    assert [r["path"] for r in results] == [str(p) for p in paths.values()]
    for result in results:
        assert "error" not in result, result
        assert sum(probabilities(result).values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_json_reports_a_bomb_per_file_and_reads_unicode_names(
    colour_run, tmp_path, cli_main
):
    bomb = write_bomb_png(tmp_path / "inputs" / "bomb.png")
    good = noise(tmp_path / "inputs" / "蜜蜂 photo é.png", size=(24, 24), seed=11)
    also = noise(tmp_path / "inputs" / "plain.png", size=(30, 20), seed=12)
    code, out, err = cli_main(
        "predict", colour_run.run_dir, good, bomb, also, "--json", "--topk", 2
    )
    assert code == 1  # one input could not be read
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(good), str(bomb), str(also)]
    assert "predictions" in results[0] and "predictions" in results[2]
    assert "error" in results[1] and "too many pixels" in results[1]["error"]
    assert str(bomb) in results[1]["error"]
    assert "1 of 3 inputs could not be read" in err


# --------------------------------------------------------------------------- 7. transforms


@pytest.fixture(scope="module")
def transformed_run(tmp_path_factory, make_class_folder, quiet):
    base = tmp_path_factory.mktemp("transforms")
    root = two_class_folder(make_class_folder, base / "photos", 8, 24)
    result = taolu.train(data=str(root), transforms=TRANSFORM_LIST, **tiny(base / "runs", quiet))
    return root, base, result


def test_a_transform_list_trains_and_is_recorded(transformed_run):
    root, _, result = transformed_run
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["transforms"] == TRANSFORM_LIST
    state = load_checkpoint(result.best_checkpoint)
    assert state["config"]["transforms"] == TRANSFORM_LIST
    # Eval is derived: the flip dropped, the padded random crop centred.
    assert state["preprocessing"]["eval_transforms"] == [
        {"name": "Pad", "args": {"padding": 2}},
        {"name": "CenterCrop", "args": {"size": 24}},
    ]
    assert summary_of(result)["epochs_completed"] == 1
    predicted = taolu.predict(result.run_dir, [root / "ant" / "img000.png"], topk=2)
    assert "predictions" in predicted[0]
    assert taolu.evaluate(result.run_dir)["samples"] == summary_of(result)["val_samples"]


def test_a_transform_list_given_as_yaml_text_on_the_cli_trains_the_same(transformed_run, cli_main):
    root, base, from_python = transformed_run
    code, _, err = cli_main(
        "train", "--data", root, "--epochs", 1, "--batch-size", 8, "--workers", 0,
        "--out", base / "cli", "--no-progress", "--no-verbose", "--set",
        f"transforms={TRANSFORM_YAML}",
    )  # fmt: skip
    assert code == 0, err
    run = base / "cli" / "train"
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["transforms"] == TRANSFORM_LIST
    python_state = load_checkpoint(from_python.best_checkpoint)
    assert (
        load_checkpoint(run / "weights" / "best.pt")["preprocessing"]
        == (python_state["preprocessing"])
    )


def test_the_photos_preset_and_imagenet_normalisation_train_and_are_stored(
    tmp_path, make_class_folder, quiet
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 8, 24)
    result = taolu.train(
        data=str(root), transforms="photos", normalize="imagenet", **tiny(tmp_path / "r", quiet)
    )
    state = load_checkpoint(result.best_checkpoint)
    preprocessing = state["preprocessing"]
    assert preprocessing["mean"] == pytest.approx(IMAGENET_MEAN)
    assert preprocessing["std"] == pytest.approx(IMAGENET_STD)
    assert [entry["name"] for entry in preprocessing["eval_transforms"]] == ["Resize", "CenterCrop"]
    assert state["config"]["transforms"] == "photos"
    assert "predictions" in taolu.predict(result.run_dir, [root / "bee" / "img001.png"])[0]


@pytest.mark.parametrize(
    "entries, where",
    [
        ([{"name": "RandomHorizontalFlip"}, {"name": "RandomCrop", "args": {"sise": 24}}], "[1]"),
        ([{"name": "Lambda", "args": {"lambd": "print"}}], "[0]"),
        ([{"name": "RandomHorizontalFlip"}, "RandomCrop"], "[1]"),
    ],
)
def test_a_bad_transform_list_is_refused_before_anything_runs(
    tmp_path, make_class_folder, quiet, entries, where
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 4, 16)
    out = tmp_path / "runs"
    with pytest.raises(taolu.ConfigError, match=rf"transforms\{where}"):
        taolu.train(data=str(root), transforms=entries, **tiny(out, quiet))
    assert not out.exists()


def test_a_bad_transform_list_on_the_cli_exits_2_naming_the_entry(
    tmp_path, make_class_folder, cli_main
):
    root = two_class_folder(make_class_folder, tmp_path / "photos", 4, 16)
    text = "[{name: RandomHorizontalFlip}, {name: RandomCrop, args: {sise: 24}}]"
    code, _, err = cli_main(
        "train", "--data", root, "--out", tmp_path / "runs", "--set", f"transforms={text}"
    )
    assert code == 2
    assert "transforms[1]" in err and "sise" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
