"""A network written as a list of torch.nn layers (a YAML or JSON file, or a Python list),
built into an `nn.Sequential` whose input sizes are measured by a dry run, never by hand.
Layers are numbered from 0 in messages, as `print(model)` numbers them.

The built network keeps its list (`LayerList.spec`), which checkpoints and exports store in
place of the file's path: a shared run never sends taolu to read a file it names, and editing
the YAML file later cannot change what a trained run predicts. A list read from a shared file
is bounded before any memory is spent on it (see `build_from_spec`)."""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.errors import ConfigError, shown
from taolu.plain import is_plain, read_yaml

Shape = tuple[int, ...]
# Bounds on a layer list, checked by a dry run on the meta device (no memory): a few bytes of
# YAML could otherwise ask for a Linear of a billion inputs, or activations of many gigabytes.
MAX_LAYERS = 1000
MAX_PARAMETERS = 2**30  # about 1.07 billion: 4 GiB of float32 weights
MAX_ACTIVATION = 2**28  # values one layer outputs for one image: 1 GiB of float32
MAX_STACKED = 100  # num_layers of an LSTM, GRU or TransformerEncoder (copies made before counting)


class RowsRecurrent(nn.Module):
    """An LSTM or GRU that reads an image's rows as a sequence, (B, C, H, W) -> (B, H, C*W),
    or a (B, L, D) sequence as it is, and outputs the final hidden state: (B, hidden), or
    (B, 2 * hidden) when bidirectional (both directions' final states, side by side)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        *,
        cell: str = "LSTM",
    ):
        super().__init__()
        recurrent = {"LSTM": nn.LSTM, "GRU": nn.GRU}[cell]
        self.recurrent = recurrent(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            batch_first=True,
        )
        self.directions = 2 if bidirectional else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W): a step per row
        _, state = self.recurrent(x)
        final = state[0] if isinstance(state, tuple) else state  # an LSTM also returns its cell
        # (num_layers * directions, B, hidden): the top layer's last state in each direction;
        # for one direction this equals the output at the last time step.
        return torch.cat(list(final[-self.directions :]), dim=1)


class TokenTransformer(nn.Module):
    """A transformer encoder over the image's H*W pixels as tokens of C features (or a
    (B, L, D) sequence as it is), projected to d_model when C differs, with a learned position
    embedding, mean-pooled to (B, d_model)."""

    def __init__(
        self,
        in_features: int,
        tokens: int,
        d_model: int,
        nhead: int,
        num_layers: int = 1,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.project = nn.Linear(in_features, d_model) if in_features != d_model else nn.Identity()
        # Without positions, attention and mean pooling would see the pixels as an unordered bag.
        self.position = nn.Parameter(
            nn.init.trunc_normal_(torch.zeros(1, tokens, d_model), std=0.02)
        )
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward or 4 * d_model,
            dropout,
            batch_first=True,
            norm_first=True,  # pre-norm trains stably without learning-rate warmup
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return self.encoder(self.project(x) + self.position).mean(dim=1)


def _rows_input(shape: Shape) -> dict[str, Any]:
    return {"input_size": shape[1] * shape[3] if len(shape) == 4 else shape[2]}


def _tokens(shape: Shape) -> dict[str, Any]:
    if len(shape) == 4:
        return {"in_features": shape[1], "tokens": shape[2] * shape[3]}
    return {"in_features": shape[2], "tokens": shape[1]}


def _layer_norm_shape(shape: Shape, given: Any) -> Any:
    """LayerNorm's normalized_shape: the last dimension unless given; `all` means every
    dimension but the batch's."""
    if given is None:
        return shape[-1]
    return list(shape[1:]) if given == "all" else given


@dataclass(frozen=True)
class LayerKind:
    """How to build one layer name: the constructor, the input ranks it accepts, and the
    arguments measured from the input shape (which a spec's positional arguments skip)."""

    build: Callable[..., nn.Module]
    ranks: tuple[int, ...] | None = None
    measure: Callable[[Shape], dict[str, Any]] | None = None
    measured: tuple[str, ...] = ()


def _from_channels(build: Callable[..., nn.Module], parameter: str, ranks: tuple[int, ...]):
    """A layer whose `parameter` is the input's channel count, dimension 1 of (B, C, ...)."""
    return LayerKind(build, ranks, lambda shape: {parameter: shape[1]}, (parameter,))


