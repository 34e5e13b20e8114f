"""Data: the embedded sets, the stratified fixed split, image folders in both layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import taolu
from taolu.data.embedded import stratified_split
from taolu.data.sources import load_data


def folder_bundle(root, **overrides):
    options = dict(val_fraction=0.2, image_size=0, resize_mode="squash", channels=0)
    options.update(overrides)
    return load_data(str(root), **options)


# --------------------------------------------------------------------------- embedded sets


def test_mnist5k_is_5000_digits_500_per_class(mnist_arrays):
    images, labels = mnist_arrays
    assert images.shape == (5000, 28, 28)
    assert images.dtype == np.uint8
    assert images.max() > 200  # real pixel values 0..255, not 0..1
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10


def test_mnist5k_split_is_4000_1000_with_100_val_per_class(mnist_arrays):
    _, labels = mnist_arrays
    train, val = stratified_split(labels, 0.2)
    assert len(train) == 4000 and len(val) == 1000
    assert np.bincount(labels[val.numpy()], minlength=10).tolist() == [100] * 10
    assert np.bincount(labels[train.numpy()], minlength=10).tolist() == [400] * 10
    train_set, val_set = set(train.tolist()), set(val.tolist())
    assert not train_set & val_set
    assert train_set | val_set == set(range(5000))


def test_split_is_identical_across_calls(mnist_arrays):
    _, labels = mnist_arrays
    first = stratified_split(labels, 0.2)
    second = stratified_split(torch.from_numpy(labels.copy()), 0.2)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_split_is_shuffled_within_each_class(mnist_arrays):
    # The files are sorted by class: a plain cut per class would take one contiguous block.
    _, labels = mnist_arrays
    _, val = stratified_split(labels, 0.2)
    zeros = np.sort(val.numpy()[labels[val.numpy()] == 0])
    assert (np.diff(zeros) > 1).any()


def test_digits_is_1797_images_split_80_20_in_every_class(digits_arrays):
    images, labels = digits_arrays
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255  # 0..16 rescaled to 0..255
    train, val = stratified_split(labels, 0.2)
    assert len(train) + len(val) == 1797
    assert not set(train.tolist()) & set(val.tolist())
    for digit in range(10):
        members = int((labels == digit).sum())
        in_val = int((labels[val.numpy()] == digit).sum())
        assert abs(in_val - 0.2 * members) <= 0.5, digit


def test_embedded_bundle_uses_the_fixed_split(digits_arrays):
    _, labels = digits_arrays
    bundle = load_data("digits", val_fraction=0.2, image_size=0, resize_mode="squash", channels=0)
    _, val = stratified_split(labels, 0.2)
    assert bundle.classes == [str(d) for d in range(10)]
    assert (bundle.channels, bundle.size) == (1, (8, 8))
    assert len(bundle.val) == len(val)
    assert torch.equal(bundle.val.labels, torch.from_numpy(labels[val.numpy()]))


def test_two_seeds_train_on_the_same_validation_split(tmp_path, digits_arrays, quiet):
    results = [
        taolu.train(data="digits", epochs=1, seed=seed, out=str(tmp_path), **quiet)
        for seed in (0, 1)
    ]
    assert results[0].summary["val_samples"] == results[1].summary["val_samples"]
    assert results[0].summary["train_samples"] == results[1].summary["train_samples"]
    # the seed does change the run itself
    assert results[0].history[0]["train_loss"] != results[1].history[0]["train_loss"]


def test_two_seeds_hold_out_the_same_images_of_a_users_dataset(
    tmp_path, array_dataset, easy_images, quiet
):
    """Without val_data the Dataset is split; the held-out indices must not depend on seed.
    With workers=0 and one epoch, the last len(val) accesses are the validation pass."""
    images, labels = easy_images(60, seed=3, size=8)
    held_out = []
    for seed in (0, 5):
        dataset = array_dataset(images, labels, targets=True)
        result = taolu.train(
            data=dataset,
            classes=["ant", "bee"],
            epochs=1,
            batch_size=8,
            workers=0,
            seed=seed,
            out=str(tmp_path),
            **quiet,
        )
        val_samples = result.summary["val_samples"]
        assert val_samples == 12
        held_out.append(sorted(dataset.log[-val_samples:]))
    assert held_out[0] == held_out[1]
    # stratified: as many of each class
    assert sum(labels[i] for i in held_out[0]) == 6


# --------------------------------------------------------------------------- image folders


def test_single_folder_layout_is_split_and_ignores_hidden_and_non_images(
    tmp_path, make_class_folder
):
    root = tmp_path / "photos"
    for label, name in enumerate(("ant", "bee")):
        make_class_folder(root / name, label, 10, seed=label)
        (root / name / "notes.txt").write_text("not an image")
        (root / name / "Thumbs.db").write_bytes(b"\x00\x01")
        Image.new("RGB", (12, 12)).save(root / name / ".hidden.png")
    make_class_folder(root / ".ipynb_checkpoints", 0, 3, seed=9)  # hidden folder: no class
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.txt").write_text("a loose file is no class")

    bundle = folder_bundle(root)
    assert bundle.classes == ["ant", "bee"]
    assert len(bundle.train) == 16 and len(bundle.val) == 4
    files = [path for path, _ in bundle.train.files + bundle.val.files]
    assert len(set(files)) == 20
    assert all(path.suffix == ".png" and not path.name.startswith(".") for path in files)
    assert all(".ipynb_checkpoints" not in path.parts for path in files)
    # stratified: two of each class held out, labels match the folder
    assert sorted(label for _, label in bundle.val.files) == [0, 0, 1, 1]
    for path, label in bundle.train.files + bundle.val.files:
        assert path.parent.name == bundle.classes[label]
    # stable: the same split again
    again = folder_bundle(root)
    assert again.val.files == bundle.val.files


@pytest.mark.parametrize("val_name", ["val", "valid", "test"])
def test_train_and_val_folder_layout_is_used_as_given(tmp_path, make_class_folder, val_name):
    root = tmp_path / "photos"
    for label, name in enumerate(("ant", "bee")):
        make_class_folder(root / "train" / name, label, 6, seed=label)
        make_class_folder(root / val_name / name, label, 3, seed=10 + label)
        (root / "train" / name / ".hidden.png").write_bytes(b"junk")
        (root / val_name / name / "labels.csv").write_text("a,b\n")
    bundle = folder_bundle(root)
    assert bundle.classes == ["ant", "bee"]
    assert len(bundle.train) == 12 and len(bundle.val) == 6
    assert all(path.parts[-3] == "train" for path, _ in bundle.train.files)
    assert all(path.parts[-3] == val_name for path, _ in bundle.val.files)
    assert (bundle.channels, bundle.size) == (3, (12, 12))


def test_folder_images_decode_to_their_size_and_channels(tmp_path):
    root = tmp_path / "gray"
    for name, value in (("dark", 20), ("light", 230)):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((10, 14), value, np.uint8)).save(root / name / f"{i}.png")
    bundle = folder_bundle(root, image_size=16)
    assert (bundle.channels, bundle.size) == (1, (16, 16))
    image, label, error = bundle.train[0]
    assert error == ""
    assert image.shape == (1, 16, 16) and image.dtype == torch.uint8
    assert bundle.classes[label] == "dark" and int(image.float().mean()) in range(15, 26)


def test_folder_with_one_class_is_refused(tmp_path, make_class_folder):
    make_class_folder(tmp_path / "only" / "ant", 0, 5, seed=0)
    with pytest.raises(taolu.DataError, match="class"):
        folder_bundle(tmp_path / "only")


def test_training_on_a_folder(image_folder, tmp_path, quiet):
    result = taolu.train(
        data=str(image_folder),
        epochs=2,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "runs"),
        **quiet,
    )
    assert result.summary["classes"] == ["ant", "bee"]
    assert (result.summary["train_samples"], result.summary["val_samples"]) == (16, 4)
    assert len(result.history) == 2


# --------------------------------------------------------------------------- decoding policy


def decoded(path, channels, size=(4, 4), mode="squash"):
    from taolu.data.decode import decode_file

    return decode_file(path, channels, size, mode)


def test_transparency_is_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0] + [0] * 765)
    palette.save(tmp_path / "p.png", transparency=0)
    assert decoded(tmp_path / "rgba.png", 3).unique().tolist() == [255]
    assert decoded(tmp_path / "la.png", 1).unique().tolist() == [255]
    assert decoded(tmp_path / "p.png", 3).unique().tolist() == [255]
    # an opaque pixel keeps its colour
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    assert decoded(tmp_path / "opaque.png", 3)[:, 0, 0].tolist() == [10, 20, 30]


def test_gray_png_with_transparent_colour_is_composited_on_white(tmp_path):
    Image.new("L", (4, 4), 0).save(tmp_path / "trns.png", transparency=0)
    assert decoded(tmp_path / "trns.png", 1).unique().tolist() == [255]


def test_sixteen_bit_images_are_rescaled(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "full.png")
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "half.png")
    assert decoded(tmp_path / "full.png", 1).unique().tolist() == [255]
    assert decoded(tmp_path / "half.png", 1).unique().tolist() == [128]


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((4, 8), np.uint8)  # 8 wide, 4 high; left half black
    stored[:, 4:] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 4 wide, 8 high, top half black
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    tensor = decoded(tmp_path / "rotated.jpg", 1, size=(8, 4))
    column = tensor[0, :, 0].tolist()
    assert max(column[:4]) < 60 and min(column[4:]) > 195


def test_resize_modes(tmp_path):
    Image.fromarray(np.full((4, 8), 200, np.uint8)).save(tmp_path / "wide.png")
    assert decoded(tmp_path / "wide.png", 1, (8, 8), "pad")[0, :, 0].tolist() == [0, 0] + [
        200
    ] * 4 + [0, 0]
    assert decoded(tmp_path / "wide.png", 1, (8, 8), "crop").unique().tolist() == [200]
    assert decoded(tmp_path / "wide.png", 1, (8, 8), "squash").unique().tolist() == [200]


def test_decompression_bomb_is_refused_not_decoded(tmp_path):
    """A PNG whose header claims 40000x40000 pixels (far beyond Pillow's limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(taolu.DataError, match="bomb.png"):
        decoded(path, 1)
