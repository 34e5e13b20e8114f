"""The recipe benchmark: taolu's default recipe against the two plain loops a user would write,
on the networks and data users bring. Run it before changing any default.

Each case is trained three times on the very same uint8 tensors and split:
  taolu:  taolu.train(model=..., data=..., epochs=E) with nothing else set (besides quiet
          output and no report, which do not touch training)
  sgd:    the tutorial's loop: ToTensor-style 0..1 floats, batch 64 shuffled,
          nn.CrossEntropyLoss(), torch.optim.SGD(lr=0.01), fp32, E epochs
  adam:   the same loop with Keras' default, torch.optim.Adam(lr=1e-3)
Each reports its best validation accuracy over the epochs (what best.pt holds). A case with
fewer than 200 validation images is trained with --seeds seeds (3; each method alike, on the
same split) and the mean is its figure: with 80 images, one image is 1.25 points, and the
seed alone moved taolu on the plain CNN from 0.400 to 0.900, far more than the targets' 0.01.
Targets (issue 11), all from one run: no case stops on a NaN; on every case taolu >= the
better plain loop - 0.01; on average taolu >= the better plain loop + 0.05.

Run:  .venv/bin/python benchmarks/recipe_zoo.py [--cases a,b] [--seeds 3] [--set key=value ...]
      (--set passes an option to taolu's runs only, to try a recipe change side by side;
      --lr-find-check trains taolu at the lr `--lr-find` suggests instead of its default)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn
from torch.utils.data import Dataset

import taolu
from taolu.data.embedded import load_mnist5k, stratified_split
from taolu.data.sources import load_data
from taolu.data.user_data import bundle_datasets
from taolu.errors import TrainingError

PLAIN_BATCH = 64
TOLERANCE = 0.01  # taolu may trail the better plain loop by at most this on any case
TARGET_MARGIN = 0.05  # and must beat it by this on average
SMALL_VALIDATION = 200  # fewer validation images than this: the mean over --seeds seeds

# --------------------------------------------------------------------------- user networks


class Tudui(nn.Module):
    """The tutorial's network, verbatim (shared/seed): no activations, no normalisation."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.model1(x)


class SigmoidLeNet(nn.Module):
    """LeNet-5 as textbooks write it: Sigmoid and AvgPool2d, 28x28 gray in."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.Sigmoid(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Sigmoid(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            nn.Sigmoid(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def plain_cnn(classes: int) -> nn.Module:
    """VGG-like: 8 conv + ReLU, no BatchNorm, for 32x32 RGB."""
    layers: list[nn.Module] = []
    width_in = 3
    for index, width in enumerate((32, 32, 64, 64, 128, 128, 128, 128)):
        layers += [nn.Conv2d(width_in, width, 3, padding=1), nn.ReLU()]
        if index % 2:  # 32 -> 16 -> 8 -> 4 -> 2 px
            layers.append(nn.MaxPool2d(2))
        width_in = width
    return nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(128 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, classes)
    )


class RowLSTM(nn.Module):
    """Reads a 28x28 digit row by row, as recurrent-net tutorials do."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 64, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        output, _ = self.lstm(x.squeeze(1))  # (B, 28 rows, 64)
        return self.head(output[:, -1])


