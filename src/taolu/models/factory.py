"""Any model name taolu accepts, made into a network sized for the data: a built-in net, a
torchvision classifier, a timm model (`timm:NAME`), a YAML/JSON layer list, or
`package.module:factory`."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from torch import nn

from taolu.errors import ConfigError, did_you_mean
from taolu.models.nets import BUILTIN_MODELS
from taolu.models.timm_zoo import is_timm_name

FACTORY_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def is_factory_name(name: str) -> bool:
    """`package.module:factory`; `timm:NAME` is timm's model, never a factory."""
    return bool(FACTORY_PATTERN.fullmatch(name)) and not is_timm_name(name)


def model_kind(name: str) -> str:
    """'builtin', 'spec', 'timm', 'factory' or 'torchvision' (raises ConfigError for none)."""
    if name in BUILTIN_MODELS:
        return "builtin"
    if is_timm_name(name):
        from taolu.models.timm_zoo import check_timm_name

        check_timm_name(name)
        return "timm"
    from taolu.models import spec, zoo  # imported late: zoo pulls in torchvision's models

    if spec.is_spec_path(name):
        if not Path(name).expanduser().is_file():
            raise ConfigError(f"option 'model': layer list {name} not found")
        return "spec"
    if is_factory_name(name):
        return "factory"
    if zoo.is_torchvision_model(name):
        return "torchvision"
    hint = did_you_mean(name, (*BUILTIN_MODELS, *zoo.torchvision_classifiers()))
    raise ConfigError(
        f"option 'model': unknown model {name!r}; {hint + ' ' if hint else ''}known models: "
        "the built-in nets "
        f"({', '.join(BUILTIN_MODELS)}), any torchvision classifier (see `taolu models`), "
        "timm:NAME for a timm model, a YAML/JSON layer list (*.yaml, *.json), or "
        "package.module:factory"
    )


def check_model_name(name: str) -> None:
    model_kind(name)


def _call_factory(name: str, channels: int, size: tuple[int, int], classes: int) -> nn.Module:
    """Import `package.module` and call `factory`, passing whichever of channels, classes
    (or num_classes) and image_size (or size) it takes. Only ever for a name the user gave.
    Whatever goes wrong in the user's code (an import that fails, a call that raises, a result
    that is no nn.Module) becomes a ConfigError naming the factory."""
    module_name, attribute = name.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # the module's own import-time code may raise anything
        raise ConfigError(f"option 'model': cannot load {name}: {_first_line(error)}") from None
    offered = {
        "channels": channels,
        "in_channels": channels,
        "classes": classes,
        "num_classes": classes,
        "image_size": size[0],
        "size": size,
    }
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError) as error:  # not callable, or a builtin without a signature
        raise ConfigError(
            f"option 'model': {name} is not a function taolu can call: {_first_line(error)}"
        ) from None
    try:
        model = factory(**{key: value for key, value in offered.items() if key in accepted})
    except Exception as error:
        raise ConfigError(
            f"option 'model': calling {name}({', '.join(k for k in offered if k in accepted)}) "
            f"failed: {_first_line(error)}; a factory takes any of channels, classes (or "
            "num_classes) and image_size, and returns an nn.Module"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"option 'model': {name} returned {type(model).__name__}, not an nn.Module"
        )
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def build_model(
    name: str,
    channels: int,
    size: tuple[int, int],
    classes: int,
    *,
    weights: str | None = None,
    layers: list | None = None,
) -> nn.Module:
    """The network `name`, sized for (channels, size) inputs and `classes` outputs.
    `weights` matters only to torchvision models whose shape depends on them (ViT sizes).
    `layers` is a layer list stored in a checkpoint: the network is built from it, and the
    file `name` points to is never read."""
    if layers is not None:
        from taolu.models.spec import build_from_spec

        source = f"the layer list stored for {name}"
        return build_from_spec(layers, channels, tuple(size), classes, source=source)
    kind = model_kind(name)
    if kind == "builtin":
        return BUILTIN_MODELS[name](channels, tuple(size), classes)
    if kind == "spec":
        from taolu.models.spec import build_from_spec, load_layer_spec

        return build_from_spec(load_layer_spec(name), channels, tuple(size), classes, source=name)
    if kind == "factory":
        return _call_factory(name, channels, tuple(size), classes)
    if kind == "timm":
        from taolu.models.timm_zoo import build_timm

        return build_timm(name, classes, channels, tuple(size))
    from taolu.models.zoo import build_torchvision

    return build_torchvision(name, classes, channels, weights=weights or None)
