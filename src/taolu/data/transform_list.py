"""A --transforms list checked: YAML entries of torchvision.transforms.v2 names from an
allow-list, with plain, bounded arguments, parsed into TransformEntry items (Compose
flattened). Nothing outside the allow-list is ever looked up; the same rules hold for the eval
pipeline a checkpoint stores. transforms.py builds the pipelines from these entries."""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taolu.config import MAX_IMAGE_SIDE
from taolu.errors import ConfigError, shown
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


def normalization_of(
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