LAYERS: dict[str, LayerKind] = {
    "Conv1d": _from_channels(nn.Conv1d, "in_channels", (3,)),
    "Conv2d": _from_channels(nn.Conv2d, "in_channels", (4,)),
    "MaxPool1d": LayerKind(nn.MaxPool1d, (3,)),
    "MaxPool2d": LayerKind(nn.MaxPool2d, (4,)),
    "AvgPool1d": LayerKind(nn.AvgPool1d, (3,)),
    "AvgPool2d": LayerKind(nn.AvgPool2d, (4,)),
    "AdaptiveAvgPool1d": LayerKind(nn.AdaptiveAvgPool1d, (3,)),
    "AdaptiveAvgPool2d": LayerKind(nn.AdaptiveAvgPool2d, (4,)),
    "AdaptiveMaxPool2d": LayerKind(nn.AdaptiveMaxPool2d, (4,)),
    "ReLU": LayerKind(nn.ReLU),
    "LeakyReLU": LayerKind(nn.LeakyReLU),
    "GELU": LayerKind(nn.GELU),
    "SiLU": LayerKind(nn.SiLU),
    "Sigmoid": LayerKind(nn.Sigmoid),
    "Tanh": LayerKind(nn.Tanh),
    "BatchNorm1d": _from_channels(nn.BatchNorm1d, "num_features", (2, 3)),
    "BatchNorm2d": _from_channels(nn.BatchNorm2d, "num_features", (4,)),
    "LayerNorm": LayerKind(nn.LayerNorm),  # normalized_shape: given, `all`, or the last dim
    "GroupNorm": _from_channels(nn.GroupNorm, "num_channels", (2, 3, 4)),
    "Dropout": LayerKind(nn.Dropout),
    "Dropout2d": LayerKind(nn.Dropout2d, (4,)),
    "Flatten": LayerKind(nn.Flatten),
    "Linear": LayerKind(
        nn.Linear, (2, 3), lambda shape: {"in_features": shape[-1]}, ("in_features",)
    ),
    "LSTM": LayerKind(partial(RowsRecurrent, cell="LSTM"), (3, 4), _rows_input, ("input_size",)),
    "GRU": LayerKind(partial(RowsRecurrent, cell="GRU"), (3, 4), _rows_input, ("input_size",)),
    "TransformerEncoder": LayerKind(TokenTransformer, (3, 4), _tokens, ("in_features", "tokens")),
}
"""Every layer name a spec may use: an allow-list, so a spec can never reach other code."""


def is_spec_path(name: str) -> bool:
    """Whether a model name is a layer-list file (by its extension)."""
    return str(name).lower().endswith((".yaml", ".yml", ".json"))


def load_layer_spec(source: str | Path | list) -> list:
    """The layer list in a YAML or JSON file (a top-level list, or a mapping with only
    `layers`), or `source` itself when it is already a list. Only plain YAML is read
    (yaml.safe_load): tags such as !!python/object are refused, never run."""
    if isinstance(source, list):
        return _checked_list(source, "model spec")
    path = Path(source).expanduser()
    document = read_yaml(path, "layer list")
    if isinstance(document, dict):
        unknown = sorted(str(key) for key in document if key != "layers")
        if unknown or "layers" not in document:
            raise ConfigError(
                f"{path}: expected a list of layers, or a mapping with only the key 'layers'; "
                f"got keys {shown(list(document))}"
            )
        document = document["layers"]
    return _checked_list(document, str(path))


def _checked_list(layers: Any, source: str) -> list:
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"{source}: expected a non-empty list of layers, got {shown(layers)}")
    if len(layers) > MAX_LAYERS:
        raise ConfigError(f"{source}: {len(layers)} layers; at most {MAX_LAYERS} are built")
    for index, entry in enumerate(layers):
        if not is_plain(entry):
            raise ConfigError(
                f"{source} layer {index}: {shown(entry)} holds something other than numbers, "
                "strings, true/false, null, and lists or mappings of them (a few levels deep)"
            )
    return layers


class LayerList(nn.Sequential):
    """The nn.Sequential a layer list builds, keeping the list itself (plain values) as `spec`,
    so that a checkpoint stores the network, not the path of the file it came from."""

    def __init__(self, layers: list[nn.Module], spec: list):
        super().__init__(*layers)
        self.spec = spec


def stored_layers(model: nn.Module) -> list | None:
    """The layer list `model` was built from, as plain lists and dicts for a checkpoint or an
    export; None for a network that is not a layer list."""
    return copy.deepcopy(model.spec) if isinstance(model, LayerList) else None


def build_from_spec(
    spec: list,
    channels: int,
    size: tuple[int, int],
    classes: int,
    *,
    source: str = "model spec",
) -> LayerList:
    """An `nn.Sequential` of the spec's layers for (channels, *size) images and `classes`
    outputs. Each entry is a name ("ReLU") or {Name: args}, args being keyword arguments, a
    list of positional ones, or one value; measured sizes (in_channels, in_features, ...) are
    filled in from a dry run of the layers before. The word `classes` stands for the class
    count, and the last Linear may leave out its output size.

    The list is first built and dry-run on the meta device, which checks every shape and
    counts the weights and activations without allocating them; a list beyond MAX_LAYERS,
    MAX_PARAMETERS or MAX_ACTIVATION is refused before anything real is built."""
    spec = _checked_list(spec, source)
    entries = [_parse_entry(entry, index, source) for index, entry in enumerate(spec)]
    with torch.device("meta"):
        _build_layers(entries, channels, size, classes, source)
    return LayerList(_build_layers(entries, channels, size, classes, source), copy.deepcopy(spec))


