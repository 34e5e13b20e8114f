"""torchvision data sets on disk and CSV lists: fake files in the exact published formats,
generated here, read by taolu and, where torchvision can, by torchvision too."""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from scipy.io import savemat

from taolu.data.csv_list import CsvRow, list_csv, read_csv_list
from taolu.data.disk_formats import load_array_pickle
from taolu.data.disk_sets import (
    DISK_DATASETS,
    disk_dataset_files,
    load_disk_dataset,
)
from taolu.data.sources import list_folder
from taolu.errors import ConfigError, DataError

# --------------------------------------------------------------------------- file writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: 0 0 8 ndim, big-endian sizes, bytes (gzipped for .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_mnist_root(root: Path, folder: str, suffix: str = "", seed: int = 0) -> dict:
    """Fake ROOT/<folder>/raw/ files: 7 train and 4 test images of 28x28. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)),
        "t10k": (rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 10, 4)),
    }
    raw = root / folder / "raw"
    for prefix, (images, labels) in arrays.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return arrays


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), the way the CIFAR files on the web hold
    their keys, class names and array data; torchvision reads those with encoding="latin1"."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, value: bytes) -> None:
        if len(value) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(value)]) + value)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(value)) + value)
        self.memoize(value)

    dispatch[bytes] = save_python2_string


def write_pickle(path: Path, value: object, style: str) -> None:
    """style "python3": pickle.dump protocol 2 (bytes via _codecs.encode); "python2": the
    byte layout of the published files, numpy named by its pre-2.0 module path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "python3":
        path.write_bytes(pickle.dumps(value, protocol=2))
        return
    with open(path, "wb") as file:
        Python2Pickler(file, protocol=2).dump(value)
    # Protocol 2 names globals as plain text lines, so the module can be renamed in place.
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip


def write_cifar10_root(root: Path, style: str = "python3") -> dict:
    """Fake ROOT/cifar-10-batches-py: five train batches of 3 images and a test batch of 4."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    batches = {}
    for name, count in [*((f"data_batch_{n}", 3) for n in range(1, 6)), ("test_batch", 4)]:
        data = rng.integers(0, 256, (count, 3072)).astype(np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, count)]
        batches[name] = (data, labels)
        entry = {b"batch_label": name.encode(), b"data": data, b"labels": labels, b"e": b""}
        write_pickle(folder / name, entry, style)
    meta = {b"label_names": [name.encode() for name in CIFAR10_NAMES], b"num_vis": 3072}
    write_pickle(folder / "batches.meta", meta, style)
    return batches


def write_cifar100_root(root: Path, style: str = "python3") -> dict:
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    names = [f"class{n:02d}" for n in range(100)]
    arrays = {}
    for name, count in (("train", 6), ("test", 3)):
        data = rng.integers(0, 256, (count, 3072)).astype(np.uint8)
        fine = [int(label) for label in rng.integers(0, 100, count)]
        coarse = [label // 5 for label in fine]
        arrays[name] = (data, fine)
        entry = {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse}
        write_pickle(folder / name, entry, style)
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"x"]}
    write_pickle(folder / "meta", meta, style)
    return {"arrays": arrays, "classes": names}


def write_svhn_root(root: Path) -> dict:
    rng = np.random.default_rng(3)
    arrays = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, labels in (("train", [10, 1, 5, 10, 9]), ("test", [3, 10])):
        images = rng.integers(0, 256, (32, 32, 3, len(labels))).astype(np.uint8)
        column = np.array(labels, dtype=np.uint8)[:, None]  # (N, 1), as in the real files
        savemat(root / f"{name}_32x32.mat", {"X": images, "y": column})
        arrays[name] = (images, labels)
    return arrays


STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10_root(root: Path) -> dict:
    """Fake ROOT/stl10_binary. Pixel (h, w) of channel c of image k holds (k*7 + c*3 + h + 2w)
    mod 256, written column by column as the real files are: a missing transpose shows."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    expected = {}
    for name, labels in (("train", [1, 10, 4]), ("test", [2, 2])):
        k, c, h, w = np.meshgrid(
            np.arange(len(labels)), np.arange(3), np.arange(96), np.arange(96), indexing="ij"
        )
        images = ((k * 7 + c * 3 + h + 2 * w) % 256).astype(np.uint8)  # (N, 3, H, W)
        (folder / f"{name}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{name}_y.bin").write_bytes(bytes(labels))
        expected[name] = (images, [label - 1 for label in labels])
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    return expected


