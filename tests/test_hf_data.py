"""Hugging Face datasets as --data: save_to_disk folders, Parquet files and hf:NAME, built here
with the `datasets` library itself, read offline through taolu's decode policy and cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import taolu
from taolu.data.check import check_data
from taolu.data.hf_sets import ArrowImage, ImageColumn
from taolu.data.sources import HF_DATASET, data_kind, load_data
from taolu.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")

COLOURS = ["red", "green", "blue"]
SIZING = {"val_fraction": 0.25, "image_size": 0, "resize_mode": "squash", "channels": 0}
QUIET = {"verbose": False, "progress": False, "report": False}


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """load_dataset converts Parquet into its cache: keep that inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def colour_images(count: int, seed: int = 0) -> tuple[list[Image.Image], list[int]]:
    """Small RGB images whose class is the channel that is lit, with some noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % 3
        pixels = rng.integers(0, 40, (12, 10, 3), dtype=np.uint8)
        pixels[..., label] += 180
        images.append(Image.fromarray(pixels))
        labels.append(label)
    return images, labels


def colour_set(count: int, seed: int = 0, **extra_columns) -> datasets.Dataset:
    images, labels = colour_images(count, seed)
    features = {"picture": datasets.Image(), "colour": datasets.ClassLabel(names=COLOURS)}
    columns = {"picture": images, "colour": labels}
    for name, (values, feature) in extra_columns.items():
        columns[name], features[name] = values, feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture
def saved_dict(tmp_path):
    """A DatasetDict with train and validation splits, as save_to_disk writes it."""
    folder = tmp_path / "colours"
    splits = {"train": colour_set(24), "validation": colour_set(9, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_dict_gives_its_classes_splits_and_columns(saved_dict):
    assert data_kind(str(saved_dict)) == HF_DATASET
    bundle = load_data(str(saved_dict), **SIZING)
    assert bundle.classes == COLOURS  # the ClassLabel's names, in its order
    assert (len(bundle.train), len(bundle.val)) == (24, 9)  # its own validation split
    assert (bundle.channels, bundle.size) == (3, (12, 10))
    assert "'picture'" in bundle.description and "'colour'" in bundle.description
    image, label, error = bundle.val[4]
    assert error == "" and label == 1
    assert int(image[1].float().mean()) > int(image[0].float().mean()) + 100  # green is lit


def test_a_single_saved_dataset_is_split_by_taolu(tmp_path):
    folder = tmp_path / "one"
    colour_set(40).save_to_disk(str(folder))
    bundle = load_data(str(folder), **SIZING)
    assert (len(bundle.train), len(bundle.val)) == (30, 10)
    assert "split 75%/25%" in bundle.description
    names = {str(ref) for ref, _ in bundle.listing.splits["val"]}
    assert all(name.startswith(f"{folder}:train[") for name in names)


def test_parquet_files_with_a_test_split_validate_on_it(tmp_path):
    folder = tmp_path / "parquet"
    colour_set(21).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    colour_set(6, seed=2).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    assert data_kind(str(folder)) == HF_DATASET
    bundle = load_data(str(folder), **SIZING)
    assert bundle.classes == COLOURS
    assert (len(bundle.train), len(bundle.val)) == (21, 6)


def test_two_image_columns_are_refused_with_every_column_named(tmp_path):
    folder = tmp_path / "two"
    second, _ = colour_images(12, seed=3)
    colour_set(12, thumb=(second, datasets.Image())).save_to_disk(str(folder))
    with pytest.raises(DataError) as refused:
        load_data(str(folder), **SIZING)
    message = str(refused.value)
    assert "--image-column" in message
    assert "picture (Image)" in message and "thumb (Image)" in message
    bundle = load_data(str(folder), image_column="thumb", **SIZING)
    assert len(bundle.train) + len(bundle.val) == 12
    with pytest.raises(ConfigError, match="no column 'photo'"):
        load_data(str(folder), image_column="photo", **SIZING)


def test_a_plain_label_column_is_settable_and_its_values_become_classes(tmp_path):
    folder = tmp_path / "named"
    images, labels = colour_images(18)
    names = [["zebra", "ant", "mole"][label] for label in labels]
    features = datasets.Features({"image": datasets.Image(), "kind": datasets.Value("string")})
    split = datasets.Dataset.from_dict({"image": images, "kind": names}, features=features)
    split.save_to_disk(str(folder))
    with pytest.raises(DataError, match="--label-column"):
        load_data(str(folder), **SIZING)
    bundle = load_data(str(folder), label_column="kind", **SIZING)
    assert bundle.classes == ["ant", "mole", "zebra"]
    with pytest.raises(ConfigError, match="not images"):
        load_data(str(folder), image_column="kind", label_column="kind", **SIZING)


def with_broken_row(split: datasets.Dataset, row: int) -> datasets.Dataset:
    raw = split.cast_column("picture", datasets.Image(decode=False))

    def break_one(example: dict, index: int) -> dict:
        if index == row:
            example["picture"] = {"bytes": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "path": None}
        return example

    return raw.map(break_one, with_indices=True).cast_column("picture", datasets.Image())


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["ram", "off"])
def test_training_skips_and_names_a_corrupt_row(tmp_path, cache):
    folder = tmp_path / "broken"
    splits = {"train": with_broken_row(colour_set(24), 5), "validation": colour_set(9, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    result = taolu.train(
        data=str(folder),
        epochs=1,
        out=str(tmp_path / "runs"),
        cache=cache,
        workers=0,
        lr=0.01,
        **QUIET,
    )
    summary = json.loads((result.run_dir / "summary.json").read_text())
    skipped = [entry["path"] for entry in summary["skipped_files"]]
    assert skipped == [f"{folder}:train[5]"]
    report = check_data(str(folder))
    assert [str(path) for path in report.bad_files] == [f"{folder}:train[5]"]
    assert report.counts["train"] == {"red": 8, "green": 8, "blue": 7}


@pytest.mark.slow
def test_a_trained_run_evaluates_on_the_same_dataset(saved_dict, tmp_path):
    result = taolu.train(
        data=str(saved_dict), epochs=1, out=str(tmp_path / "runs"), lr=0.01, **QUIET
    )
    measured = taolu.evaluate(result.run_dir)
    assert measured["samples"] == 9  # the dataset's own validation split
    assert "Hugging Face dataset" in measured["data"]


def test_hf_name_missing_from_the_cache_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as refused:
        load_data("hf:someone/not-here", **SIZING)
    message = str(refused.value)
    assert str(tmp_path / "hf-cache") in message
    assert "never downloads" in message and "save_to_disk" in message


def test_datasets_and_webdataset_are_imported_only_for_their_data():
    code = (
        "import sys; from taolu.data.sources import data_kind, load_data; "
        "load_data('digits', val_fraction=0.2, image_size=0, resize_mode='squash', channels=0); "
        "print(sorted({'datasets', 'webdataset'} & set(sys.modules)))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.stdout.strip() == "[]", shown.stderr


def test_hf_name_reads_a_dataset_from_the_local_cache(tmp_path):
    """A data set the cache holds (put there by loading local Parquet files once, as a
    download would) is read by name with the network off."""
    folder = tmp_path / "toyset"
    colour_set(21).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    colour_set(6, seed=2).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    datasets.load_dataset(str(folder))  # fills tmp_path / "hf-cache" / "toyset"
    bundle = load_data("hf:toyset", **SIZING)
    assert bundle.classes == COLOURS
    assert (len(bundle.train), len(bundle.val)) == (21, 6)


def test_saved_images_travel_with_the_dataset(tmp_path):
    """save_to_disk embeds the files an Image feature points at: removing them changes
    nothing."""
    images, labels = colour_images(12)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    features = datasets.Features(
        {"picture": datasets.Image(), "colour": datasets.ClassLabel(names=COLOURS)}
    )
    split = datasets.Dataset.from_dict({"picture": paths, "colour": labels}, features=features)
    split.save_to_disk(str(tmp_path / "by-path"))
    for path in paths:
        Path(path).unlink()
    report = check_data(str(tmp_path / "by-path"))
    assert report.bad_files == [] and sum(report.counts["train"].values()) == 9


def test_a_row_pointing_at_a_file_reads_it_and_names_it_when_missing(tmp_path):
    """An Image value without bytes (a cached imagefolder keeps only paths)."""
    import pyarrow as pa

    path = tmp_path / "cat.png"
    colour_images(1)[0][0].save(path)
    rows = [pa.table({"picture": pa.array([{"bytes": None, "path": str(path)}])})]
    image = ArrowImage("set:train[0]", 0, ImageColumn(rows, "stamp"))
    assert image.encoded() == path.read_bytes()
    path.unlink()
    with pytest.raises(DataError, match=r"set:train\[0\]: its image file .*cat.png"):
        image.encoded()


def test_a_folder_of_arrow_files_and_a_single_file_are_read(saved_dict, tmp_path):
    import shutil

    folder = tmp_path / "arrow"
    folder.mkdir()
    for split in ("train", "validation"):
        table = next((saved_dict / split).glob("*.arrow"))
        shutil.copy(table, folder / f"{split}-00000-of-00001.arrow")
    assert data_kind(str(folder)) == HF_DATASET
    bundle = load_data(str(folder), **SIZING)
    assert (len(bundle.train), len(bundle.val), bundle.classes) == (24, 9, COLOURS)
    single = load_data(str(folder / "train-00000-of-00001.arrow"), **SIZING)
    assert (len(single.train), len(single.val)) == (18, 6)  # taolu's own 75/25 split


def test_a_test_split_without_labels_gives_way_to_taolus_own_split(tmp_path):
    folder = tmp_path / "hidden"
    hidden = colour_set(6, seed=2).cast_column("colour", datasets.Value("int64"))
    hidden = hidden.map(lambda example: {"colour": -1})
    hidden = hidden.cast_column("colour", datasets.ClassLabel(names=COLOURS))
    datasets.DatasetDict({"train": colour_set(24), "test": hidden}).save_to_disk(str(folder))
    bundle = load_data(str(folder), **SIZING)
    assert (len(bundle.train), len(bundle.val)) == (18, 6)  # 75/25 of train, not the test rows
    assert all(str(ref).startswith(f"{folder}:train[") for ref, _ in bundle.listing.splits["val"])
