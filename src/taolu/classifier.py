"""A trained model ready to classify, from whatever the user has: a run's checkpoint (rebuilt
by rebuild.py), or a file `taolu export` wrote — ONNX (onnxruntime), TorchScript (only with
trust_code: it holds code) or safetensors (weights only, rebuilt from its metadata) — with
its classes, preprocessing, temperature, rejection threshold and augmentation views."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu import checkpoint as ckpt
from taolu.data.loaders import BatchTransform, Preprocessing
from taolu.errors import CheckpointError, ConfigError
from taolu.export_format import FORMATS, METADATA_FILE, read_metadata
from taolu.rebuild import restore_model
from taolu.torch_files import TORCHSCRIPT as TORCHSCRIPT_ARCHIVE
from taolu.torch_files import check_archive

# What `artifact_kind` can answer.
CHECKPOINT, ONNX, TORCHSCRIPT, SAFETENSORS = "checkpoint", "onnx", "torchscript", "safetensors"


@dataclass
class Classifier:
    """A model ready to classify: its classes, the preprocessing its input needs, and
    `forward`, from float images (N, C, H, W) in 0..1 on `device` to logits (N, classes)."""

    classes: list[str]
    preprocessing: Preprocessing
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    source: str  # checkpoint, onnx, torchscript or safetensors
    # What is known of the run the model came from: "model", "epoch" and, from a
    # checkpoint, that epoch's validation "metrics" (val_acc, val_loss, ...).
    about: dict[str, Any] = field(default_factory=dict)
    # Temperature scaling fitted at the end of training: probabilities are softmax(logits / T).
    temperature: float = 1.0
    # The confidence below which `reject_below="auto"` answers "unknown" (None: not stored).
    reject_threshold: float | None = None
    # The run's batch augmentation, {"flip", "shift"}: the views `tta` averages over.
    augmentation: dict[str, Any] = field(default_factory=dict)
    # The training images' background brightness (TrainState.background), when known.
    background: float | None = None
    # The torch network behind `forward` (checkpoints and safetensors; None for ONNX and
    # TorchScript): what explain.py hooks for its maps.
    network: nn.Module | None = None


def normalizing_forward(
    network: nn.Module, preprocessing: Preprocessing, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network behind taolu's normalisation, on `device`."""
    network = network.to(device).eval()
    transform = BatchTransform(preprocessing, device)
    return lambda images: network(transform(images))


def checkpoint_classifier(
    model: nn.Module, state: dict[str, Any], device: torch.device
) -> Classifier:
    """A restored checkpoint model (see `restore_model`) as a Classifier."""
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    rows = [row for row in state.get("history", []) if row.get("epoch") == state.get("epoch")]
    metrics = {
        key: value
        for key, value in (rows[-1] if rows else {}).items()
        if key.startswith("val_") and isinstance(value, float)
    }
    return Classifier(
        classes=list(state["classes"]),
        preprocessing=preprocessing,
        forward=normalizing_forward(model, preprocessing, device),
        device=device,
        source=CHECKPOINT,
        about={
            "model": state.get("model_name") or state.get("model_class", ""),
            "epoch": state.get("epoch"),
            "metrics": metrics,
        },
        temperature=float(state.get("temperature", 1.0)),
        reject_threshold=state.get("reject_threshold"),
        augmentation=dict(state.get("augmentation") or {}),
        background=state.get("background"),
        network=model,
    )


def _exported_classifier(
    metadata: dict[str, Any],
    forward: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    source: str,
) -> Classifier:
    """A Classifier for an exported file, everything but its forward pass from the file's
    checked metadata (`read_metadata`)."""
    return Classifier(
        metadata["classes"],
        metadata["preprocessing"],
        forward,
        device,
        source,
        _exported_about(metadata),
        temperature=metadata["temperature"],
        reject_threshold=metadata["reject_threshold"],
        augmentation=metadata["augmentation"],
    )


def _exported_about(metadata: dict[str, Any]) -> dict[str, Any]:
    """Classifier.about for an exported file: its metadata records no metrics."""
    epoch = str(metadata.get("epoch", ""))
    return {
        "model": metadata.get("model_name") or metadata.get("model_class", ""),
        "epoch": int(epoch) if epoch.isdigit() else None,
        "metrics": {},
    }


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files open with an 8-byte little-endian header length, then '{'."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


