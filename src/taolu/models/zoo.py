"""torchvision classifiers by name: a new head for the data's classes, weights read only from
local files (never downloaded), and freezing for transfer learning.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from taolu.checkpoint import FORMAT, inference_weights, load_checkpoint
from taolu.errors import CheckpointError, ConfigError
from taolu.torch_files import read_weights_only

# Where each family keeps its classifier head, by model class. "[-1]" means the last layer of
# a Sequential, whose index differs within a family (mobilenet_v2: 1, mobilenet_v3: 3).
HEADS = {
    "ResNet": "fc",
    "RegNet": "fc",
    "ShuffleNetV2": "fc",
    "GoogLeNet": "fc",
    "Inception3": "fc",
    "DenseNet": "classifier",
    "SqueezeNet": "classifier.1",
    "VisionTransformer": "heads.head",
    "SwinTransformer": "head",
    "AlexNet": "classifier[-1]",
    "VGG": "classifier[-1]",
    "EfficientNet": "classifier[-1]",
    "MobileNetV2": "classifier[-1]",
    "MobileNetV3": "classifier[-1]",
    "MNASNet": "classifier[-1]",
    "ConvNeXt": "classifier[-1]",
    "MaxVit": "classifier[-1]",
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Classifiers trained with auxiliary heads, which torchvision's own weight files still carry
# and torchvision drops after loading; taolu builds these models without them.
AUXILIARY_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# DenseNet files name layers "norm.1"; torchvision renames them to "norm1" when loading.
DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
WEIGHTS_NAME = re.compile(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*")


@dataclass
class LoadReport:
    """What load_weights did with each tensor. `missing`, `unexpected` and `mismatched` are
    empty in a report that is returned; load_weights raises instead."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # (key, shape in file, shape in model)
    skipped_head: list[str]
    # Neither loaded nor an error: auxiliary heads in the file, BatchNorm counters not in it.
    ignored: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped_head:
            lines.append(f"new head, trained from scratch: {', '.join(self.skipped_head)}")
        if self.ignored:
            lines.append(f"ignored: {', '.join(self.ignored)}")
        if self.missing:
            lines.append(f"missing from the file: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"in the file but not in the model: {', '.join(self.unexpected)}")
        for key, file_shape, model_shape in self.mismatched:
            lines.append(
                f"shape differs: {key} is {file_shape} in the file, {model_shape} in model"
            )
        return "; ".join(lines)


def torchvision_classifiers() -> list[str]:
    """Every image classifier torchvision builds (its detection, video and quantized models
    live in submodules, which list_models(module=...) leaves out)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_torchvision_model(name: str) -> bool:
    return name in torchvision_classifiers()


def _check_name(name: str) -> None:
    names = torchvision_classifiers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown torchvision model '{name}'{hint}")


def _named_weights(name: str, weights: str) -> WeightsEnum | None:
    """torchvision's weights entry that `weights` names ("DEFAULT", "IMAGENET1K_V1",
    "ResNet18_Weights.IMAGENET1K_V1"), or None when `weights` is a file path."""
    if Path(weights).exists() or not WEIGHTS_NAME.fullmatch(weights):
        return None
    _check_name(name)
    family = torchvision.models.get_model_weights(name)
    enum_name, _, entry = weights.rpartition(".")
    if enum_name and enum_name != family.__name__:
        raise ConfigError(
            f"weights '{weights}' are not for {name}; its weights are {family.__name__}"
        )
    if entry not in family.__members__:
        choices = ", ".join(["DEFAULT", *family.__members__])
        raise ConfigError(f"{name} has no weights '{entry}'; choose one of {choices}")
    return family[entry]


def default_input_size(name: str) -> int:
    """The image side `name` is trained at: the crop of its DEFAULT weights (299 for
    inception_v3, 224 for most); building the preset reads no file."""
    _check_name(name)
    return _crop_size(torchvision.models.get_model_weights(name).DEFAULT)


def _crop_size(weights: WeightsEnum) -> int:
    return int(weights.transforms().crop_size[0])


def _builder_options(name: str, weights: str | None) -> dict[str, Any]:
    """Keyword arguments that make a model built without weights match its weight files."""
    if name in ("googlenet", "inception_v3"):
        # transform_input: the files expect it (torchvision turns it on when it loads them).
        return {"aux_logits": False, "init_weights": True, "transform_input": True}
    if name.startswith("vit_"):
        # A ViT's positional embedding fixes its input size to that of its weights.
        named = _named_weights(name, weights) if weights else None
        return {"image_size": _crop_size(named) if named else default_input_size(name)}
    return {}


def build_torchvision(
    name: str, classes: int, channels: int = 3, *, weights: str | None = None
) -> nn.Module:
    """torchvision's `name`, untrained, with a head for `classes` outputs and a first
    convolution for `channels` (1 or 3). Pass the `weights` that will be loaded, if named,
    so a ViT is built for their image size."""
    _check_name(name)
    if channels not in (1, 3):
        raise ConfigError(f"torchvision models take 1 or 3 channels, not {channels}")
    model = torchvision.models.get_model(name, weights=None, **_builder_options(name, weights))
    replace_head(model, classes)
    if channels == 1:
        _replace_first_conv(model)
    return model


def head_path(model: nn.Module) -> str:
    """The dotted name of `model`'s classifier head, e.g. "fc" or "classifier.6"."""
    model_class = type(model).__name__
    if model_class not in HEADS:
        raise ConfigError(f"no known classifier head for a {model_class}")
    path = HEADS[model_class]
    if path.endswith("[-1]"):
        parent = path.removesuffix("[-1]")
        path = f"{parent}.{len(model.get_submodule(parent)) - 1}"
    return path