class DropoutCNN(nn.Module):
    """Heavy dropout, BatchNorm, lazy layers (Keras-style sizes inferred)."""

    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LazyConv2d(32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.3),
            nn.LazyConv2d(64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.LazyLinear(128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(classes),
        )

    def forward(self, x):
        return self.net(x)


TUDUI_LAYERS = """\
layers:
  - {Conv2d: {out_channels: 32, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - {Conv2d: {out_channels: 32, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - {Conv2d: {out_channels: 64, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - Flatten
  - {Linear: 64}
  - {Linear: classes}
"""

# --------------------------------------------------------------------------- user data


class MyDataset(Dataset):
    """The seed's MyDataset: HWC uint8 RGB arrays, as cv2.imread + cvtColor gives them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class NormalisedDigits(Dataset):
    """Digits as ToTensor() + Normalize((0.1307,), (0.3081,)) gives them: floats around 0."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.1307) / 0.3081
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class PhotoFiles(Dataset):
    """PIL images of varying sizes, opened from a list of files (a user's photo Dataset)."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.targets = files, labels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            return image.convert("RGB"), self.targets[index]


def rgb_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` mnist5k digits, padded to 32x32, each coloured: stroke and background tints."""
    images, labels = load_mnist5k()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), count, replace=False)
    gray = np.pad(images[pick], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255
    ink = rng.uniform(0.4, 1.0, (count, 1, 1, 3))
    paper = rng.uniform(0.0, 0.35, (count, 1, 1, 3))
    rgb = gray[..., None] * ink + (1 - gray[..., None]) * paper
    return (rgb * 255).round().astype(np.uint8), labels[pick]


SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A coloured shape at a random place and scale on a two-tone background, a little
    noisy and blurred like a photo; the shape's colour always stands out from the ground."""
    ground = rng.integers(0, 256, 3)
    second = np.clip(ground + rng.integers(-60, 61, 3), 0, 255)
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = ground * (1 - ramp) + second * ramp + rng.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    colour = rng.integers(0, 256, 3)
    while np.abs(colour - ground).max() < 100:
        colour = rng.integers(0, 256, 3)
    colour = tuple(int(v) for v in colour)
    radius = size * rng.uniform(0.22, 0.38)
    cx, cy = size * rng.uniform(0.4, 0.6, 2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    width = max(2, int(radius / 3))
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
            fill=colour,
        )
    elif kind == "cross":
        draw.line([(cx - radius, cy), (cx + radius, cy)], fill=colour, width=width)
        draw.line([(cx, cy - radius), (cx, cy + radius)], fill=colour, width=width)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=width)
    else:  # bar
        draw.rectangle((cx - radius, cy - width, cx + radius, cy + width), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def shape_folder(root: Path, counts: dict[str, int], sizes: tuple[int, int], seed: int) -> Path:
    """root/<shape>/*.jpg: counts[shape] photos each, sides drawn from `sizes` (inclusive)."""
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            side = int(rng.integers(sizes[0], sizes[1] + 1))
            draw_shape(kind, side, rng).save(root / kind / f"{index:04d}.jpg", quality=90)
    return root


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    description: str
    epochs: int
    # -> (taolu's data= value, taolu's val_data= value or None, model factory or name)
    build: Callable[[Path], tuple[object, object, Callable[[], nn.Module] | str]]


def _mnist_split():
    images, labels = load_mnist5k()
    train_index, val_index = stratified_split(labels, 0.2)
    return images, labels, train_index.numpy(), val_index.numpy()


def case_tudui(folder):
    images, labels = rgb_digits(1500, seed=1)
    return MyDataset(images[:1200], labels[:1200]), MyDataset(images[1200:], labels[1200:]), Tudui


def case_normalised(folder):
    images, labels, train, val = _mnist_split()
    return (
        NormalisedDigits(images[train], labels[train]),
        NormalisedDigits(images[val], labels[val]),
        lambda: DropoutCNN(10),
    )


def case_photo_dataset(folder):
    root = shape_folder(folder / "photos", {s: 100 for s in SHAPES[:4]}, (40, 72), seed=5)
    files = sorted(root.glob("*/*.jpg"))
    labels = [SHAPES.index(path.parent.name) for path in files]
    train = PhotoFiles(files, labels)
    return train, None, lambda: DropoutCNN(4)


def case_layer_list(folder):
    path = folder / "tudui.yaml"
    path.write_text(TUDUI_LAYERS)
    return (
        shape_folder(folder / "shapes", {s: 60 for s in SHAPES}, (32, 32), seed=6),
        None,
        str(path),
    )


CASES = [
    Case("tudui-rgb", "seed's Tudui verbatim, 1,500 RGB digit arrays via MyDataset", 6, case_tudui),
    Case(
        "lenet-sigmoid",
        "LeNet-5 with Sigmoid + AvgPool2d, mnist5k",
        6,
        lambda f: ("mnist5k", None, SigmoidLeNet),
    ),
    Case("mlp", "Flatten-Linear-ReLU-Linear, mnist5k", 6, lambda f: ("mnist5k", None, mlp)),
    Case(
        "plain-cnn",
        "8 conv + ReLU, no BatchNorm, 300 shape photos at 32 px",
        10,
        lambda f: (
            shape_folder(f / "shapes", {s: 100 for s in SHAPES[:3]}, (32, 32), 2),
            None,
            lambda: plain_cnn(3),
        ),
    ),
    Case(
        "resnet18",
        "torchvision resnet18 from scratch, 480 shape photos at 48 px",
        8,
        lambda f: (
            shape_folder(f / "photos", {s: 80 for s in SHAPES}, (48, 48), 3),
            None,
            "resnet18",
        ),
    ),
    Case(
        "mobilenet",
        "torchvision mobilenet_v3_small from scratch, same photos",
        8,
        lambda f: (
            shape_folder(f / "photos", {s: 80 for s in SHAPES}, (48, 48), 3),
            None,
            "mobilenet_v3_small",
        ),
    ),
    Case(
        "tiny-folder",
        "the default net on a folder of 180 photos at 48 px, 3 classes",
        10,
        lambda f: (
            shape_folder(f / "tiny", {s: 60 for s in SHAPES[:3]}, (48, 48), 4),
            None,
            "fastcnn",
        ),
    ),
    Case(
        "imbalanced",
        "the default net on a folder with classes of 300, 90 and 30 photos",
        8,
        lambda f: (
            shape_folder(
                f / "imbalanced", dict(zip(SHAPES[:3], (300, 90, 30), strict=True)), (32, 32), 7
            ),
            None,
            "fastcnn",
        ),
    ),
    Case(
        "digits8x8",
        "the default net on scikit-learn's 8x8 digits",
        6,
        lambda f: ("digits", None, "fastcnn"),
    ),
    Case(
        "pil-sizes",
        "a Dataset of 400 PIL photos of 40-72 px, lazy + dropout CNN",
        10,
        case_photo_dataset,
    ),
    Case(
        "layer-list", "the README's Tudui layer list, 360 shape photos at 32 px", 8, case_layer_list
    ),
    Case(
        "lstm-rows", "an LSTM reading digit rows, mnist5k", 6, lambda f: ("mnist5k", None, RowLSTM)
    ),
    Case(
        "normalised",
        "ToTensor+Normalize float tensors, lazy + dropout CNN, mnist5k",
        6,
        case_normalised,
    ),
]

# --------------------------------------------------------------------------- the plain loops


def split_tensors(data, val_data) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The uint8 (or float) images and labels taolu trains and validates on, via taolu's own
    readers (same decoding, size and split), so the plain loops see the very same tensors."""
    sizing = dict(val_fraction=0.2, image_size=0, resize_mode="squash", channels=0)
    if isinstance(data, Dataset):
        bundle = bundle_datasets(data, val_data, None, **sizing)
    else:
        bundle = load_data(str(data), **sizing)

    def stack(split):
        pairs = [split[index][:2] for index in range(len(split))]  # files add their path
        return torch.stack([image for image, _ in pairs]), torch.tensor([y for _, y in pairs])

    return stack(bundle.train), stack(bundle.val)


def as_input(images: torch.Tensor) -> torch.Tensor:
    return images if images.is_floating_point() else images.float() / 255  # ToTensor's 0..1


def plain_loop(build_model, train, val, epochs: int, make_optimizer, seed: int = 0) -> float:
    """The tutorial's routine: shuffle, forward, loss, backward, step; test after each epoch."""
    torch.manual_seed(seed)
    model = build_model()
    (train_x, train_y), (val_x, val_y) = train, val
    with torch.no_grad():  # lazy layers take their sizes from a first batch
        model.eval()(as_input(train_x[:2]))
    optimizer = make_optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    best = 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_y))
        for start in range(0, len(order), PLAIN_BATCH):
            index = order[start : start + PLAIN_BATCH]
            loss = loss_fn(model(as_input(train_x[index])), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(val_y), 256):
                logits = model(as_input(val_x[start : start + 256]))
                correct += int((logits.argmax(1) == val_y[start : start + 256]).sum())
        accuracy = correct / len(val_y)
        best = max(best, accuracy if math.isfinite(accuracy) else 0.0)
    return best