def artifact_kind(path: Path) -> str:
    """checkpoint, onnx (.onnx), torchscript (.torchscript.pt, the name `taolu export` gives
    it) or safetensors (.safetensors, or by its header). TorchScript is decided by the name
    alone, never by what the file holds: a file runs as code only when its name says it is
    code and the caller trusts it (`trust_code`)."""
    if path.is_dir():
        return CHECKPOINT
    name = path.name.lower()
    if name.endswith(FORMATS["onnx"]):
        return ONNX
    if name.endswith(FORMATS["torchscript"]):
        return TORCHSCRIPT
    if name.endswith(FORMATS["safetensors"]) or _looks_like_safetensors(path):
        return SAFETENSORS
    return CHECKPOINT


def _onnx_classifier(path: Path, device: torch.device) -> Classifier:
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own kinds for unreadable files
        raise CheckpointError(f"{path}: not a readable ONNX model: {error}") from None
    metadata = read_metadata(session.get_modelmeta().custom_metadata_map, path)
    name = session.get_inputs()[0].name

    def forward(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: images.cpu().numpy()})[0])

    return _exported_classifier(metadata, forward, torch.device("cpu"), ONNX)


def _torchscript_classifier(path: Path, device: torch.device, trust_code: bool) -> Classifier:
    """A TorchScript file taolu exported. It holds code, run by torch's interpreter, which can
    read and write files like any program: it is loaded only when the caller says they trust
    it, and only after its archive and its taolu metadata have been checked."""
    import warnings

    refuse_code_unless_trusted(path, trust_code)
    check_archive(path, TORCHSCRIPT_ARCHIVE)
    metadata = None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if entries:
                metadata = json.loads(archive.read(entries[0]).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable TorchScript archive: {error}") from None
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, or JSON nested too deep
        raise CheckpointError(f"{path}: its taolu metadata is damaged: {error}") from None
    decoded = read_metadata(metadata, path)  # refuses a foreign file before loading its code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as error:
            raise CheckpointError(f"{path}: not a loadable TorchScript file: {error}") from None
    module.eval()
    return _exported_classifier(decoded, module, device, TORCHSCRIPT)


def _safetensors_classifier(
    path: Path, model: nn.Module | None, device: torch.device
) -> Classifier:
    """Weights without code: the network is rebuilt from the metadata (a built-in or
    torchvision name, or the layer list stored in it) or passed in as `model`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata()
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from None
    metadata = read_metadata(raw, path)
    state = {
        "model": weights,
        "model_name": metadata["model_name"],
        "model_spec": metadata["model_spec"],
        "model_class": metadata["model_class"] or "unknown",
        "classes": metadata["classes"],
        "preprocessing": metadata["preprocessing"].to_dict(),
        "config": {"weights": metadata["weights"] or None},
    }
    network = restore_model(state, model)
    forward = normalizing_forward(network, metadata["preprocessing"], device)
    classifier = _exported_classifier(metadata, forward, device, SAFETENSORS)
    classifier.network = network
    return classifier


def refuse_code_unless_trusted(path: str | Path, trust_code: bool) -> None:
    """A TorchScript file (known by its name, *.torchscript.pt, never by what it holds) holds
    code that runs when it is loaded: load one only when the user says they trust it."""
    if str(path).lower().endswith(FORMATS["torchscript"]) and not trust_code:
        raise CheckpointError(
            f"{path}: refused: a TorchScript file holds code that would run when it is loaded, "
            "and could do anything a program can (read or change your files). Load it only if "
            "you trust whoever made it: --trust-code (Python: trust_code=True); a .onnx or "
            ".safetensors export, or the run's checkpoint, holds no code"
        )


def load_classifier(
    run_or_file: str | Path,
    *,
    checkpoint: str = "best",
    model: nn.Module | None = None,
    device: torch.device,
    trust_code: bool = False,
) -> Classifier:
    """A run directory's `best`/`last` checkpoint, a checkpoint file, or a file `taolu export`
    wrote (.onnx, .torchscript.pt, .safetensors), ready to classify. A TorchScript file holds
    code and is refused unless `trust_code` is True."""
    path = Path(run_or_file).expanduser()
    refuse_code_unless_trusted(path, trust_code)
    kind = artifact_kind(path) if path.exists() else CHECKPOINT
    if kind == CHECKPOINT:
        state = ckpt.load_checkpoint(ckpt.find_checkpoint(path, f"{checkpoint}.pt"))
        return checkpoint_classifier(restore_model(state, model), state, device)
    if kind == SAFETENSORS:
        return _safetensors_classifier(path, model, device)
    if model is not None:
        raise ConfigError(
            f"model= is for checkpoints and .safetensors files; {path} ({kind}) carries its own "
            "network: leave model out"
        )
    if kind == ONNX:
        return _onnx_classifier(path, device)
    return _torchscript_classifier(path, device, trust_code)


# --------------------------------------------------------------------------- classify
