"""Per-sample transforms: a YAML list of torchvision.transforms.v2 entries, or a preset, becomes
a picklable pipeline that DataLoader workers run on each decoded uint8 (C, H, W) image.

The eval pipeline is derived from the same list, so it is never written twice; normalisation is
not done here but handed to the batch normaliser on the device (loaders.BatchTransform).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from taolu.config import MAX_IMAGE_SIDE
from taolu.data.decode import fit_to_size, match_channels
from taolu.errors import ConfigError, DataError, shown
from taolu.plain import is_plain

if TYPE_CHECKING:  # torchvision is imported where a transform is built (see transform_class)
    from torchvision.transforms import v2

OPTION = "transforms"  # the config option that holds a user's list, as messages name it

# The tutorial's conversions: images are uint8 tensors already, so these are accepted and skipped.
CONVERSIONS = ("ToTensor", "ToImage", "ToDtype", "ToPureTensor")
# Deterministic: the eval pipeline keeps them. Normalize is not run but handed to the batches.
DETERMINISTIC = ("Normalize", "Resize", "CenterCrop", "Pad", "Grayscale")
# Random: dropped for eval, except the two crops, which become their centred counterparts.
RANDOM_GEOMETRY = ("RandomCrop", "RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip")
RANDOM_WARPS = ("RandomRotation", "RandomAffine", "RandomPerspective")
RANDOM_COLOUR = ("ColorJitter", "GaussianBlur", "RandomGrayscale", "RandomErasing")
POLICIES = ("AutoAugment", "RandAugment", "TrivialAugmentWide")
# The allow-list: only these names are looked up, never an arbitrary attribute of torchvision.
RANDOM = RANDOM_GEOMETRY + RANDOM_WARPS + RANDOM_COLOUR + POLICIES
TRANSFORM_NAMES = (*CONVERSIONS, "Compose", *DETERMINISTIC, *RANDOM)
NOT_RUN = frozenset(CONVERSIONS) | {"Normalize"}  # never run on a sample
KEPT_FOR_EVAL = frozenset(CONVERSIONS + DETERMINISTIC)
# Spellings copied from code (`transforms.ToTensor`, `v2.RandomCrop`) name the same entry.
MODULE_PREFIXES = ("torchvision.transforms.v2.", "torchvision.transforms.", "transforms.", "v2.")
PRESETS = ("digits", "objects", "photos", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_MODES = ("auto", "imagenet", "none")
# Bounds on a transform list (a --transforms option, or the eval pipeline a checkpoint stores).
MAX_ENTRIES = 64  # entries once Compose is flattened
MAX_COMPOSE = 4  # Compose inside Compose
ARGUMENT_DEPTH = 3  # lists and mappings inside an argument
SIZE_ARGUMENTS = ("size", "max_size", "padding", "kernel_size")  # pixels, <= MAX_IMAGE_SIDE


def transform_class(name: str) -> type[v2.Transform]:
    """torchvision's v2 class for an allowed name. torchvision is imported here, on first
    use: it takes ~2 s to import (it pulls in torch._dynamo), which runs without per-sample
    transforms, like the default one, never need."""
    from torchvision.transforms import v2

    if name not in TRANSFORM_NAMES:
        raise KeyError(name)
    # ToTensor maps to its v2 replacement, ToImage: v2.ToTensor is deprecated.
    return v2.ToImage if name == "ToTensor" else getattr(v2, name)


@dataclass(frozen=True)
class TransformEntry:
    """One checked entry of a transform list: an allowed v2 class name and its keyword arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def build(self) -> v2.Transform:
        # A copy, so a transform that keeps a list it was given cannot change the entry.
        args = copy.deepcopy(self.args)
        if self.name == "AutoAugment" and isinstance(args.get("policy"), str):
            # YAML can only give the policy's name; torchvision wants its enum.
            args["policy"] = _auto_augment_policy(args["policy"])
        return transform_class(self.name)(**args)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": copy.deepcopy(self.args)}


def _auto_augment_policy(name: str) -> v2.AutoAugmentPolicy:
    from torchvision.transforms import v2

    try:
        return v2.AutoAugmentPolicy(name)
    except ValueError:
        allowed = ", ".join(policy.value for policy in v2.AutoAugmentPolicy)
        raise ValueError(f"policy {name!r} is not one of: {allowed}") from None


def parse_transform_list(spec: object, *, option: str = OPTION) -> list[TransformEntry]:
    """Check a YAML list of `{name: ..., args: {...}}` entries (args optional) and return them.

    Compose entries (`args: {transforms: [...]}`) are flattened into the list. Every refusal
    raises ConfigError naming the entry as `option[index]`, its name and what is allowed.
    Bounds: at most MAX_ENTRIES entries once flattened, Compose nested at most MAX_COMPOSE
    deep, arguments plain values (numbers, strings, lists, mappings), and sizes, paddings and
    kernels at most MAX_IMAGE_SIDE pixels. The same rules hold for the eval pipeline a
    checkpoint stores, which a shared file could otherwise craft.
    """
    return _parse_list(spec, option, depth=0)


