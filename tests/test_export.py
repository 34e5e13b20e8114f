"""Exporting data sets as PNG folders: exact pixels, the two-folder layout, refusal to
overwrite, nothing half-written, and the round trip back through the image-folder reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The fake data-set writers live with the reader's tests (pytest puts tests/ on sys.path).
from test_disk_sets import (
    CIFAR10_NAMES,
    write_cifar10_root,
    write_mnist_root,
    write_stl10_root,
)

from taolu.data.embedded import load_digits, load_mnist5k, stratified_split
from taolu.data.export import class_folder_names, export_dataset
from taolu.data.sources import list_folder, load_data
from taolu.errors import ConfigError, DataError


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def exported_files(target: Path, split: str) -> dict[int, tuple[str, Path]]:
    """index -> (class folder, file) of one exported split."""
    return {int(p.stem): (p.parent.name, p) for p in (target / split).glob("*/*.png")}


@pytest.fixture(scope="module")
def mnist_export(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    target = tmp_path_factory.mktemp("export") / "mnist5k"
    return target, export_dataset("mnist5k", target)


def test_mnist5k_exports_4000_and_1000_pngs_in_10_class_folders(mnist_export):
    target, counts = mnist_export
    assert counts == {"train": 4000, "val": 1000}
    assert sorted(p.name for p in target.iterdir()) == ["train", "val"]
    for split, per_class in (("train", 400), ("val", 100)):
        folders = sorted((target / split).iterdir())
        assert [folder.name for folder in folders] == [str(digit) for digit in range(10)]
        assert all(len(list(folder.glob("*.png"))) == per_class for folder in folders)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_mnist5k_pngs_hold_the_exact_pixels_and_labels(mnist_export):
    target, _ = mnist_export
    images, labels = load_mnist5k()
    train_index, val_index = stratified_split(torch.from_numpy(labels), 0.2)
    for split, index in (("train", train_index), ("val", val_index)):
        files = exported_files(target, split)
        assert sorted(files) == list(range(len(index)))
        for position in (0, 1, 777, len(index) - 1):
            source = index[position].item()
            folder, path = files[position]
            assert folder == str(labels[source])
            pixels = read_png(path)
            assert pixels.dtype == np.uint8 and pixels.shape == (28, 28)
            assert np.array_equal(pixels, images[source])


def test_exported_folder_reads_back_with_the_same_classes_and_splits(mnist_export):
    target, _ = mnist_export
    sizing = {"image_size": 0, "resize_mode": "squash", "channels": 0}
    bundle = load_data(str(target), val_fraction=0.2, **sizing)
    assert bundle.classes == [str(digit) for digit in range(10)]
    assert (len(bundle.train), len(bundle.val)) == (4000, 1000)
    assert bundle.channels == 1 and tuple(bundle.size) == (28, 28)
    listing = list_folder(target, 0.2)
    images, labels = load_mnist5k()
    _, val_index = stratified_split(torch.from_numpy(labels), 0.2)
    path, label = listing.splits["val"][123]
    source = val_index[int(path.stem)].item()
    assert label == labels[source]
    assert torch.equal(bundle.val[123][0][0], torch.from_numpy(images[source]))


def test_digits_export_as_8x8_gray_pngs(tmp_path):
    target = tmp_path / "nested" / "digits"
    counts = export_dataset("digits", target, val_fraction=0.25)
    images, labels = load_digits()
    train_index, val_index = stratified_split(torch.from_numpy(labels), 0.25)
    assert counts == {"train": len(train_index), "val": len(val_index)}
    assert counts["train"] + counts["val"] == 1797
    folder, path = exported_files(target, "val")[5]
    source = val_index[5].item()
    assert folder == str(labels[source])
    assert np.array_equal(read_png(path), images[source])


def test_a_non_empty_target_is_refused_and_left_untouched(tmp_path, tree_snapshot):
    target = tmp_path / "mine"
    (target / "train").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    before = tree_snapshot(target)
    with pytest.raises(DataError, match="exists and is not empty; export never overwrites"):
        export_dataset("digits", target)
    assert tree_snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        export_dataset("digits", tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "x"


def test_an_empty_target_folder_is_filled(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert export_dataset("digits", target)["train"] > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_cifar10_on_disk_exports_rgb_pngs_with_its_test_split_as_val(tmp_path):
    batches = write_cifar10_root(tmp_path / "root")
    target = tmp_path / "out"
    assert export_dataset("cifar10", target, data_root=tmp_path / "root") == {"train": 15, "val": 4}
    data, labels = batches["test_batch"]
    folder, path = exported_files(target, "val")[2]
    assert folder == CIFAR10_NAMES[labels[2]]
    pixels = read_png(path)  # (H, W, 3)
    assert pixels.shape == (32, 32, 3)
    assert np.array_equal(pixels, data[2].reshape(3, 32, 32).transpose(1, 2, 0))
    listing = list_folder(target, 0.2)
    assert len(listing.classes) == 10 and len(listing.splits["val"]) == 4


def test_class_names_become_safe_distinct_folder_names(tmp_path):
    names = ["T-shirt/top", "a\\b", "a_b", ".hidden", "", "Bag", "bag", "ok. ", "猫"]
    assert class_folder_names(names) == [
        "T-shirt_top",
        "a_b",
        "a_b_2",
        "_.hidden",
        "_",
        "Bag",
        "bag_2",
        "ok",
        "猫",
    ]
    write_mnist_root(tmp_path / "root", "FashionMNIST")
    export_dataset("fashionmnist", tmp_path / "out", data_root=tmp_path / "root")
    assert "T-shirt_top" in [p.name for p in (tmp_path / "out" / "train").iterdir()]


def test_a_failure_while_writing_leaves_no_target_and_no_staging(tmp_path):
    write_stl10_root(tmp_path / "root")
    names = tmp_path / "root" / "stl10_binary" / "class_names.txt"
    names.write_text("\n".join(["cat"] * 9 + ["x" * 300]))  # too long for any file system
    target = tmp_path / "out"
    with pytest.raises(DataError, match="exporting stl10 to .*out failed, nothing was left"):
        export_dataset("stl10", target, data_root=tmp_path / "root")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_unknown_names_and_disk_sets_without_a_root_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'cifar11'.*mnist5k, digits, mnist"):
        export_dataset("cifar11", tmp_path / "out")
    with pytest.raises(ConfigError, match="needs data_root"):
        export_dataset("cifar10", tmp_path / "out")
    with pytest.raises(DataError, match="How to obtain them"):
        export_dataset("svhn", tmp_path / "out", data_root=tmp_path / "nothing")
    assert not (tmp_path / "out").exists()
