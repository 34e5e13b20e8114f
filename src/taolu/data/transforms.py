"""Per-sample transforms: a YAML list of torchvision.transforms.v2 entries, or a preset, becomes
a picklable pipeline that DataLoader workers run on each decoded uint8 (C, H, W) image.

The eval pipeline is derived from the same list, so it is never written twice; normalisation is
not done here but handed to the batch normaliser on the device (loaders.BatchTransform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from taolu.data.decode import fit_to_size, match_channels
from taolu.data.transform_list import (
    KEPT_FOR_EVAL,
    NOT_RUN,
    TransformEntry,
    normalization_of,
    parse_transform_list,
)
from taolu.errors import ConfigError, DataError

PRESETS = ("digits", "objects", "photos", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fixed mean/std by name, as pretrained weights were trained with them (timm's pretrained_cfg
# uses these three for all but a handful of its weights): ImageNet's, Inception's, OpenAI CLIP's.
NAMED_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
NORMALIZE_MODES = ("auto", *NAMED_STATS, "none")


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
        self.normalization = normalization_of(self.entries, self.channels)
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


def normalize_name(mean: Sequence[float], std: Sequence[float]) -> str | None:
    """The --normalize name whose fixed mean and std these are (to 3 decimals, as weights'
    configurations print them), or None."""
    named = {**NAMED_STATS, "none": ((0.0,) * 3, (1.0,) * 3)}
    given = [*mean, *std]
    for name, (known_mean, known_std) in named.items():
        known = [*known_mean, *known_std]
        if len(known) == len(given) and all(
            abs(a - b) < 1e-3 for a, b in zip(known, given, strict=True)
        ):
            return name
    return None


def normalization_stats(
    mode: str, images: torch.Tensor
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0..1 range) for `--normalize`: auto measures the given (N, C, H, W) sample
    of the training split, imagenet, inception and clip give those weights' own (their average
    for gray), none 0 and 1."""
    channels = images.shape[1]
    if mode == "auto":
        unit = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        mean = unit.mean(dim=(0, 2, 3))
        # A constant channel has std 0; the floor keeps the division finite.
        std = unit.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return tuple(mean.tolist()), tuple(std.tolist())
    if mode in NAMED_STATS:
        mean, std = NAMED_STATS[mode]
        if channels == 1:
            return (sum(mean) / 3,), (sum(std) / 3,)
        return mean, std
    if mode == "none":
        return (0.0,) * channels, (1.0,) * channels
    raise ConfigError(
        f"option 'normalize': {mode!r} is not allowed; choose one of: {', '.join(NORMALIZE_MODES)}"
    )