# --------------------------------------------------------------------------- running

SGD_001 = lambda parameters: torch.optim.SGD(parameters, lr=0.01)  # noqa: E731
ADAM_1E3 = lambda parameters: torch.optim.Adam(parameters, lr=1e-3)  # noqa: E731


def run_taolu(
    case: Case, data, val_data, model, folder: Path, extra: dict, lr_find_check: bool = False
) -> float:
    """taolu's best validation accuracy on the case, NaN when it stopped on a NaN."""
    kwargs = dict(
        epochs=case.epochs,
        verbose=False,
        progress=False,
        report=False,
        out=str(folder / "runs"),
        **extra,
    )
    data = data if isinstance(data, Dataset) else str(data)
    try:
        if lr_find_check:  # the finder's suggestion, then a run at it, the rest default
            found = taolu.train(
                model=_fresh(model), data=data, val_data=val_data, lr_find=True, **kwargs
            )
            kwargs["lr"] = found.suggested_lr
        result = taolu.train(model=_fresh(model), data=data, val_data=val_data, **kwargs)
    except TrainingError as error:
        print(f"  {case.name}: {error}", file=sys.stderr, flush=True)
        return float("nan")
    return result.best_val_acc


def _fresh(model):
    return model if isinstance(model, str) else model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for taolu's runs only",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help=f"seeds for cases with fewer than {SMALL_VALIDATION} validation images (mean)",
    )
    parser.add_argument("--no-plain", action="store_true", help="taolu only (no plain loops)")
    parser.add_argument(
        "--lr-find-check",
        action="store_true",
        help="taolu trains at what --lr-find suggests (the finder's own check, issue 11.6)",
    )
    args = parser.parse_args()
    extra = {key: yaml_value(value) for key, _, value in (s.partition("=") for s in args.set)}
    chosen = [case for case in CASES if not args.cases or case.name in args.cases.split(",")]
    print(
        f"{'case':<14} {'taolu':>8} {'sgd':>6} {'adam':>6} {'margin':>7} {'seconds':>8}  what",
        flush=True,
    )
    margins, failures, stops = [], [], []
    for case in chosen:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            data, val_data, model = case.build(folder)
            train, val = split_tensors(data, val_data)
            seeds = range(args.seeds) if len(val[1]) < SMALL_VALIDATION else range(1)
            factory = model if not isinstance(model, str) else _named_factory(model, train, val)
            taolu_runs, sgd_runs, adam_runs, seconds = [], [], [], 0.0
            for seed in seeds:
                started = time.perf_counter()
                options = {"seed": seed, **extra}
                taolu_runs.append(
                    run_taolu(case, data, val_data, model, folder, options, args.lr_find_check)
                )
                seconds += time.perf_counter() - started
                if args.no_plain:
                    continue
                sgd_runs.append(plain_loop(factory, train, val, case.epochs, SGD_001, seed=seed))
                adam_runs.append(plain_loop(factory, train, val, case.epochs, ADAM_1E3, seed=seed))
        taolu_acc = statistics.mean(taolu_runs)  # NaN when any seed stopped on a NaN
        shown = "NaN stop" if not math.isfinite(taolu_acc) else f"{taolu_acc:.3f}"
        runs = f"{len(seeds)} seeds" if len(seeds) > 1 else "1 seed"
        if args.no_plain:
            print(f"{case.name:<14} {shown:>8} {seconds:>8.1f}  {runs}", flush=True)
            continue
        sgd, adam = statistics.mean(sgd_runs), statistics.mean(adam_runs)
        plain = max(sgd, adam)
        margin = (taolu_acc if math.isfinite(taolu_acc) else 0.0) - plain
        margins.append(margin)
        if not math.isfinite(taolu_acc):
            stops.append(case.name)
        elif margin < -TOLERANCE:
            failures.append(case.name)
        print(
            f"{case.name:<14} {shown:>8} {sgd:>6.3f} {adam:>6.3f} {margin:>+7.3f} "
            f"{seconds:>8.1f}  {case.description} ({runs})",
            flush=True,
        )
        if len(seeds) > 1:
            print(
                " " * 15
                + " / ".join(
                    f"{t:.3f} {g:.3f} {a:.3f}"
                    for t, g, a in zip(taolu_runs, sgd_runs, adam_runs, strict=True)
                ),
                flush=True,
            )
    if args.no_plain or not margins:
        return
    average = statistics.mean(margins)
    verdict = "PASS" if not stops and not failures and average >= TARGET_MARGIN else "FAIL"
    print(
        f"{verdict}: {len(stops)} NaN stops{' (' + ', '.join(stops) + ')' if stops else ''}; "
        f"{len(failures)} cases below the better plain loop - {TOLERANCE}"
        f"{' (' + ', '.join(failures) + ')' if failures else ''}; average margin "
        f"{average:+.3f} (target >= +{TARGET_MARGIN})"
    )
    sys.exit(0 if verdict == "PASS" else 1)


def _named_factory(name: str, train, val):
    """A taolu model name built the way taolu builds it, for the plain loops."""
    from taolu.models import build_model

    channels, height, width = train[0].shape[1:]
    classes = int(max(train[1].max(), val[1].max())) + 1
    return lambda: build_model(name, channels, (height, width), classes)


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    main()
