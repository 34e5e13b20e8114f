"""torchvision's classification data sets in their standard on-disk formats, read by taolu's own
code: nothing is downloaded, no checksum is demanded, and every file goes through
disk_formats' bounded readers (the CIFAR pickles through an unpickler that can build numpy
arrays and nothing else)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from taolu.data.bundle import ImageTensors
from taolu.data.disk_formats import check_mat_expansion, load_array_pickle, read_idx
from taolu.errors import ConfigError, DataError

Splits = tuple[ImageTensors, ImageTensors, list[str]]  # (train, test as validation, classes)

MNIST_CLASSES = [str(digit) for digit in range(10)]
# The `classes` lists of torchvision's FashionMNIST and KMNIST, in label order.
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_IMAGE_BYTES = 3 * 32 * 32
STL10_IMAGE_BYTES = 3 * 96 * 96


# --------------------------------------------------------------------------- the readers


def _as_split(
    images: np.ndarray, labels: np.ndarray, class_count: int, source: str
) -> ImageTensors:
    """uint8 (N, C, H, W) images and their labels as ImageTensors, once they agree."""
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= class_count):
        raise DataError(
            f"{source}: labels must lie in 0..{class_count - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # torch warns about tensors over read-only memory
        images = images.copy()
    return ImageTensors(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def _gzip_variant(path: Path) -> Path:
    """`path`, or its .gz twin when only that exists (torchvision keeps both after a download)."""
    packed = path.with_name(path.name + ".gz")
    return packed if not path.is_file() and packed.is_file() else path


def _read_mnist_family(folder: Path, classes: list[str]) -> Splits:
    splits = []
    for prefix in ("train", "t10k"):
        image_path = _gzip_variant(folder / f"{prefix}-images-idx3-ubyte")
        label_path = _gzip_variant(folder / f"{prefix}-labels-idx1-ubyte")
        images = read_idx(image_path, 3)[:, None]  # (N, 1, 28, 28)
        labels = read_idx(label_path, 1)
        splits.append(_as_split(images, labels, len(classes), f"{image_path} + {label_path.name}"))
    return splits[0], splits[1], list(classes)


def _entry(mapping: object, key: str, path: Path) -> object:
    # Python 2 wrote the keys as str, Python 3 fakes often as bytes; latin1 keeps each as it is.
    if isinstance(mapping, dict):
        for candidate in (key, key.encode()):
            if candidate in mapping:
                return mapping[candidate]
    raise DataError(f"{path}: expected a dict with the key {key!r}; the file is not this format")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return str(value)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_array_pickle(path)
    data = _entry(batch, "data", path)
    labels = _entry(batch, label_key, path)
    # A flat list of ints (or an array) only: np.asarray of nested lists that a pickle repeats
    # by reference could ask for billions of values from a few bytes.
    if isinstance(labels, list) and all(type(n) is int and abs(n) < 2**62 for n in labels):
        labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(labels, np.ndarray):
        raise DataError(f"{path}: {label_key!r} must be a list of integers")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"{path}: 'data' must be a uint8 array (N, {CIFAR_IMAGE_BYTES})")
    if data.shape[1] != CIFAR_IMAGE_BYTES:
        raise DataError(f"{path}: 'data' rows hold {data.shape[1]} bytes, not {CIFAR_IMAGE_BYTES}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {label_key!r} must be a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    # Each row is the red plane, then green, then blue, each 32 rows of 32 pixels.
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(
    folder: Path, train_files: list[str], test_file: str, meta: tuple[str, str], label_key: str
) -> Splits:
    meta_path = folder / meta[0]
    names = _entry(load_array_pickle(meta_path), meta[1], meta_path)
    if not (isinstance(names, list) and names and all(isinstance(n, (str, bytes)) for n in names)):
        raise DataError(f"{meta_path}: {meta[1]!r} must be a list of class names")
    classes = [_text(name) for name in names]
    splits = []
    for files in (train_files, [test_file]):
        batches = [_read_cifar_batch(folder / file, label_key) for file in files]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        splits.append(_as_split(images, labels, len(classes), str(folder / files[0])))
    return splits[0], splits[1], classes


def _read_svhn_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scipy takes a while to import and only SVHN needs it.
    from scipy.io import loadmat

    check_mat_expansion(path)
    try:
        contents = loadmat(path, variable_names=["X", "y"])
    except MemoryError:
        raise DataError(f"{path}: its sizes ask for more memory than there is") from None
    except Exception as error:  # scipy's parser meets a damaged file with many error kinds
        raise DataError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    images, labels = contents.get("X"), contents.get("y")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must be a uint8 array (32, 32, 3, N)")
    if images.dtype != np.uint8 or not isinstance(labels, np.ndarray):
        raise DataError(f"{path}: 'X' must be uint8 and 'y' an array of labels")
    labels = labels.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN labels the digit 0 as 10
    return images.transpose(3, 2, 0, 1), labels  # (H, W, C, N) -> (N, C, H, W)


def _read_svhn(folder: Path) -> Splits:
    splits = []
    for name in ("train_32x32.mat", "test_32x32.mat"):
        images, labels = _read_svhn_file(folder / name)
        splits.append(_as_split(images, labels, 10, str(folder / name)))
    return splits[0], splits[1], list(MNIST_CLASSES)


def _read_stl10_split(folder: Path, prefix: str, class_count: int) -> ImageTensors:
    image_path, label_path = folder / f"{prefix}_X.bin", folder / f"{prefix}_y.bin"
    try:
        labels = np.fromfile(label_path, np.uint8).astype(np.int64) - 1  # stored as 1..10
        images = np.fromfile(image_path, np.uint8)
    except OSError as error:
        raise DataError(f"cannot read {error.filename or image_path}: {error.strerror}") from None
    if images.size != len(labels) * STL10_IMAGE_BYTES:
        raise DataError(
            f"{image_path}: {images.size} bytes, but {label_path.name} has {len(labels)} "
            f"labels, so {len(labels) * STL10_IMAGE_BYTES} bytes were expected "
            f"({STL10_IMAGE_BYTES} an image)"
        )
    images = images.reshape(-1, 3, 96, 96)
    # Each channel is stored column by column (MATLAB order): swap to rows first.
    return _as_split(images.transpose(0, 1, 3, 2), labels, class_count, str(image_path))


def _read_stl10(folder: Path) -> Splits:
    names_path = folder / "class_names.txt"
    try:
        classes = [line.strip() for line in names_path.read_text("utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{names_path}: cannot read ({error})") from None
    classes = [name for name in classes if name]
    if not classes:
        raise DataError(f"{names_path}: lists no class names (one a line)")
    train = _read_stl10_split(folder, "train", len(classes))
    test = _read_stl10_split(folder, "test", len(classes))
    return train, test, classes


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class DiskDataset:
    """Where one data set's files lie under the root, how to get them, and how to read them."""

    folder: str  # under the root; "" when the files lie in the root itself
    files: tuple[str, ...]
    read: Callable[[Path], Splits]  # the folder -> (train, test, classes)
    torchvision_calls: tuple[str, ...]  # what downloads it, with {root} for the root
    by_hand: str  # the other way to get it, with {root} for the root


