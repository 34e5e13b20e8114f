"""Rebuild a trained model from its checkpoint, or open an exported one (ONNX, TorchScript,
safetensors), and classify images with the stored preprocessing (channels, size, resize mode,
mean and std, and the eval transforms)."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu import checkpoint as ckpt
from taolu.data.decode import (
    EncodedImage,
    decode_file,
    fit_to_size,
    match_channels,
    to_uint8_chw,
)
from taolu.data.loaders import BatchTransform, Preprocessing
from taolu.data.pipeline import stored_eval_pipeline
from taolu.data.polarity import polarity_message, reversed_inputs
from taolu.data.sources import list_image_files
from taolu.data.transforms import SamplePipeline
from taolu.engine.calibration import KEPT_SHARE
from taolu.engine.tta import views
from taolu.errors import CheckpointError, ConfigError, DataError
from taolu.export_format import FORMATS, METADATA_FILE, read_metadata
from taolu.predictions import UNKNOWN
from taolu.rebuild import restore_model
from taolu.torch_files import TORCHSCRIPT as TORCHSCRIPT_ARCHIVE
from taolu.torch_files import check_archive

logger = logging.getLogger("taolu")
# What `artifact_kind` can answer.
CHECKPOINT, ONNX, TORCHSCRIPT, SAFETENSORS = "checkpoint", "onnx", "torchscript", "safetensors"


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

    return Classifier(
        metadata["classes"],
        metadata["preprocessing"],
        forward,
        torch.device("cpu"),
        ONNX,
        _exported_about(metadata),
        temperature=metadata["temperature"],
        reject_threshold=metadata["reject_threshold"],
        augmentation=metadata["augmentation"],
    )


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
    return Classifier(
        decoded["classes"],
        decoded["preprocessing"],
        module,
        device,
        TORCHSCRIPT,
        _exported_about(decoded),
        temperature=decoded["temperature"],
        reject_threshold=decoded["reject_threshold"],
        augmentation=decoded["augmentation"],
    )


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
    preprocessing = metadata["preprocessing"]
    return Classifier(
        metadata["classes"],
        preprocessing,
        normalizing_forward(network, preprocessing, device),
        device,
        SAFETENSORS,
        _exported_about(metadata),
        temperature=metadata["temperature"],
        reject_threshold=metadata["reject_threshold"],
        augmentation=metadata["augmentation"],
    )


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


def _load_input(
    item: Any, preprocessing: Preprocessing, pipeline: SamplePipeline | None
) -> torch.Tensor:
    """One input by the checkpoint's preprocessing: the decoding policy, the fit to size, and
    the eval pipeline derived from the run's --transforms, if it had any."""
    if isinstance(item, (str, Path, EncodedImage)):
        image = decode_file(
            item, preprocessing.channels, preprocessing.size, preprocessing.resize_mode
        )
    else:
        image = match_channels(to_uint8_chw(item), preprocessing.channels)
        image = fit_to_size(image, preprocessing.size, preprocessing.resize_mode)
    return pipeline(image) if pipeline is not None else image


def input_name(item: Any, index: int) -> str:
    """What a result calls its input: a file's path, an upload's name, else <image INDEX>."""
    if isinstance(item, EncodedImage):
        return item.name
    return str(item) if isinstance(item, (str, Path)) else f"<image {index}>"


def input_reader(
    classifier: Classifier,
) -> Callable[[Any], tuple[torch.Tensor | None, str | None]]:
    """A function reading one input (file, upload or in-memory image) the way `classifier`
    needs it: (image, None), or (None, the message) when it cannot be read. Thread-safe."""
    preprocessing = classifier.preprocessing
    pipeline = stored_eval_pipeline(preprocessing)

    def read(item: Any) -> tuple[torch.Tensor | None, str | None]:
        try:
            return _load_input(item, preprocessing, pipeline), None
        except DataError as error:
            return None, str(error)

    return read


@torch.no_grad()
def probabilities_of(
    classifier: Classifier, images: list[torch.Tensor], tta: bool = False
) -> torch.Tensor:
    """Class probabilities (N, classes) on the CPU for images as `input_reader` gives them,
    in one forward pass; with `tta`, the mean over the views the run trained with (engine.tta:
    a mirror image where it flipped, shifts by the pixels it shifted, the edge filled with
    the mean as in training)."""
    batch = torch.stack(
        [image.float() / 255 if image.dtype == torch.uint8 else image for image in images]
    ).to(classifier.device)
    seen = [batch]
    if tta:
        augmentation = classifier.augmentation
        mean = torch.tensor(classifier.preprocessing.mean, device=batch.device).view(1, -1, 1, 1)
        flip, shift = bool(augmentation.get("flip")), int(augmentation.get("shift", 0))
        seen = views(batch, flip, shift, fill=mean)
    scaled = [classifier.forward(view).float() / classifier.temperature for view in seen]
    return torch.stack([logits.softmax(dim=1) for logits in scaled]).mean(0).cpu()


