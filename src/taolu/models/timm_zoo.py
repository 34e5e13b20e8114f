"""timm's models by name (`timm:NAME`), when timm is installed: built untrained with timm's own
classifier reset for the data's classes, weights read only from local files, and the
preprocessing timm's `pretrained_cfg` records for them. timm is imported only here, and only
when a timm model is asked for (it adds ~0.3 s to an import of torch and torchvision)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from taolu.errors import CheckpointError, ConfigError, did_you_mean

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'taolu[timm]'"
# A few to start from, small to mid-sized, convolutional and attention-based: the ones
# plain `taolu models` counts (`taolu models --timm` lists every name).
CURATED = (
    "resnet10t",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "efficientnet_b0",
    "convnext_nano",
    "regnety_016",
    "vit_small_patch16_224",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold


def is_timm_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def import_timm() -> ModuleType:
    """timm, or a ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"timm models need the timm package, which is not installed: {INSTALL_HINT}"
        ) from None
    return timm


def is_timm_installed() -> bool:
    """Whether timm can be imported, found without importing it."""
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def architecture(name: str) -> str:
    """'timm:resnet10t.a1_in1k' -> 'resnet10t.a1_in1k' (checked against timm's registry)."""
    bare = name.removeprefix(TIMM_PREFIX)
    timm = import_timm()
    if not bare or not timm.is_model(bare):
        known = timm.list_models()
        hint = did_you_mean(bare.partition(".")[0], known).replace("mean ", "mean timm:")
        raise ConfigError(
            f"option 'model': timm has no model {bare!r}"
            + (f" ({hint})" if hint else "")
            + f"; `taolu models --timm` lists its {len(known)} models"
        )
    return bare


def check_timm_name(name: str) -> None:
    architecture(name)


def pretrained_config(name: str) -> dict[str, Any]:
    """timm's pretrained_cfg for `name` (its default tag, or the tag the name gives), read from
    timm's registry: no model is built and no file is read."""
    timm = import_timm()
    config = timm.models.get_pretrained_cfg(architecture(name))
    return config.to_dict() if config is not None else {}


def build_options(name: str, channels: int, size: tuple[int, int]) -> dict[str, Any]:
    """timm.create_model's keywords for the data's shape: its channels, and its size for
    transformers whose position table fixes the input size."""
    fixed = pretrained_config(name).get("fixed_input_size")
    return {"in_chans": channels, **({"img_size": tuple(size)} if fixed else {})}


def build_timm(name: str, classes: int, channels: int, size: tuple[int, int]) -> nn.Module:
    """timm's `name`, untrained (pretrained=False: nothing is downloaded), for `channels`
    inputs, with timm's own reset_classifier giving it a head for `classes` outputs."""
    timm = import_timm()
    bare = architecture(name)
    if channels not in (1, 3):
        raise ConfigError(f"timm models take 1 or 3 channels here, not {channels}")
    try:
        model = timm.create_model(bare, pretrained=False, **build_options(name, channels, size))
    except Exception as error:  # timm raises assorted errors for sizes a net cannot take
        raise ConfigError(f"timm could not build {bare}: {error}") from None
    model.reset_classifier(classes)
    return model


def timm_head(model: nn.Module) -> str | None:
    """The dotted name of a timm model's classifier, from its pretrained_cfg; None for a model
    that is not timm's (found without importing timm)."""
    if not type(model).__module__.startswith("timm."):
        return None
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(head, (list, tuple)):  # distilled models keep two heads; the first is main
        head = head[0]
    return head or None


def weights_preprocessing(name: str) -> dict[str, Any]:
    """What timm's pretrained_cfg says `name`'s weights were trained with: {"size" (the input
    side), "mean", "std", "interpolation"}."""
    config = pretrained_config(name)
    input_size = config.get("input_size") or (3, 224, 224)
    return {
        "size": int(input_size[-1]),
        "mean": tuple(config.get("mean", ())),
        "std": tuple(config.get("std", ())),
        "interpolation": config.get("interpolation", ""),
    }


def weights_file(name: str, source: str) -> Path:
    """The local file `--weights` names for a timm model: a path, or DEFAULT, the file of the
    pretrained configuration `name` picks, found in the local Hugging Face hub cache, where
    timm keeps the weights it downloaded; never fetched."""
    path = Path(source).expanduser()
    if path.exists() or source.upper() != "DEFAULT":
        if not path.is_file():
            raise CheckpointError(
                f"weights file not found: {path}; for a timm model --weights takes a "
                ".safetensors/.pth file, or DEFAULT for weights timm already cached here"
            )
        return path
    config = pretrained_config(name)
    hub_id = config.get("hf_hub_id") or ""
    cached = hub_cache_file(hub_id)
    if cached is None:
        raise CheckpointError(
            f"the weights for {name} are not on this machine: taolu never downloads, and "
            f"found no {' or '.join(WEIGHT_FILES)} of {hub_id or 'its hub repo'} in the "
            "Hugging Face cache (HF_HOME). On a machine with network run\n"
            f"  python -c \"import timm; timm.create_model('{architecture(name)}', "
            'pretrained=True)"\n'
            "then copy the cache over, or save the state dict with safetensors and pass "
            "--weights FILE"
        )
    return cached


def hub_cache_file(hub_id: str) -> Path | None:
    """A cached weights file of the hub repo `hub_id`, looked up in the local cache only."""
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def list_timm_models(pattern: str = "*") -> list[str]:
    """timm's model names matching the shell-style `pattern` ('convnext*', '*vit*')."""
    timm = import_timm()
    return [name for name in timm.list_models() if fnmatch.fnmatchcase(name, pattern)]


def parameter_count(name: str) -> int:
    """Parameters of `name` with timm's 1000-class ImageNet head, counted on the meta device
    (nothing allocated)."""
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(architecture(name), pretrained=False)
    return sum(parameter.numel() for parameter in model.parameters())