def _parse_list(spec: object, option: str, depth: int) -> list[TransformEntry]:
    if not isinstance(spec, list):
        raise ConfigError(
            f"option '{option}' must be a list of {{name, args}} entries, not {type(spec).__name__}"
        )
    entries: list[TransformEntry] = []
    for index, item in enumerate(spec):
        entries.extend(_parse_entry(item, f"{option}[{index}]", depth))
        if len(entries) > MAX_ENTRIES:
            raise ConfigError(
                f"option '{option}': more than {MAX_ENTRIES} transforms (Compose entries "
                "counted by what they hold); no pipeline needs that many"
            )
    return entries


def _parse_entry(item: object, where: str, depth: int) -> list[TransformEntry]:
    if not isinstance(item, dict):
        raise ConfigError(
            f"{where}: an entry must be a mapping like "
            f"{{name: RandomCrop, args: {{size: 32, padding: 4}}}}, not {shown(item)}"
        )
    unknown = sorted(str(key) for key in item if key not in ("name", "args"))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; an entry has 'name' and optional "
            "'args', and the transform's own arguments go under 'args'"
        )
    if "name" not in item:
        raise ConfigError(f"{where}: the entry has no 'name'; known: {', '.join(TRANSFORM_NAMES)}")
    name = _known_name(item["name"], where)
    where = f"{where} ({name})"
    args = {} if item.get("args") is None else item["args"]
    if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
        raise ConfigError(
            f"{where}: 'args' must be a mapping of argument: value, not {shown(args)}"
        )
    if name == "Compose":
        return _parse_compose(args, where, depth)
    _check_argument_names(name, args, where)
    _check_plain(args, where)
    _check_sizes(args, where)
    if name not in CONVERSIONS:  # conversions are never built; ToDtype's dtype is a torch object
        _check_construction(name, args, where)
    if name == "Normalize":
        _check_normalize(args, where)
    if name == "RandomErasing" and args.get("inplace"):
        raise ConfigError(
            f"{where}: inplace: true would overwrite the data set's stored image; leave it out"
        )
    return [TransformEntry(name, copy.deepcopy(args))]


