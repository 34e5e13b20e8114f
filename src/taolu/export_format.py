"""The contract every exported file keeps with whoever reads it (taolu predict, serve, or the
user's own code): the formats and their file endings, the input and output names, and the
metadata each file carries, str -> str, written by `build_metadata` and checked by
`read_metadata`. model_export writes files by it; inference reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from taolu.data.loaders import Preprocessing
from taolu.errors import CheckpointError

# The metadata entries that hold JSON (or a number) as text, besides `texts` below.
JSON_TEXTS = ("model_spec", "input", "temperature", "reject_threshold", "augmentation")
MAX_TTA_SHIFT = 64  # pixels; training shifts by about a 14th of the side (2 px at 28 px)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
EXPORT_FORMAT = "taolu-export"
EXPORT_VERSION = 1
METADATA_FILE = "taolu.json"  # the TorchScript archive's extra file holding the metadata
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def build_metadata(state: dict[str, Any], *, normalized_inside: bool) -> dict[str, str]:
    """The metadata every exported file carries (str -> str; JSON where structured)."""
    from taolu import __version__

    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    classes = [str(name) for name in state["classes"]]
    channels, (height, width) = preprocessing.channels, preprocessing.size
    colour = "RGB" if channels == 3 else "gray" if channels == 1 else f"{channels} channels"
    if normalized_inside:
        values = "0..1 (image / 255); the mean/std normalisation is inside the model"
    else:
        values = "(image / 255 - mean) / std with the preprocessing's mean and std"
    described_input = {
        "name": INPUT_NAME,
        "dtype": "float32",
        "layout": "NCHW",
        "shape": ["batch", channels, height, width],
        "colour": colour,
        "values": values,
        "normalized_inside": normalized_inside,
    }
    described_output = {
        "name": OUTPUT_NAME,
        "shape": ["batch", len(classes)],
        "values": "logits; softmax gives the probabilities of the classes, in order",
    }
    return {
        "format": EXPORT_FORMAT,
        "format_version": str(EXPORT_VERSION),
        "taolu_version": __version__,
        "model_name": state.get("model_name") or "",
        # A layer list travels as the list itself: predict never reads a file the export names.
        "model_spec": json.dumps(state.get("model_spec"), ensure_ascii=False),
        "model_class": str(state.get("model_class", "")),
        "weights": str(state.get("config", {}).get("weights") or ""),
        "epoch": str(state.get("epoch", "")),
        # Calibration (engine.calibration): softmax(logits / temperature) are the probabilities
        # taolu reports; the outputs themselves stay logits.
        "temperature": repr(float(state.get("temperature", 1.0))),
        "reject_threshold": json.dumps(state.get("reject_threshold")),
        # The views test-time augmentation may show: {"flip": bool, "shift": pixels}.
        "augmentation": json.dumps(state.get("augmentation") or {}),
        "classes": json.dumps(classes, ensure_ascii=False),
        "preprocessing": json.dumps(preprocessing.to_dict(), ensure_ascii=False),
        "input": json.dumps(described_input, ensure_ascii=False),
        "output": json.dumps(described_output, ensure_ascii=False),
    }


def read_metadata(metadata: Any, source: str | Path) -> dict[str, Any]:
    """Check an exported file's metadata and decode it: {"classes", "preprocessing",
    "model_name", "model_spec", "model_class", "weights", "normalized_inside"}; refuse a
    foreign file, and a damaged or crafted one, with a CheckpointError."""
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{source}: not exported by taolu: it carries no taolu metadata (class names and "
            "preprocessing); export the run with `taolu export`"
        )
    texts = ("format_version", "classes", "preprocessing", "model_name", "model_class", "weights")
    wrong = [key for key in (*texts, *JSON_TEXTS) if not isinstance(metadata.get(key, ""), str)]
    if wrong:
        raise CheckpointError(f"{source}: its taolu metadata is damaged: {wrong[0]} is not text")
    try:
        version = int(metadata.get("format_version", ""))
        classes = json.loads(metadata["classes"])
        preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
        model_spec = json.loads(metadata.get("model_spec") or "null")
        described_input = json.loads(metadata.get("input") or "{}")
    except (KeyError, ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{source}: its taolu metadata is damaged: {error}") from None
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None
    if version > EXPORT_VERSION:
        raise CheckpointError(
            f"{source}: exported by a newer taolu (export format {version}); upgrade taolu"
        )
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{source}: its taolu metadata is damaged: classes are not names")
    if not (model_spec is None or isinstance(model_spec, list)):
        raise CheckpointError(f"{source}: its taolu metadata is damaged: model_spec is no list")
    if not isinstance(described_input, dict):
        raise CheckpointError(f"{source}: its taolu metadata is damaged: input is no mapping")
    return {
        "classes": classes,
        "preprocessing": preprocessing,
        "model_name": metadata.get("model_name") or None,
        "model_spec": model_spec,
        "model_class": metadata.get("model_class", ""),
        "weights": metadata.get("weights", ""),
        "epoch": metadata.get("epoch", ""),
        "normalized_inside": described_input.get("normalized_inside", True) is not False,
        **_prediction_settings(metadata, source),
    }


def _prediction_settings(metadata: dict[str, str], source: str | Path) -> dict[str, Any]:
    """The run's calibration and augmentation views, as predict uses them: "temperature",
    "reject_threshold" and "augmentation", each checked (absent in older exports: 1.0, None,
    no views)."""
    damaged = f"{source}: its taolu metadata is damaged"
    try:
        temperature = float(metadata.get("temperature") or "1.0")
        threshold = json.loads(metadata.get("reject_threshold") or "null")
        augmentation = json.loads(metadata.get("augmentation") or "{}")
    except (ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{damaged}: {error}") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"{damaged}: temperature {temperature}")
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if threshold is not None and not (number and 0 <= threshold <= 1):
        raise CheckpointError(f"{damaged}: reject_threshold")
    if not (
        isinstance(augmentation, dict)
        and isinstance(augmentation.get("flip", False), bool)
        and type(augmentation.get("shift", 0)) is int
        and 0 <= augmentation.get("shift", 0) <= MAX_TTA_SHIFT
    ):
        raise CheckpointError(f"{damaged}: augmentation")
    return {
        "temperature": temperature,
        "reject_threshold": None if threshold is None else float(threshold),
        "augmentation": {
            "flip": augmentation.get("flip", False),
            "shift": augmentation.get("shift", 0),
        },
    }