# torchvision's own readers minus the md5 checks our fakes cannot pass.
class UncheckedCIFAR10(torchvision.datasets.CIFAR10):
    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        self.classes = []


class UncheckedCIFAR100(UncheckedCIFAR10, torchvision.datasets.CIFAR100):
    pass


class UncheckedSVHN(torchvision.datasets.SVHN):
    def _check_integrity(self) -> bool:
        return True


class UncheckedSTL10(torchvision.datasets.STL10):
    def _check_integrity(self) -> bool:
        return True


# --------------------------------------------------------------------------- MNIST family

MNIST_FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}
TORCHVISION_CLASSES = {
    "mnist": torchvision.datasets.MNIST,
    "fashionmnist": torchvision.datasets.FashionMNIST,
    "kmnist": torchvision.datasets.KMNIST,
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("name", list(MNIST_FOLDERS))
def test_mnist_family_reads_idx_files_plain_and_gzipped(tmp_path, name, suffix):
    arrays = write_mnist_root(tmp_path, MNIST_FOLDERS[name], suffix)
    train, test, classes = load_disk_dataset(name, tmp_path)
    for split, prefix in ((train, "train"), (test, "t10k")):
        images, labels = arrays[prefix]
        assert split.images.dtype == torch.uint8
        assert split.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
        assert split.labels.dtype == torch.int64
        assert split.labels.tolist() == labels.tolist()
    assert train.images[2, 0, 5, 17].item() == arrays["train"][0][2, 5, 17]
    # Class names exactly as torchvision's, in label order ("0 - zero" style aside for MNIST).
    expected = TORCHVISION_CLASSES[name].classes
    if name == "mnist":
        expected = [entry.split(" - ")[0] for entry in expected]
    assert classes == expected


@pytest.mark.parametrize("name", list(MNIST_FOLDERS))
def test_mnist_family_matches_torchvision_on_the_same_files(tmp_path, name):
    write_mnist_root(tmp_path, MNIST_FOLDERS[name])
    train, test, _ = load_disk_dataset(name, tmp_path)
    for split, is_train in ((train, True), (test, False)):
        theirs = TORCHVISION_CLASSES[name](tmp_path, train=is_train, download=False)
        assert torch.equal(split.images[:, 0], theirs.data)
        assert torch.equal(split.labels, theirs.targets)


def test_idx_file_with_a_wrong_magic_number_or_size_is_named(tmp_path):
    write_mnist_root(tmp_path, "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # says 3 dimensions
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*magic number"):
        load_disk_dataset("mnist", tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 5494 bytes.*promises 5504"):
        load_disk_dataset("mnist", tmp_path)


def test_gzip_twin_stands_in_for_a_missing_plain_file(tmp_path):
    write_mnist_root(tmp_path, "KMNIST", ".gz")
    raw = tmp_path / "KMNIST" / "raw"
    files = disk_dataset_files("kmnist", tmp_path)
    assert files == [raw / f"{name}.gz" for name in DISK_DATASETS["kmnist"].files]
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_disk_dataset("kmnist", tmp_path)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("style", ["python3", "python2"])
def test_cifar10_pickles_give_planes_in_rgb_order(tmp_path, style):
    batches = write_cifar10_root(tmp_path, style)
    train, test, classes = load_disk_dataset("cifar10", tmp_path)
    assert classes == CIFAR10_NAMES
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.images.dtype == torch.uint8
    train_data = np.concatenate([batches[f"data_batch_{n}"][0] for n in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{n}"][1] for n in range(1, 6)), [])
    assert train.labels.tolist() == train_labels
    assert test.labels.tolist() == batches["test_batch"][1]
    # Each row is 1024 red values, then 1024 green, then 1024 blue, row by row.
    for k, c, h, w in [(0, 0, 0, 0), (4, 1, 0, 0), (7, 2, 31, 0), (14, 1, 3, 29)]:
        assert train.images[k, c, h, w].item() == train_data[k, c * 1024 + h * 32 + w]
    test_data = batches["test_batch"][0]
    assert test.images[3, 2, 31, 31].item() == test_data[3, 3071]


def test_cifar_readers_match_torchvision_on_the_same_files(tmp_path):
    # torchvision reads str keys only, so this needs the layout of the published files.
    write_cifar10_root(tmp_path, "python2")
    write_cifar100_root(tmp_path, "python2")
    for name, reader in (("cifar10", UncheckedCIFAR10), ("cifar100", UncheckedCIFAR100)):
        train, test, _ = load_disk_dataset(name, tmp_path)
        for split, is_train in ((train, True), (test, False)):
            theirs = reader(tmp_path, train=is_train, download=False)
            assert torch.equal(split.images.permute(0, 2, 3, 1), torch.from_numpy(theirs.data))
            assert split.labels.tolist() == theirs.targets


@pytest.mark.parametrize("style", ["python3", "python2"])
def test_cifar100_uses_fine_labels_and_fine_label_names(tmp_path, style):
    fake = write_cifar100_root(tmp_path, style)
    train, test, classes = load_disk_dataset("cifar100", tmp_path)
    assert classes == fake["classes"]
    data, fine = fake["arrays"]["train"]
    assert train.labels.tolist() == fine
    assert test.labels.tolist() == fake["arrays"]["test"][1]
    assert train.images[5, 2, 10, 20].item() == data[5, 2048 + 10 * 32 + 20]


class Payload:
    """An object whose unpickling would create the marker file: what a crafted file does."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "exec":
            return (exec, (f"open({str(self.marker)!r}, 'w').close()",))
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("how", ["exec", "system"])
@pytest.mark.parametrize("victim", ["data_batch_3", "batches.meta"])
def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, how, victim):
    write_cifar10_root(tmp_path)
    marker = tmp_path / "marker"
    path = tmp_path / "cifar-10-batches-py" / victim
    path.write_bytes(pickle.dumps({b"data": Payload(marker, how), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as caught:
        load_disk_dataset("cifar10", tmp_path)
    assert str(path) in str(caught.value)
    assert "refused" in str(caught.value)
    assert not marker.exists()


class Rot13:
    def __reduce__(self):
        return (codecs.encode, ("uryyb", "rot13"))


class HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((10**13,),))


def test_the_unpickler_allows_arrays_but_no_other_use_of_its_helpers(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"a": np.arange(4, dtype=np.uint8)}, protocol=2))
    assert load_array_pickle(path)["a"].tolist() == [0, 1, 2, 3]
    path.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match="batch: not a readable pickle.*Python objects"):
        load_array_pickle(path)
    path.write_bytes(pickle.dumps([Rot13()], protocol=2))
    with pytest.raises(DataError, match="rot13"):
        load_array_pickle(path)
    path.write_bytes(pickle.dumps([HugeArray()], protocol=2))
    with pytest.raises(DataError, match="batch: not a readable pickle.*not callable"):
        load_array_pickle(path)
    path.write_bytes(b"\x80\x02}q\x00")  # cut short
    with pytest.raises(DataError, match="batch: not a readable pickle"):
        load_array_pickle(path)


def test_cifar_batch_of_the_wrong_shape_is_named(tmp_path):
    write_cifar10_root(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(path, {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "python3")
    with pytest.raises(DataError, match="test_batch: 'data' rows hold 1024 bytes"):
        load_disk_dataset("cifar10", tmp_path)
    write_pickle(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "python3")
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        load_disk_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- SVHN, STL10


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    arrays = write_svhn_root(tmp_path)
    train, test, classes = load_disk_dataset("svhn", tmp_path)
    assert classes == [str(digit) for digit in range(10)]
    assert train.labels.tolist() == [0, 1, 5, 0, 9] and test.labels.tolist() == [3, 0]
    images = arrays["train"][0]  # (H, W, C, N)
    assert train.images.shape == (5, 3, 32, 32)
    assert train.images[3, 2, 7, 30].item() == images[7, 30, 2, 3]
    assert torch.equal(train.images, torch.from_numpy(images).permute(3, 2, 0, 1))
    for split, name in ((train, "train"), (test, "test")):
        theirs = UncheckedSVHN(tmp_path, split=name, download=False)
        assert torch.equal(split.images, torch.from_numpy(theirs.data))
        assert split.labels.tolist() == theirs.labels.tolist()


def test_svhn_file_that_is_not_a_mat_file_is_named(tmp_path):
    write_svhn_root(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(DataError, match="test_32x32.mat: not a readable MATLAB"):
        load_disk_dataset("svhn", tmp_path)


def test_stl10_binaries_are_transposed_from_column_order(tmp_path):
    expected = write_stl10_root(tmp_path)
    train, test, classes = load_disk_dataset("stl10", tmp_path)
    assert classes == STL10_NAMES
    for split, name in ((train, "train"), (test, "test")):
        images, labels = expected[name]
        assert torch.equal(split.images, torch.from_numpy(images))
        assert split.labels.tolist() == labels
        theirs = UncheckedSTL10(tmp_path, split=name, download=False)
        assert torch.equal(split.images, torch.from_numpy(theirs.data))
    # Row 5, column 40 of channel 1 of image 2: 2*7 + 1*3 + 5 + 80.
    assert train.images[2, 1, 5, 40].item() == 102


def test_stl10_images_file_of_the_wrong_size_is_named(tmp_path):
    write_stl10_root(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"test_X.bin: 55295 bytes, but test_y.bin has 2 labels"):
        load_disk_dataset("stl10", tmp_path)


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name", list(DISK_DATASETS))
def test_missing_files_are_each_named_with_how_to_obtain_them(tmp_path, name):
    root = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        load_disk_dataset(name, root)
    message = str(caught.value)
    for path in disk_dataset_files(name, root):
        assert f"  {path}\n" in message
    assert str(root) in message and "does not exist" in message
    assert "How to obtain them" in message and "download=True" in message
    assert "never downloads" in message
    assert not root.exists()  # nothing was fetched or created


def test_only_the_missing_files_are_listed(tmp_path):
    write_cifar10_root(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(DataError) as caught:
        load_disk_dataset("cifar10", tmp_path)
    message = str(caught.value)
    assert "2 of 7 expected files missing" in message
    assert (
        f"  {folder / 'data_batch_4'}\n" in message and f"  {folder / 'batches.meta'}\n" in message
    )
    assert "data_batch_3" not in message
    assert f"torchvision.datasets.CIFAR10({str(tmp_path)!r}, download=True)" in message
    assert "cifar-10-python.tar.gz" in message


def test_naming_the_data_sets_own_folder_as_root_points_to_its_parent(tmp_path):
    write_mnist_root(tmp_path, "MNIST")
    with pytest.raises(DataError, match=re.escape(f"give its parent, {tmp_path}\n")):
        load_disk_dataset("mnist", tmp_path / "MNIST" / "raw")


def test_an_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="'cifar11'.*cifar10, cifar100"):
        load_disk_dataset("cifar11", ".")


# --------------------------------------------------------------------------- CSV lists


def write_files(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"an image")


def test_csv_with_split_column_relative_absolute_and_unicode_paths(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_files(tmp_path / "set", ["images/ä one.png", "images/two.png", "images/猫.png"])
    write_files(elsewhere, ["far.png"])
    csv_path = tmp_path / "set" / "list.csv"
    csv_path.write_text(
        "path,label,split\n"
        "images/ä one.png, chat ,train\n"
        "\n"
        f"{elsewhere / 'far.png'},dog,Validation\n"
        '"images/猫.png",猫,test\n'
        "images/two.png,dog,train\n"
        "images/gone.png,chat,val\n",
        encoding="utf-8",
    )
    rows = read_csv_list(csv_path)
    assert rows[0] == CsvRow(csv_path.parent / "images" / "ä one.png", "chat", "train")
    assert rows[1] == CsvRow(elsewhere / "far.png", "dog", "val")
    assert [row.split for row in rows] == ["train", "val", "val", "train", "val"]
    listing = list_csv(csv_path, val_fraction=0.5)
    assert listing.classes == ["chat", "dog", "猫"]
    folder = csv_path.parent / "images"
    assert listing.splits["train"] == [(folder / "ä one.png", 0), (folder / "two.png", 1)]
    assert listing.splits["val"] == [(elsewhere / "far.png", 1), (folder / "猫.png", 2)]
    assert listing.passed_over == [(folder / "gone.png", "listed in CSV but missing")]
    assert "with a split column" in listing.layout


def test_csv_without_split_column_holds_out_what_the_folder_reader_would(tmp_path):
    names = [f"{kind}/{kind}{n}.png" for kind in ("ant", "bee") for n in range(10)]
    write_files(tmp_path, names)
    lines = ["\ufeffPath , Label"] + [f" {name} ,{name[:3]}" for name in names]  # BOM, spaces
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    listing = list_csv(tmp_path / "list.csv", val_fraction=0.2)
    assert listing.classes == ["ant", "bee"]
    assert [label for _, label in listing.splits["val"]] == [0, 0, 1, 1]
    assert len(listing.splits["train"]) == 16 and listing.passed_over == []
    assert "split 80%/20%" in listing.layout
    folders = list_folder(tmp_path, 0.2)
    assert listing.splits == folders.splits


def test_csv_file_going_missing_is_reported_and_moves_no_other_file(tmp_path):
    names = [f"{kind}{n}.png" for kind in ("ant", "bee") for n in range(8)]
    write_files(tmp_path, names)
    rows = [f"{name},{name[:3]}" for name in names]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows), encoding="utf-8")
    complete = list_csv(tmp_path / "list.csv", val_fraction=0.25)
    (tmp_path / "bee3.png").unlink()
    (tmp_path / "ant5.png").unlink()
    (tmp_path / "ant6.png").unlink()
    (tmp_path / "ant6.png").mkdir()
    listing = list_csv(tmp_path / "list.csv", val_fraction=0.25)
    assert listing.passed_over == [
        (tmp_path / "ant5.png", "listed in CSV but missing"),
        (tmp_path / "ant6.png", "listed in CSV but not a regular file"),
        (tmp_path / "bee3.png", "listed in CSV but missing"),
    ]
    gone = {tmp_path / name for name in ("bee3.png", "ant5.png", "ant6.png")}
    for split in ("train", "val"):
        assert listing.splits[split] == [f for f in complete.splits[split] if f[0] not in gone]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the file is empty"),
        ("a.png,cat\nb.png,dog\n", r"line 1: the first line must be the header"),
        ("path,label,weight\na.png,cat,1\n", r"line 1: unknown column\(s\) 'weight'"),
        ("path,label,label\na.png,cat,cat\n", "line 1: a column is named twice"),
        ("path,label\na.png,cat\n  ,dog\n", "line 3: the path is empty"),
        ("\npath,label\n\na.png, \n", "line 4: the label of a.png is empty"),
        ("path,label,split\na.png,cat,train\nb.png,dog,tain\n", "line 3: split 'tain' is neither"),
        ("path,label\na.png,cat,extra\n", r"line 2: 3 field\(s\), but the header names 2"),
        ("path,label\n", "no images listed below the header"),
        ('path,label\n"a.png,cat\n', r"line 2: 1 field\(s\).*needs \"quotes\""),
        ("path,label\n" + "a" * 200_000 + ",x\n", "line 2: field larger than field limit"),
    ],
)
def test_csv_refusals_name_the_file_and_the_line(tmp_path, content, expected):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected) as caught:
        list_csv(csv_path, 0.2)
    assert str(caught.value).startswith(f"{csv_path}: ")


def test_csv_that_is_not_there_or_not_utf8_is_named(tmp_path):
    with pytest.raises(DataError, match="absent.csv: no such CSV file"):
        read_csv_list(tmp_path / "absent.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\nbär.png,x\n".encode("latin1"))
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text"):
        read_csv_list(tmp_path / "latin.csv")