def _known_name(name: object, where: str) -> str:
    if isinstance(name, str):
        for prefix in MODULE_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name in TRANSFORM_NAMES:
            return name
    close = difflib.get_close_matches(str(name), TRANSFORM_NAMES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(
        f"{where}: unknown transform {name!r}; {hint}known: {', '.join(TRANSFORM_NAMES)}"
    )


def _parse_compose(args: dict, where: str, depth: int) -> list[TransformEntry]:
    if set(args) != {"transforms"} or not isinstance(args["transforms"], list):
        raise ConfigError(f"{where}: Compose takes one argument, transforms: a list of entries")
    if depth >= MAX_COMPOSE:
        raise ConfigError(f"{where}: Compose nested more than {MAX_COMPOSE} deep; flatten it")
    return _parse_list(args["transforms"], f"{where}.args.transforms", depth + 1)


def _check_plain(args: dict, where: str) -> None:
    """Arguments are what YAML writes plainly: numbers, strings, booleans, null, and lists and
    mappings of them, nested a few levels (no tensors, dates or bytes)."""
    for key, value in args.items():
        if not is_plain(value, ARGUMENT_DEPTH):
            raise ConfigError(
                f"{where}: argument {key} {shown(value)} refused: only numbers, strings, "
                f"true/false, null, and lists or mappings of them {ARGUMENT_DEPTH} levels deep"
            )


def _check_sizes(args: dict, where: str) -> None:
    """Each size, padding and kernel size, a number or a list of them, within MAX_IMAGE_SIDE:
    beyond it a single image would need gigabytes (Resize(30000) asks 3.6 GB)."""
    for key in SIZE_ARGUMENTS:
        value = args.get(key)
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for number in numbers:
            if isinstance(number, (int, float)) and not abs(number) <= MAX_IMAGE_SIDE:
                raise ConfigError(
                    f"{where}: {key} {shown(value)} is beyond {MAX_IMAGE_SIDE} pixels; "
                    "taolu works with images up to that side"
                )


def _check_argument_names(name: str, args: dict, where: str) -> None:
    takes = list(inspect.signature(transform_class(name)).parameters)
    for argument in args:
        if argument not in takes:
            close = difflib.get_close_matches(argument, takes, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            allowed = ", ".join(takes) if takes else "no arguments"
            raise ConfigError(
                f"{where}: unknown argument '{argument}'; {hint}{name} takes: {allowed}"
            )


def _check_construction(name: str, args: dict, where: str) -> None:
    try:
        TransformEntry(name, args).build()
    except Exception as error:  # torchvision checks its arguments with whatever it meets first
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"{where}: arguments {shown(args)} refused: {first_line}") from None


def _check_normalize(args: dict, where: str) -> None:
    mean, std = _floats(args.get("mean")), _floats(args.get("std"))
    if mean is None or std is None or len(mean) != len(std):
        raise ConfigError(f"{where}: mean and std must be lists of numbers of the same length")
    if not all(math.isfinite(value) for value in mean + std):
        raise ConfigError(f"{where}: mean and std must be finite numbers")
    if any(value <= 0 for value in std):
        raise ConfigError(f"{where}: every std must be > 0, got std {list(std)}")


def _floats(values: object) -> tuple[float, ...] | None:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return (float(values),)
    if isinstance(values, (list, tuple)) and values:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return tuple(float(v) for v in values)
    return None


def _normalization(
    entries: Sequence[TransformEntry], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std of the list's Normalize entry, one per channel; None without one."""
    found = [entry for entry in entries if entry.name == "Normalize"]
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(f"option '{OPTION}': Normalize appears {len(found)} times; keep one")
    mean, std = _floats(found[0].args["mean"]), _floats(found[0].args["std"])
    if len(mean) == 1:  # torchvision broadcasts one value over all channels; so do we
        mean, std = mean * channels, std * channels
    if len(mean) != channels:
        raise ConfigError(
            f"option '{OPTION}': Normalize gives {len(mean)} means, but images have "
            f"{channels} channel(s)"
        )
    return mean, std


class SamplePipeline:
    """The per-sample transform: uint8 (C, H, W) in, uint8 (channels, *size) out.

    Built once from checked entries and called like a function. Entries run in order on a
    tv_tensors.Image; then the image is fitted to `size` and matched to `channels`.
    Randomness comes from torch's global generator, which the DataLoader seeds in each worker;
    pass `generator` to make one call reproducible instead. Pickles as its entries, so
    DataLoader workers rebuild it rather than copy torchvision objects.
    """

    def __init__(
        self,
        entries: Sequence[TransformEntry],
        *,
        size: tuple[int, int],
        channels: int,
        resize_mode: str = "squash",
    ):
        self.entries = tuple(entries)
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.resize_mode = resize_mode
        self.normalization = _normalization(self.entries, self.channels)
        run = [entry for entry in self.entries if entry.name not in NOT_RUN]
        self._steps = [(entry, entry.build()) for entry in run]

    @property
    def has_steps(self) -> bool:
        """Whether any entry runs per sample (else the pipeline only fits size and channels)."""
        return bool(self._steps)

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if generator is None:
            return self._apply(image)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        # v2 draws from the global generator; fork it so the caller's global state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._apply(image)

    def _apply(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision import tv_tensors

        if image.is_floating_point():  # 0..1, as ToTensor gives it
            image = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        image = tv_tensors.Image(match_channels(image.as_subclass(torch.Tensor), self.channels))
        for entry, transform in self._steps:
            try:
                image = transform(image)
            except (RuntimeError, ValueError, TypeError) as error:
                shape = "x".join(str(side) for side in image.shape)
                raise DataError(
                    f"transform {entry.name} {entry.args} failed on a {shape} image: {error}"
                ) from error
        image = fit_to_size(image.as_subclass(torch.Tensor), self.size, self.resize_mode)
        return match_channels(image, self.channels).contiguous()  # (channels, *size) uint8

    def describe(self) -> list[dict[str, Any]]:
        """The resolved list of {name, args}; parse_transform_list of it rebuilds this pipeline."""
        return [entry.describe() for entry in self.entries]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "entries": self.describe(),
            "size": self.size,
            "channels": self.channels,
            "resize_mode": self.resize_mode,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        entries = [TransformEntry(**item) for item in state.pop("entries")]
        self.__init__(entries, **state)

    def __repr__(self) -> str:
        names = ", ".join(entry.name for entry in self.entries) or "no entries"
        return f"SamplePipeline({names}; size={self.size}, channels={self.channels})"


def _digits_preset(size: tuple[int, int]) -> list[dict[str, Any]]:
    # A little rotation, shift and scale; never a flip: a mirrored 2 or 7 is no longer that digit.
    args = {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}
    return [{"name": "RandomAffine", "args": args}]


def _objects_preset(size: tuple[int, int]) -> list[dict[str, Any]]:
    # The CIFAR recipe: shift by up to 4 px (pad, then crop back) and mirror half the images.
    return [
        {"name": "RandomCrop", "args": {"size": list(size), "padding": 4}},
        {"name": "RandomHorizontalFlip", "args": {}},
    ]


def _photos_preset(size: tuple[int, int]) -> list[dict[str, Any]]:
    # Scale from 0.35 rather than torchvision's 0.08: small data sets and short runs cannot
    # learn from crops that keep under a third of the object.
    return [
        {"name": "RandomResizedCrop", "args": {"size": list(size), "scale": [0.35, 1.0]}},
        {"name": "RandomHorizontalFlip", "args": {}},
        {"name": "ColorJitter", "args": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2}},
    ]


PRESET_SPECS: dict[str, Callable[[tuple[int, int]], list[dict[str, Any]]]] = dict(
    digits=_digits_preset, objects=_objects_preset, photos=_photos_preset, none=lambda size: []
)


def preset_spec(preset: str, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The transform list a preset stands for, in the YAML form a user would write."""
    if preset not in PRESET_SPECS:
        raise ConfigError(
            f"option 'preset': {preset!r} is not allowed; choose one of: {', '.join(PRESETS)}"
        )
    return PRESET_SPECS[preset](size)


def preset_for(size: tuple[int, int], channels: int, digits: bool) -> str:
    """The preset for a kind of input: digits, small objects (<= 40 px), or photos."""
    if digits:
        return "digits"
    return "objects" if min(size) <= 40 else "photos"


def _train_entries(spec: list | None, preset: str, size: tuple[int, int]) -> list[TransformEntry]:
    if spec is None:
        return parse_transform_list(preset_spec(preset, size), option=f"preset {preset}")
    return parse_transform_list(spec)


def build_train_pipeline(
    spec: list | None,
    *,
    preset: str,
    size: tuple[int, int],
    channels: int,
    resize_mode: str = "squash",
) -> SamplePipeline:
    """The training pipeline: the user's list if given, else the preset's."""
    entries = _train_entries(spec, preset, size)
    return SamplePipeline(entries, size=size, channels=channels, resize_mode=resize_mode)


def build_eval_pipeline(
    spec: list | None,
    *,
    size: tuple[int, int],
    channels: int,
    preset: str = "none",
    resize_mode: str = "squash",
) -> SamplePipeline:
    """The eval pipeline, derived from the training list (or preset): deterministic entries
    kept, random crops centred, every other random entry dropped."""
    entries = eval_entries(_train_entries(spec, preset, size))
    return SamplePipeline(entries, size=size, channels=channels, resize_mode=resize_mode)


def eval_entries(entries: Sequence[TransformEntry]) -> list[TransformEntry]:
    """The deterministic counterpart of a training list."""
    derived: list[TransformEntry] = []
    for entry in entries:
        if entry.name in KEPT_FOR_EVAL:
            derived.append(entry)
        elif entry.name == "RandomResizedCrop":
            derived.extend(_centre_of_resized_crop(entry.args))
        elif entry.name == "RandomCrop":
            derived.extend(_centre_of_crop(entry.args))
    return derived


def _centre_of_resized_crop(args: dict[str, Any]) -> list[TransformEntry]:
    size = args["size"]
    # Resizing the short side to the longer target side makes the crop fit in both directions.
    side = size if isinstance(size, int) else max(size)
    resize = {"size": side, **{k: args[k] for k in ("interpolation", "antialias") if k in args}}
    return [TransformEntry("Resize", resize), TransformEntry("CenterCrop", {"size": size})]


def _centre_of_crop(args: dict[str, Any]) -> list[TransformEntry]:
    centre = [TransformEntry("CenterCrop", {"size": args["size"]})]
    if not args.get("padding"):
        return centre
    pad = {k: args[k] for k in ("padding", "fill", "padding_mode") if k in args}
    return [TransformEntry("Pad", pad), *centre]


def normalization_stats(
    mode: str, images: torch.Tensor
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0..1 range) for `--normalize`: auto measures the given (N, C, H, W) sample
    of the training split, imagenet gives ImageNet's (their average for gray), none 0 and 1."""
    channels = images.shape[1]
    if mode == "auto":
        unit = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        mean = unit.mean(dim=(0, 2, 3))
        # A constant channel has std 0; the floor keeps the division finite.
        std = unit.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return tuple(mean.tolist()), tuple(std.tolist())
    if mode == "imagenet":
        if channels == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        return IMAGENET_MEAN, IMAGENET_STD
    if mode == "none":
        return (0.0,) * channels, (1.0,) * channels
    raise ConfigError(
        f"option 'normalize': {mode!r} is not allowed; choose one of: {', '.join(NORMALIZE_MODES)}"
    )