def top_classes(
    probabilities: torch.Tensor, classes: list[str], topk: int
) -> list[list[dict[str, Any]]]:
    """The `topk` most probable classes of each row: [{"class", "probability"}], the
    probability rounded to 6 decimals (what predict prints)."""
    values, indices = probabilities.topk(min(topk, len(classes)), dim=1)
    return [
        [
            {"class": classes[i], "probability": round(float(p), 6)}
            for p, i in zip(row_values, row_indices, strict=True)
        ]
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def sort_read_inputs(
    items: list[Any], outcomes: Iterable[tuple[torch.Tensor | None, str | None]], first: int = 0
) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[int]]:
    """Items with what `input_reader` made of them -> (one result per item, {"path"} plus
    "error" where it could not be read; the images that could be; the index of each one's
    result, for its "predictions"). `first` numbers in-memory images."""
    results: list[dict[str, Any]] = []
    images: list[torch.Tensor] = []
    slots: list[int] = []
    for offset, (item, (image, error)) in enumerate(zip(items, outcomes, strict=True)):
        results.append({"path": input_name(item, first + offset)})
        if image is None:
            results[-1]["error"] = error
        else:
            images.append(image)
            slots.append(offset)
    return results, images, slots


def check_topk(topk: int) -> None:
    """Refuse a top-k below 1, naming the option."""
    if topk < 1:
        raise ConfigError(f"option 'topk': must be at least 1, got {topk}")


def _progress_bar(enabled: bool, total: int, batch_size: int):
    """A tqdm bar over the images, only on a terminal and only for more than one batch."""
    if not (enabled and total > batch_size and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", leave=False, dynamic_ncols=True)


def reject_threshold(classifier: Classifier, reject_below: float | str | None) -> float | None:
    """The confidence below which the answer is UNKNOWN: a number in [0, 1], or "auto", the
    threshold the run stored: the confidence that keeps KEPT_SHARE of its right answers on
    the validation split."""
    if reject_below is None:
        return None
    if reject_below == "auto":
        if classifier.reject_threshold is None:
            raise ConfigError(
                "option 'reject_below': this model stores no threshold (it was trained by an "
                "older taolu, or resumed after its best epoch); give a number between 0 and 1 "
                f"instead, e.g. a confidence that keeps {KEPT_SHARE:.0%} of known images"
            )
        return classifier.reject_threshold
    try:
        value = float(reject_below)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"option 'reject_below': {reject_below!r} is not a probability between 0 and 1 nor auto"
        )
    return value


def answered(predictions: list[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """A result's predictions, and with a rejection threshold its "answer": the top class,
    or UNKNOWN when the top probability is below the threshold."""
    if threshold is None:
        return {"predictions": predictions}
    top = predictions[0]
    answer = top["class"] if top["probability"] >= threshold else UNKNOWN
    return {"predictions": predictions, "answer": answer}


def classify_with(
    classifier: Classifier,
    items: list[Any],
    *,
    topk: int,
    batch_size: int,
    progress: bool = False,
    threads: int | None = None,
    reject_below: float | str | None = None,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """One result per item, in order: {"path", "predictions": [{"class", "probability"}]}
    or {"path", "error"} for an item that could not be read; one bad item stops nothing.
    With `reject_below` (a probability, or "auto": see `reject_threshold`), each result also
    has "answer": the top class, or "unknown" when its probability is below the threshold.
    `tta` averages each image's probabilities over the run's augmentation views.
    Files are decoded on `threads` threads (Pillow releases the GIL), a batch at a time."""
    if batch_size < 1:
        raise ConfigError(f"option 'batch_size': must be at least 1, got {batch_size}")
    check_topk(topk)
    threshold = reject_threshold(classifier, reject_below)
    read = input_reader(classifier)
    results: list[dict[str, Any]] = []
    looks, reversed_names = "", []  # inputs the other way round from the training images
    bar = _progress_bar(progress, len(items), batch_size)
    workers = threads if threads is not None else min(4, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                chunk_results, images, slots = sort_read_inputs(chunk, pool.map(read, chunk), start)
                if images:
                    ranked = top_classes(
                        probabilities_of(classifier, images, tta), classifier.classes, topk
                    )
                    for slot, predictions in zip(slots, ranked, strict=True):
                        chunk_results[slot].update(answered(predictions, threshold))
                    names = [chunk_results[slot]["path"] for slot in slots]
                    found, names = reversed_inputs(classifier.background, images, names)
                    looks, reversed_names = found or looks, reversed_names + names
                results += chunk_results
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if reversed_names:
        logger.warning(polarity_message(looks, reversed_names, len(items)))
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
