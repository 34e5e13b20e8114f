"""Rebuild a trained model from its checkpoint, or open an exported one (ONNX, TorchScript,
safetensors), and classify images with the stored preprocessing (channels, size, resize mode,
mean and std, and the eval transforms)."""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.data.decode import decode_file, fit_to_size, match_channels, to_uint8_chw
from taolu.data.loaders import BatchTransform, Preprocessing
from taolu.data.pipeline import stored_eval_pipeline
from taolu.data.sources import list_image_files
from taolu.data.transforms import SamplePipeline
from taolu.engine import checkpoint as ckpt
from taolu.errors import CheckpointError, ConfigError, DataError
from taolu.models import build_model
from taolu.models.factory import FACTORY_PATTERN
from taolu.models.spec import is_spec_path

# What `artifact_kind` can answer.
CHECKPOINT, ONNX, TORCHSCRIPT, SAFETENSORS = "checkpoint", "onnx", "torchscript", "safetensors"


def build_network(state: dict[str, Any]) -> nn.Module:
    """A fresh network of the shape a checkpoint (or an export's metadata) describes: a built-in
    or torchvision net by name, or a layer list from the list stored with it. Nothing named in
    the file is ever imported or read: a factory (package.module:factory) or the user's own
    nn.Module must be passed in by the caller, and a layer list stored only as a path (taolu
    before the list was stored) is refused."""
    name = state.get("model_name")
    if not name:
        raise CheckpointError(
            f"this checkpoint was trained with your own nn.Module ({state['model_class']}); "
            "create it in Python and pass it: taolu.predict(run, files, model=MyNet()), "
            "taolu.evaluate(run, model=MyNet()) or taolu.export(run, model=MyNet())"
        )
    if FACTORY_PATTERN.fullmatch(name):
        raise CheckpointError(
            f"this checkpoint was trained with {name}; taolu does not import code named inside "
            "a checkpoint: build the model in Python and pass it with model=... (to "
            "taolu.predict, taolu.evaluate or taolu.export)"
        )
    layers = state.get("model_spec")
    if is_spec_path(name) and layers is None:
        raise CheckpointError(
            f"this checkpoint was trained with the layer list {name} but does not hold the "
            "list itself (an older taolu stored only the file's path), and taolu does not read "
            "files named inside a checkpoint: train again with this taolu, or build the network "
            "in Python (taolu.models.spec) and pass it with model=..."
        )
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    try:
        return build_model(
            name,
            preprocessing.channels,
            preprocessing.size,
            len(state["classes"]),
            weights=state["config"].get("weights"),
            layers=layers if is_spec_path(name) else None,
        )
    except ConfigError as error:
        raise CheckpointError(f"the network this file describes cannot be built: {error}") from None


def restore_model(state: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The checkpoint's network with its weights: rebuilt by `build_network` for built-in nets,
    torchvision models and layer lists; a user's own nn.Module (or a factory's) must be handed
    in as `model` (taolu never imports it by itself)."""
    if model is None:
        model = build_network(state)
    try:
        model.load_state_dict(ckpt.inference_weights(state))
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's weights do not fit the model: {error}") from None
    return model.eval()


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files (hidden ones skipped)."""
    expanded: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            expanded += list_image_files(path)
        else:
            expanded.append(path)
    return expanded


# --------------------------------------------------------------------------- classifiers


@dataclass
class Classifier:
    """A model ready to classify: its classes, the preprocessing its input needs, and
    `forward`, from float images (N, C, H, W) in 0..1 on `device` to logits (N, classes)."""

    classes: list[str]
    preprocessing: Preprocessing
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    source: str  # checkpoint, onnx, torchscript or safetensors


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
    return Classifier(
        classes=list(state["classes"]),
        preprocessing=preprocessing,
        forward=normalizing_forward(model, preprocessing, device),
        device=device,
        source=CHECKPOINT,
    )


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
    from taolu.model_export import FORMATS

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

    from taolu.model_export import read_metadata

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

    return Classifier(
        metadata["classes"], metadata["preprocessing"], forward, torch.device("cpu"), ONNX
    )