def _build_layers(
    entries: list[tuple[str, Any]],
    channels: int,
    size: tuple[int, int],
    classes: int,
    source: str,
) -> list[nn.Module]:
    linears = [index for index, (name, _) in enumerate(entries) if name == "Linear"]
    last_linear = linears[-1] if linears else -1
    probe = torch.zeros(1, channels, *size)  # (1, C, H, W): one blank image
    layers: list[nn.Module] = []
    parameters = 0
    for index, (name, args) in enumerate(entries):
        where = f"{source} layer {index} ({name})"
        shape = tuple(probe.shape)
        layer = _build_layer(name, args, shape, classes, index == last_linear, where)
        parameters += sum(parameter.numel() for parameter in layer.parameters())
        if parameters > MAX_PARAMETERS:
            raise ConfigError(
                f"{where}: brings the network to {parameters:,} weights; taolu builds layer "
                f"lists of up to {MAX_PARAMETERS:,}"
            )
        probe = _dry_run(layer, probe, where)
        if probe.numel() > MAX_ACTIVATION:
            raise ConfigError(
                f"{where}: outputs {probe.numel():,} values for one image "
                f"{tuple(probe.shape)}; taolu allows up to {MAX_ACTIVATION:,} per layer"
            )
        layers.append(layer)
    if tuple(probe.shape) != (1, classes):
        raise ConfigError(
            f"{source}: the network outputs shape {tuple(probe.shape)} for one image, but the "
            f"data has {classes} classes, so it must output (1, {classes}); "
            "end the list with Flatten (if needed) and {Linear: classes}"
        )
    return layers


def _parse_entry(entry: Any, index: int, source: str) -> tuple[str, Any]:
    if isinstance(entry, str):
        name, args = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        ((name, args),) = entry.items()
    else:
        raise ConfigError(
            f"{source} layer {index}: expected a layer name or a one-key mapping "
            f"{{Name: args}}, got {shown(entry)}"
        )
    if name not in LAYERS:
        close = difflib.get_close_matches(str(name), LAYERS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{source} layer {index} ({name}): unknown layer; {hint}known layers: "
            f"{', '.join(LAYERS)}"
        )
    return name, args


def _build_layer(
    name: str, args: Any, shape: Shape, classes: int, last_linear: bool, where: str
) -> nn.Module:
    kind = LAYERS[name]
    if kind.ranks and len(shape) not in kind.ranks:
        ranks = " or ".join(f"{rank}-D" for rank in kind.ranks)
        hint = "; add Flatten before it" if name == "Linear" and len(shape) > 3 else ""
        raise ConfigError(f"{where}: needs a {ranks} input but gets shape {shape}{hint}")
    keywords = _arguments(name, args, classes, where)
    if name == "Linear" and "out_features" not in keywords:
        if not last_linear:
            raise ConfigError(
                f"{where}: needs an output size, e.g. {{Linear: 64}}; "
                "only the last Linear may leave it out"
            )
        keywords["out_features"] = classes
    if name == "LayerNorm":
        keywords["normalized_shape"] = _layer_norm_shape(shape, keywords.get("normalized_shape"))
    stacked = keywords.get("num_layers", 1)
    if isinstance(stacked, int) and stacked > MAX_STACKED:
        raise ConfigError(f"{where}: num_layers {stacked} is more than {MAX_STACKED}")
    measured = kind.measure(shape) if kind.measure else {}
    try:
        return kind.build(**{**measured, **keywords})
    except Exception as error:  # torch checks constructor arguments with whatever it meets
        raise ConfigError(f"{where}: bad arguments {shown(keywords)}: {error}") from None


def _arguments(name: str, args: Any, classes: int, where: str) -> dict[str, Any]:
    """The spec's arguments as keywords: positional ones are matched to the constructor's
    parameters after those that are measured, and the word `classes` becomes the count."""
    if args is None:
        return {}
    if isinstance(args, dict):
        return {str(key): _classes(value, classes) for key, value in args.items()}
    positional = args if isinstance(args, list) else [args]
    parameters = [
        parameter.name
        for parameter in inspect.signature(LAYERS[name].build).parameters.values()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and parameter.name not in LAYERS[name].measured
    ]
    if len(positional) > len(parameters):
        raise ConfigError(
            f"{where}: {len(positional)} positional arguments, but it takes at most "
            f"{len(parameters)} ({', '.join(parameters)})"
        )
    return {
        key: _classes(value, classes) for key, value in zip(parameters, positional, strict=False)
    }


def _classes(value: Any, classes: int) -> Any:
    return classes if value == "classes" else value


def _dry_run(layer: nn.Module, probe: torch.Tensor, where: str) -> torch.Tensor:
    """The layer's output for `probe`, in eval mode so BatchNorm accepts a batch of one."""
    layer.eval()
    try:
        with torch.no_grad():
            output = layer(probe)
    except Exception as error:  # IndexError, ZeroDivisionError, ... from the layer's arguments
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"{where}: cannot take input of shape {tuple(probe.shape)}: {message}"
        ) from None
    finally:
        layer.train()
    if output.numel() == 0:
        raise ConfigError(
            f"{where}: shrinks input of shape {tuple(probe.shape)} to {tuple(output.shape)}, "
            "which holds nothing; use fewer or smaller pooling layers"
        )
    return output