def _mnist_like(folder: str, classes: list[str], site: str) -> DiskDataset:
    return DiskDataset(
        folder=f"{folder}/raw",
        files=MNIST_FILES,
        read=partial(_read_mnist_family, classes=classes),
        torchvision_calls=(f"{folder}({{root}}, download=True)",),  # the class names the folder
        by_hand=f"or get the four .gz files from {site} and put them in {{root}}/{folder}/raw/ "
        "(they are read gzipped as they are)",
    )


CIFAR_SITE = "https://www.cs.toronto.edu/~kriz/cifar.html"
DISK_DATASETS: dict[str, DiskDataset] = {
    # torchvision's mirror: the original MNIST site often refuses downloads.
    "mnist": _mnist_like("MNIST", MNIST_CLASSES, "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashionmnist": _mnist_like(
        "FashionMNIST", FASHION_CLASSES, "https://github.com/zalandoresearch/fashion-mnist"
    ),
    "kmnist": _mnist_like("KMNIST", KMNIST_CLASSES, "https://github.com/rois-codh/kmnist"),
    "cifar10": DiskDataset(
        folder="cifar-10-batches-py",
        files=(*(f"data_batch_{n}" for n in range(1, 6)), "test_batch", "batches.meta"),
        read=partial(
            _read_cifar,
            train_files=[f"data_batch_{n}" for n in range(1, 6)],
            test_file="test_batch",
            meta=("batches.meta", "label_names"),
            label_key="labels",
        ),
        torchvision_calls=("CIFAR10({root}, download=True)",),
        by_hand=f"or get cifar-10-python.tar.gz from {CIFAR_SITE} and extract it under {{root}}",
    ),
    "cifar100": DiskDataset(
        folder="cifar-100-python",
        files=("train", "test", "meta"),
        read=partial(
            _read_cifar,
            train_files=["train"],
            test_file="test",
            meta=("meta", "fine_label_names"),
            label_key="fine_labels",
        ),
        torchvision_calls=("CIFAR100({root}, download=True)",),
        by_hand=f"or get cifar-100-python.tar.gz from {CIFAR_SITE} and extract it under {{root}}",
    ),
    "svhn": DiskDataset(
        folder="",
        files=("train_32x32.mat", "test_32x32.mat"),
        read=_read_svhn,
        torchvision_calls=(
            "SVHN({root}, split='train', download=True)",
            "SVHN({root}, split='test', download=True)",
        ),
        by_hand="or get train_32x32.mat and test_32x32.mat from "
        "http://ufldl.stanford.edu/housenumbers/ into {root}",
    ),
    "stl10": DiskDataset(
        folder="stl10_binary",
        files=("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"),
        read=_read_stl10,
        torchvision_calls=("STL10({root}, download=True)",),
        by_hand="or get stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ "
        "and extract it under {root}",
    ),
}


def _dataset(name: str) -> DiskDataset:
    if name not in DISK_DATASETS:
        raise ConfigError(
            f"{name!r} is not a data set taolu reads from disk; known: {', '.join(DISK_DATASETS)}"
        )
    return DISK_DATASETS[name]


def disk_dataset_files(name: str, root: Path) -> list[Path]:
    """The files `load_disk_dataset(name, root)` reads (for messages and cache keys). For the
    MNIST family a file's .gz twin stands in for it when only the twin exists."""
    dataset = _dataset(name)
    folder = Path(root).expanduser() / dataset.folder
    paths = [folder / file for file in dataset.files]
    return [_gzip_variant(path) for path in paths] if dataset.files == MNIST_FILES else paths


def _meant_root(dataset: DiskDataset, root: Path) -> Path | None:
    """The parent the user meant when they named the data set's own folder (a common slip)."""
    parts = Path(dataset.folder).parts
    for depth in range(1, len(parts) + 1):
        inner = root.joinpath(*parts[depth:])
        if _gzip_variant(inner / dataset.files[0]).is_file():
            return root.resolve().parents[depth - 1]
    return None


def _missing_message(name: str, root: Path, missing: list[Path]) -> str:
    dataset = DISK_DATASETS[name]
    total = len(dataset.files)
    lines = [f"{name}: {len(missing)} of {total} expected files missing under {root}:"]
    lines += [f"  {path}" for path in missing]
    if not root.is_dir():
        lines.append(f"(the data root {root} itself does not exist)")
    meant = _meant_root(dataset, root)
    if meant is not None:
        lines.append(f"{root} looks like the data set's own folder: give its parent, {meant}")
    calls = "; ".join(f"torchvision.datasets.{call}" for call in dataset.torchvision_calls)
    what = f"the folder {dataset.folder.split('/')[0]}" if dataset.folder else "the files"
    lines += [
        "How to obtain them (taolu never downloads anything): on a machine with network run",
        f'  python -c "import torchvision; {calls.format(root=repr(str(root)))}"',
        f"and copy {what} it writes under {root} to this machine, "
        + dataset.by_hand.format(root=root)
        + ".",
    ]
    return "\n".join(lines)


def load_disk_dataset(name: str, root: str | Path) -> Splits:
    """(train, test as validation, classes) of a torchvision data set stored under `root`, in
    torchvision's layout. Images are uint8 (N, C, H, W): C is 1 for the MNIST family, else 3."""
    dataset = _dataset(name)
    root = Path(root).expanduser()
    missing = [path for path in disk_dataset_files(name, root) if not path.is_file()]
    if missing:
        raise DataError(_missing_message(name, root, missing))
    return dataset.read(root / dataset.folder)