def replace_head(model: nn.Module, classes: int) -> str:
    """Put a freshly initialised head with `classes` outputs in place; returns its path."""
    path = head_path(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        new: nn.Module = nn.Conv2d(old.in_channels, classes, old.kernel_size)
    else:
        new = nn.Linear(old.in_features, classes, bias=old.bias is not None)
    model.set_submodule(path, new)
    return path


def first_conv_path(model: nn.Module) -> str:
    """The convolution that sees the image: the first one registered, in every family."""
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def _replace_first_conv(model: nn.Module) -> None:
    path = first_conv_path(model)
    old = model.get_submodule(path)
    new = nn.Conv2d(
        1,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    model.set_submodule(path, new)
    if getattr(model, "transform_input", False):
        model.transform_input = False  # it rescales three colour channels one by one


def adapt_first_conv(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """For a one-channel model, sum the file's RGB kernels of the first convolution: a gray
    image repeated in three channels then gives the same response as before."""
    key = first_conv_path(model) + ".weight"
    expected = model.get_parameter(key).shape
    weight = state_dict.get(key)
    if weight is None or expected[1] != 1 or weight.ndim != 4 or weight.shape[1] != 3:
        return state_dict
    adapted = OrderedDict(state_dict)
    adapted[key] = weight.sum(dim=1, keepdim=True)
    if hasattr(state_dict, "_metadata"):
        adapted._metadata = state_dict._metadata  # type: ignore[attr-defined]
    return adapted


def _hub_file(weights: WeightsEnum) -> Path:
    """Where torchvision would have cached `weights`: only this file is ever read."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _missing_hub_file(path: Path, name: str, weights: WeightsEnum) -> CheckpointError:
    return CheckpointError(
        f"weights {weights} for {name} are not on this machine: taolu never downloads, and "
        f"looked for {path.name} in {path.parent}. On a machine with network run\n"
        f"  python -c \"import torchvision; torchvision.models.get_model('{name}', "
        f"weights='{weights}')\"\n"
        f"then copy ~/.cache/torch/hub/checkpoints/{path.name} into {path.parent} "
        f"(or set TORCH_HOME), or pass --weights FILE"
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, a torch.save'd one (bare or wrapped in
    "state_dict"/"model"), or a taolu checkpoint; nothing in a file is ever run."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from None
    state = read_weights_only(path, "weights file")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return inference_weights(load_checkpoint(path))
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return state


def _normalize_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Undo the renamings that files commonly carry: DistributedDataParallel's "module.",
    torch.compile's "_orig_mod.", and DenseNet's old "norm.1" layer names."""
    keys = list(state)
    for prefix in ("module.", "_orig_mod."):
        if keys and all(key.startswith(prefix) for key in keys):
            keys = [key.removeprefix(prefix) for key in keys]
    keys = [
        match.group(1) + match.group(2) if (match := DENSENET_OLD_KEY.match(key)) else key
        for key in keys
    ]
    normalized = OrderedDict(zip(keys, state.values(), strict=True))
    # Module versions steer some loaders (BatchNorm, MNASNet); renamed keys invalidate the file's.
    renamed = keys != list(state)
    source = model.state_dict() if renamed or not hasattr(state, "_metadata") else state
    normalized._metadata = source._metadata  # type: ignore[attr-defined]
    return normalized


def _compare(model_state: dict, file_state: dict, head: str) -> LoadReport:
    report = LoadReport(loaded=[], missing=[], unexpected=[], mismatched=[], skipped_head=[])
    for key, tensor in model_state.items():
        if key not in file_state:
            target = report.ignored if key.endswith("num_batches_tracked") else report.missing
            target.append(key)
        elif file_state[key].shape == tensor.shape:
            report.loaded.append(key)
        elif key.startswith(head + "."):
            report.skipped_head.append(key)
        else:
            shapes = (tuple(file_state[key].shape), tuple(tensor.shape))
            report.mismatched.append((key, *shapes))
    for key in file_state:
        if key not in model_state:
            auxiliary = key.startswith(AUXILIARY_PREFIXES)
            (report.ignored if auxiliary else report.unexpected).append(key)
    return report


def load_weights(model: nn.Module, source: str, name: str, *, head: str) -> LoadReport:
    """Load `source` into `model` (built by build_torchvision(name, ...)), all but the head.

    `source` is a weights file (.pth/.pt, .safetensors, or a taolu checkpoint) or the name of
    torchvision weights ("DEFAULT", "IMAGENET1K_V1"), read from the torch hub cache only.
    """
    named = _named_weights(name, source)
    if named is not None:
        path = _hub_file(named)
        if not path.is_file():
            raise _missing_hub_file(path, name, named)
    else:
        path = Path(source)
    return load_weights_file(model, path, name, head=head)


def load_weights_file(model: nn.Module, path: Path, name: str, *, head: str) -> LoadReport:
    """Load the weights file `path` into `model` (`name`, for messages), all but the head.
    Every tensor must fit, except those of `head` whose shape differs (a new class count);
    anything else raises CheckpointError listing each key at fault."""
    state = adapt_first_conv(_normalize_keys(_read_tensors(path), model), model)
    report = _compare(model.state_dict(), state, head)
    if report.missing or report.unexpected or report.mismatched:
        raise CheckpointError(f"{path} does not fit {name}: {report.render()}")
    chosen = OrderedDict((key, state[key]) for key in report.loaded)
    chosen._metadata = state._metadata  # type: ignore[attr-defined]
    model.load_state_dict(chosen, strict=False)
    return report


def weights_preprocessing(name: str, weights: str) -> dict[str, Any] | None:
    """The input size and normalization `weights` were trained with: {"size", "resize",
    "mean", "std"}. Named weights give their own preset (built without reading any file);
    a weights file gives ImageNet's statistics at the model's default size."""
    named = _named_weights(name, weights)
    if named is None:
        size = default_input_size(name)
        # 224 -> 256: torchvision's usual resize-then-crop ratio of 0.875.
        return {
            "size": size,
            "resize": round(size / 0.875),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }
    preset = named.transforms()
    return {
        "size": int(preset.crop_size[0]),
        "resize": int(preset.resize_size[0]),
        "mean": [float(value) for value in preset.mean],
        "std": [float(value) for value in preset.std],
    }


def freeze(model: nn.Module, mode: str, head: str) -> list[str]:
    """Stop gradients to part of `model`: "backbone" (all but `head`), "none", or "N" (the
    first N parameter tensors, in named_parameters order). Returns the frozen names."""
    parameters = list(model.named_parameters())
    if mode == "none":
        return []
    if mode == "backbone":
        frozen = [(key, value) for key, value in parameters if not key.startswith(head + ".")]
    elif mode.isdigit() and int(mode) <= len(parameters):
        frozen = parameters[: int(mode)]
    else:
        raise ConfigError(
            f"freeze must be 'backbone', 'none' or a count from 0 to {len(parameters)}, "
            f"not '{mode}'"
        )
    for _, parameter in frozen:
        parameter.requires_grad_(False)
    return [key for key, _ in frozen]


def set_frozen_batchnorm_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose weights are all frozen in eval mode, so training leaves
    their running statistics as loaded too. Call after every model.train()."""
    for module in model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()
