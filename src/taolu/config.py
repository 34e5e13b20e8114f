"""The typed training config: every option, its default and its rule, written down once.

The CLI flags, the `taolu.train` keywords, the YAML file and `--set key=value` are all views
of `TrainConfig`; `option_values.resolve_config` applies them in one documented order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from taolu.metric_names import MONITORS, VAL_ACC

EMBEDDED_DATA = ("mnist5k", "digits")
SCHEDULERS = ("onecycle", "cosine", "step", "plateau", "constant")
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("auto", "none", "shift", "shift-flip")
RESIZE_MODES = ("squash", "crop", "pad")
CACHE_MODES = ("auto", "ram", "disk", "off")
NORMALIZE_MODES = ("auto", "imagenet", "inception", "clip", "none")
SWITCHES = ("auto", "on", "off")
TRACKERS = ("none", "mlflow")  # where a run is logged besides its run directory
# The largest image side taolu resizes to, for --image-size, --transforms and the preprocessing
# stored in checkpoints and exports: one 4096x4096 RGB image is 50 MB per decoding thread.
MAX_IMAGE_SIDE = 4096


# The option groups of `taolu train --help` and the README's tables, in the order shown.
OPTION_GROUPS = {
    "data": "where the images come from and how they become batches",
    "model": "the network and the weights it starts from",
    "optimisation": "the optimizer, the learning rate and its schedule",
    "regularisation": "what keeps the model from learning the training split by heart",
    "control": "how long the run goes, what it keeps, what it does when a step goes wrong",
    "hardware": "where and how the arithmetic runs",
    "output": "what the run writes and prints",
}


def _option(
    default: Any, help: str, *, group: str, metavar: str | None = None, **rules: Any
) -> Any:
    """A config field with its one-line help, its group in OPTION_GROUPS, the placeholder its
    flag shows (`--lr LR|auto`; a field with choices shows them) and validation rules
    (choices, min, max, ...)."""
    if group not in OPTION_GROUPS:
        raise ValueError(f"option group {group!r} is not one of {', '.join(OPTION_GROUPS)}")
    return field(
        default=default, metadata={"help": help, "group": group, "metavar": metavar, **rules}
    )


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Frozen: derived values live in locals, never here."""

    # The sections below are the file's; each field's `group` places it in --help and the
    # README (workers, for one, is listed under hardware).
    # --- data ---
    data: str = _option(
        "mnist5k",
        "embedded set (mnist5k, digits), torchvision set on disk (cifar10, ... with data_root), "
        "image folder, CSV list with a path,label header, Hugging Face dataset (a save_to_disk "
        "folder, Parquet/Arrow files, or hf:NAME from the local cache), or WebDataset shards "
        "('train-{000..009}.tar', streamed)",
        kind="data",
        group="data",
        metavar="SET_OR_FOLDER",
    )
    data_root: str = _option(
        "",
        "folder holding torchvision data sets on disk (mnist, cifar10, ...); never downloaded",
        group="data",
        metavar="DIR",
    )
    val_fraction: float = _option(
        0.2,
        "share of a single-folder data set held out for validation",
        gt=0.0,
        lt=1.0,
        group="data",
        metavar="FRACTION",
    )
    image_size: int = _option(
        0,
        "side length images are resized to; 0 keeps the data's own",
        ge=0,
        le=MAX_IMAGE_SIDE,
        group="data",
        metavar="PIXELS",
    )
    resize_mode: str = _option(
        "squash", "how images reach image_size", choices=RESIZE_MODES, group="data"
    )
    channels: int = _option(
        0, "1 (gray) or 3 (RGB); 0 takes the data's own", choices=(0, 1, 3), group="data"
    )
    augment: str = _option(
        "auto",
        "random batch augmentation; auto = shift-flip for photo folders, CSV lists and "
        "torchvision's photo sets, shift for digits and your own Datasets (a flip may change "
        "their class)",
        choices=AUGMENTS,
        group="data",
    )
    cache: str = _option(
        "auto",
        "decode image files once into memory (ram), a reusable file (disk), or not (off); "
        "auto = ram when it fits a quarter of RAM",
        choices=CACHE_MODES,
        group="data",
    )
    cache_dir: str = _option(
        "",
        "where --cache disk keeps decoded images; empty = ~/.cache/taolu",
        group="data",
        metavar="DIR",
    )
    max_bad_fraction: float = _option(
        0.1,
        "refuse to train when more than this share of image files is unreadable",
        ge=0.0,
        le=1.0,
        group="data",
        metavar="FRACTION",
    )
    transforms: Any = _option(
        "",
        "per-sample torchvision transforms instead of batch augmentation: a YAML list of "
        "{name, args}, or a preset (auto, digits, objects, photos); empty = use --augment",
        kind="transforms",
        group="data",
        metavar="PRESET_OR_YAML",
    )
    normalize: str = _option(
        "auto",
        "mean/std: auto (measured on the training split), imagenet, inception (0.5), clip "
        "(OpenAI CLIP's), none; pretrained weights set their own",
        choices=NORMALIZE_MODES,
        group="data",
    )
    # --- data: Hugging Face datasets and WebDataset shards (data/hf_sets.py, data/shards.py) ---
    image_column: str = _option(
        "",
        "a Hugging Face dataset's image column; empty = its one Image feature",
        group="data",
        metavar="COLUMN",
    )
    label_column: str = _option(
        "",
        "a Hugging Face dataset's label column; empty = its one ClassLabel feature (whose "
        "names become the classes)",
        group="data",
        metavar="COLUMN",
    )
    val_shards: str = _option(
        "",
        "WebDataset shards to validate on (a brace pattern); empty = hold out the last "
        "val_fraction of the --data shards",
        group="data",
        metavar="PATTERN",
    )
    shuffle_buffer: int = _option(
        1000,
        "WebDataset shards: samples held in the buffer that shuffles the stream (with the "
        "shard order shuffled each epoch); 0 = shard order only",
        ge=0,
        group="data",
        metavar="SAMPLES",
    )
    # 64 rather than 128: twice the steps in the first epoch, which with --ema took mnist5k
    # past 95% validation accuracy in epoch 1 for every seed tried (benchmarks/vs_tutorial.py).
    batch_size: int = _option(
        64,
        "images per batch, per process under torchrun; an optimizer step takes --accumulate "
        "batches from every process",
        ge=1,
        group="data",
        metavar="N",
    )
    workers: int = _option(
        -1,
        "DataLoader worker processes for file/Dataset data; -1 = auto",
        ge=-1,
        group="hardware",
        metavar="N",
    )
    # --- model ---
    model: str = _option(
        "fastcnn",
        "network: fastcnn, tudui, lenet5, resnet9, a torchvision classifier (resnet18, vgg16, "
        "...), a YAML/JSON layer list, or package.module:factory",
        kind="model",
        group="model",
        metavar="NAME_OR_FILE",
    )
    weights: str = _option(
        "",
        "pretrained weights: a .pth/.safetensors/taolu checkpoint file, or DEFAULT or a "
        "torchvision weights name, read from the local torch hub cache only",
        group="model",
        metavar="FILE_OR_NAME",
    )
    freeze: str = _option(
        "none",
        "parameters kept fixed: none, backbone (all but the head), or N (the first N)",
        kind="freeze",
        group="model",
        metavar="none|backbone|N",
    )
    fine_tune: int = _option(
        0,
        "train only the head for this many epochs, then the whole net (backbone at a lower lr)",
        ge=0,
        group="model",
        metavar="EPOCHS",
    )
    backbone_lr_scale: float = _option(
        0.1,
        "backbone learning rate after the head-only epochs, as a share of lr",
        gt=0.0,
        le=1.0,
        group="model",
        metavar="SHARE",
    )
    channels_last: str = _option(
        "auto",
        "channels-last memory layout: auto = on for taolu's own nets on CPU and GPU, "
        "off for your nn.Module (its forward() may call .view())",
        choices=SWITCHES,
        group="hardware",
    )
    sync_bn: bool = _option(
        False,
        "synchronise BatchNorm statistics across GPU processes under torchrun (DDP)",
        group="hardware",
    )
    compile: bool = _option(
        False,
        "torch.compile the model (measured slower for small nets on CPU; try it on GPU)",
        group="hardware",
    )
    # --- loss and optimizer ---
    # auto: the recipe picks (run/recipe.py): SGD for taolu's tuned nets on enough data and
    # for pretrained weights, AdamW for everything else (benchmarks/recipe_zoo.py).
    optimizer: str = _option(
        "auto",
        "auto (SGD for taolu's tuned nets and pretrained weights, else AdamW), sgd, adam, "
        "adamw, rmsprop, or any other torch.optim optimizer by name (nadam, radam, ...)",
        kind="optimizer",
        group="optimisation",
        metavar="auto|NAME",
    )
    # auto: taolu's tuned value where it has one, else a short lr range test on the real
    # model and data; config.yaml records the number used.
    lr: float | str = _option(
        "auto",
        "peak learning rate, or auto: the tuned value for taolu's own nets, else a short "
        "range test on your model and data before training",
        gt=0.0,
        words=("auto",),
        group="optimisation",
        metavar="LR|auto",
    )
    # auto: the recipe resolves it (on with adaptive optimizers, off with SGD) and config.yaml
    # records on or off; a config.yaml without it (older runs) resumes as off.
    fan_in_lr: str = _option(
        "auto",
        "a Linear layer reading more than 1024 inputs learns at lr x 1024 / inputs: auto = on "
        "for adaptive optimizers (Adam, AdamW, ...), off for SGD",
        choices=SWITCHES,
        group="optimisation",
    )
    momentum: float = _option(
        0.9, "SGD/RMSprop momentum", ge=0.0, lt=1.0, group="optimisation", metavar="M"
    )
    nesterov: bool = _option(True, "Nesterov momentum for SGD", group="optimisation")
    weight_decay: float = _option(
        5e-4,
        "weight decay on weights (not on biases or norm layers)",
        ge=0.0,
        group="regularisation",
        metavar="WD",
    )
    scheduler: str = _option(
        "onecycle",
        "learning-rate schedule: onecycle (warm-up then anneal), cosine, step, plateau "
        "(cut when the monitored metric stalls), constant",
        choices=SCHEDULERS,
        group="optimisation",
    )
    warmup_epochs: float = _option(
        0.0,
        "linear warm-up from lr/100 before cosine, step or constant",
        ge=0.0,
        group="optimisation",
        metavar="EPOCHS",
    )
    step_epochs: int = _option(
        0,
        "step: multiply the lr by lr_gamma every this many epochs; 0 = a third of the run",
        ge=0,
        group="optimisation",
        metavar="EPOCHS",
    )
    lr_gamma: float = _option(
        0.1,
        "the factor step and plateau multiply the lr by",
        gt=0.0,
        lt=1.0,
        group="optimisation",
        metavar="FACTOR",
    )
    plateau_patience: int = _option(
        2,
        "plateau: epochs without a better monitored value before the lr is cut",
        ge=0,
        group="optimisation",
        metavar="EPOCHS",
    )
    accumulate: int = _option(
        1,
        "batches whose gradients add up before each optimizer step",
        ge=1,
        group="optimisation",
        metavar="BATCHES",
    )
    clip_grad: float = _option(
        0.0,
        "clip the gradients' global norm to this; 0 = off",
        ge=0.0,
        group="optimisation",
        metavar="NORM",
    )
    # On by default: the averaged weights' validation accuracy is steadier epoch to epoch
    # (measured on mnist5k: 0.94-0.97 after epoch 1 against 0.89-0.92 without).
    ema: float = _option(
        0.99,
        "decay of an exponential moving average of the weights, which is evaluated and saved "
        "(0.999 for long runs); 0 = off",
        ge=0.0,
        lt=1.0,
        group="regularisation",
        metavar="DECAY",
    )
    label_smoothing: float = _option(
        0.1,
        "cross-entropy label smoothing",
        ge=0.0,
        lt=1.0,
        group="regularisation",
        metavar="EPSILON",
    )
    mixup: float = _option(
        0.0,
        "mixup: Beta(a, a) mixing of image pairs and labels; 0 = off",
        ge=0.0,
        group="regularisation",
        metavar="ALPHA",
    )
    cutmix: float = _option(
        0.0,
        "cutmix: Beta(a, a) sized patches pasted between images; 0 = off",
        ge=0.0,
        group="regularisation",
        metavar="ALPHA",
    )
    class_weights: str = _option(
        "none",
        "auto weighs each class's loss by the inverse of its share of the training split",
        choices=("none", "auto"),
        group="regularisation",
    )
    sampler: str = _option(
        "shuffle",
        "shuffle, or balanced: draw every class equally often (with replacement)",
        choices=("shuffle", "balanced"),
        group="regularisation",
    )
    lr_find: bool = _option(
        False,
        "instead of training: sweep the lr, plot the loss against it, suggest a value",
        group="optimisation",
    )
    # --- run ---
    epochs: int = _option(15, "passes over the training split", ge=1, group="control", metavar="N")
    monitor: str = _option(
        VAL_ACC,
        "the metric that picks the best checkpoint (and early stopping)",
        choices=MONITORS,
        group="control",
        metavar="METRIC",
    )
    patience: int = _option(
        0,
        "stop after this many epochs without a better monitored value; 0 = never",
        ge=0,
        group="control",
        metavar="EPOCHS",
    )
    on_nan: str = _option(
        "recover",
        "when a step's loss is NaN or infinite: recover (back to the weights at the epoch's "
        "start, lr / 4, up to 3 times), stop (best checkpoint kept) or skip the batch",
        choices=("recover", "stop", "skip"),
        group="control",
    )
    deterministic: bool = _option(
        False,
        "deterministic algorithms only: the same seed gives bitwise identical runs on CPU",
        group="control",
    )
    device: str = _option(
        "auto",
        f"where to train: {DEVICES_HELP}",
        kind="device",
        group="hardware",
        metavar="auto|cpu|cuda[:N]|mps",
    )
    precision: str = _option(
        "auto",
        "auto = bf16 where the hardware has it, fp16 on older GPUs",
        choices=PRECISIONS,
        group="hardware",
    )
    seed: int = _option(
        0,
        "seed for initial weights, batch order and augmentation (the split is fixed)",
        ge=0,
        le=2**64 - 1,
        group="control",
        metavar="N",
    )
    out: str = _option("runs", "folder that holds run directories", group="output", metavar="DIR")
    name: str = _option(
        "",
        "run directory name; empty = first free of train, train2, ...",
        group="output",
        metavar="NAME",
    )
    histograms: int = _option(
        0,
        "weight and gradient histograms in TensorBoard every N epochs; 0 = off",
        ge=0,
        group="output",
        metavar="EPOCHS",
    )
    report: bool = _option(
        True, "write report/ (PNG plots and report.html) at the end", group="output"
    )
    progress: bool = _option(
        True, "live progress bar (only when output is a terminal)", group="output"
    )
    verbose: bool = _option(True, "print a line per epoch and the final summary", group="output")
    track: str = _option(
        "none",
        "also log the run to an MLflow tracking store (mlflow): its options, per-epoch "
        "metrics, summary, report and exported model",
        choices=TRACKERS,
        kind="track",
        group="output",
    )
    mlflow_uri: str = _option(
        "",
        "MLflow store for --track mlflow: a folder, sqlite:///FILE.db or a server you name; "
        "empty = MLFLOW_TRACKING_URI, else MLflow's local default in the working directory",
        group="output",
        metavar="URI",
    )
    mlflow_experiment: str = _option(
        "taolu", "MLflow experiment the run is logged under", group="output", metavar="NAME"
    )


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag_name(name: str) -> str:
    """An option's command-line flag: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


# Options that may differ when a run is resumed; the rest define the run and must not change.
RESUMABLE_OPTIONS = frozenset(
    {
        "epochs",
        "device",
        "workers",
        "progress",
        "verbose",
        "cache",
        "cache_dir",
        "data_root",
        "shuffle_buffer",
        "patience",
        "compile",
        "on_nan",
        "histograms",
        "report",
        "track",
        "mlflow_uri",
        "mlflow_experiment",
    }
)
