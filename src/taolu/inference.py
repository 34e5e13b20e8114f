"""Rebuild a trained model from its checkpoint and classify images with the stored
preprocessing (channels, size, resize mode, mean and std)."""

from __future__ import annotations

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
from taolu.errors import CheckpointError, DataError
from taolu.models import build_model, model_kind


def restore_model(state: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The checkpoint's network with its weights: rebuilt by name for built-in nets; a user's
    own nn.Module class must be handed in as `model` (taolu never imports it by itself)."""
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    if model is None:
        if state.get("model_name") and model_kind(state["model_name"]) == "factory":
            raise CheckpointError(
                f"this checkpoint was trained with {state['model_name']}; taolu does not import "
                "code named inside a checkpoint: build the model in Python and pass it with "
                "model=..."
            )
        if not state.get("model_name"):
            raise CheckpointError(
                f"this checkpoint was trained with your own nn.Module ({state['model_class']}); "
                "create it in Python and pass it: taolu.predict(run, files, model=MyNet()) or "
                "taolu.evaluate(run, model=MyNet())"
            )
        model = build_model(
            state["model_name"],
            preprocessing.channels,
            preprocessing.size,
            len(state["classes"]),
            weights=state["config"].get("weights"),
        )
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


@torch.no_grad()
def classify(
    model: nn.Module,
    state: dict[str, Any],
    items: list[Any],
    *,
    topk: int,
    device: torch.device,
    batch_size: int,
) -> list[dict[str, Any]]:
    """One result per item, in order: {"path", "predictions": [{"class", "probability"}]}
    or {"path", "error"} for an item that could not be read; one bad item stops nothing."""
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    classes = state["classes"]
    transform = BatchTransform(preprocessing, device)
    pipeline = stored_eval_pipeline(preprocessing)
    model = model.to(device).eval()
    k = max(1, min(topk, len(classes)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images, slots = [], []
        for offset, item in enumerate(chunk):
            name = str(item) if isinstance(item, (str, Path)) else f"<image {start + offset}>"
            results.append({"path": name})
            try:
                images.append(_load_input(item, preprocessing, pipeline))
                slots.append(len(results) - 1)
            except DataError as error:
                results[-1]["error"] = str(error)
        if not images:
            continue
        batch = torch.stack(
            [img.float() / 255 if img.dtype == torch.uint8 else img for img in images]
        ).to(device)
        probabilities = model(transform(batch)).float().softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for slot, row_values, row_indices in zip(slots, values.cpu(), indices.cpu(), strict=True):
            results[slot]["predictions"] = [
                {"class": classes[i], "probability": round(float(p), 6)}
                for p, i in zip(row_values.tolist(), row_indices.tolist(), strict=True)
            ]
    return results