def _torchscript_classifier(path: Path, device: torch.device, trust_code: bool) -> Classifier:
    """A TorchScript file taolu exported. It holds code, run by torch's interpreter, which can
    read and write files like any program: it is loaded only when the caller says they trust
    it, and only after its archive and its taolu metadata have been checked."""
    import warnings

    from taolu.model_export import METADATA_FILE, read_metadata

    if not trust_code:
        raise CheckpointError(
            f"{path}: refused: a TorchScript file holds code, which runs when it is loaded and "
            "can do anything a program can (read or change your files). Load it only if you "
            "trust whoever made it: taolu predict --trust-code (Python: trust_code=True). A "
            ".onnx or .safetensors export holds no code"
        )
    ckpt.check_archive(path, "TorchScript")
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
    return Classifier(decoded["classes"], decoded["preprocessing"], module, device, TORCHSCRIPT)


def _safetensors_classifier(
    path: Path, model: nn.Module | None, device: torch.device
) -> Classifier:
    """Weights without code: the network is rebuilt from the metadata (a built-in or
    torchvision name, or the layer list stored in it) or passed in as `model`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from taolu.model_export import read_metadata

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
    preprocessing = metadata["preprocessing"]
    return Classifier(
        metadata["classes"],
        preprocessing,
        normalizing_forward(network, preprocessing, device),
        device,
        SAFETENSORS,
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


def _load_input(
    item: Any, preprocessing: Preprocessing, pipeline: SamplePipeline | None
) -> torch.Tensor:
    """One input by the checkpoint's preprocessing: the decoding policy, the fit to size, and
    the eval pipeline derived from the run's --transforms, if it had any."""
    if isinstance(item, (str, Path)):
        image = decode_file(
            item, preprocessing.channels, preprocessing.size, preprocessing.resize_mode
        )
    else:
        image = match_channels(to_uint8_chw(item), preprocessing.channels)
        image = fit_to_size(image, preprocessing.size, preprocessing.resize_mode)
    return pipeline(image) if pipeline is not None else image


def _progress_bar(enabled: bool, total: int, batch_size: int):
    """A tqdm bar over the images, only on a terminal and only for more than one batch."""
    if not (enabled and total > batch_size and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", leave=False, dynamic_ncols=True)


@torch.no_grad()
def classify_with(
    classifier: Classifier,
    items: list[Any],
    *,
    topk: int,
    batch_size: int,
    progress: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """One result per item, in order: {"path", "predictions": [{"class", "probability"}]}
    or {"path", "error"} for an item that could not be read; one bad item stops nothing.
    Files are decoded on `threads` threads (Pillow releases the GIL), a batch at a time."""
    if batch_size < 1:
        raise ConfigError(f"option 'batch_size': must be at least 1, got {batch_size}")
    if topk < 1:
        raise ConfigError(f"option 'topk': must be at least 1, got {topk}")
    preprocessing = classifier.preprocessing
    classes = classifier.classes
    pipeline = stored_eval_pipeline(preprocessing)
    k = min(topk, len(classes))

    def load(item: Any) -> tuple[torch.Tensor | None, str | None]:
        try:
            return _load_input(item, preprocessing, pipeline), None
        except DataError as error:
            return None, str(error)

    results: list[dict[str, Any]] = []
    bar = _progress_bar(progress, len(items), batch_size)
    workers = threads if threads is not None else min(4, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                images, slots = [], []
                for offset, (item, (image, error)) in enumerate(
                    zip(chunk, pool.map(load, chunk), strict=True)
                ):
                    is_file = isinstance(item, (str, Path))
                    results.append({"path": str(item) if is_file else f"<image {start + offset}>"})
                    if image is None:
                        results[-1]["error"] = error
                    else:
                        images.append(image)
                        slots.append(len(results) - 1)
                if images:
                    batch = torch.stack(
                        [img.float() / 255 if img.dtype == torch.uint8 else img for img in images]
                    ).to(classifier.device)
                    probabilities = classifier.forward(batch).float().softmax(dim=1)
                    values, indices = probabilities.topk(k, dim=1)
                    rows = zip(slots, values.cpu().tolist(), indices.cpu().tolist(), strict=True)
                    for slot, row_values, row_indices in rows:
                        results[slot]["predictions"] = [
                            {"class": classes[i], "probability": round(float(p), 6)}
                            for p, i in zip(row_values, row_indices, strict=True)
                        ]
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results


def classify(
    model: nn.Module,
    state: dict[str, Any],
    items: list[Any],
    *,
    topk: int,
    device: torch.device,
    batch_size: int,
) -> list[dict[str, Any]]:
    """`classify_with` for a model restored from the checkpoint `state`."""
    classifier = checkpoint_classifier(model, state, device)
    return classify_with(classifier, items, topk=topk, batch_size=batch_size)
