"""Classify images with a Classifier (classifier.py): inputs read with the stored
preprocessing (channels, size, resize mode, mean and std, and the eval transforms), in
batches, calibrated probabilities, test-time augmentation, rejection below a threshold; the
pieces predict and serve share."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.classifier import Classifier, checkpoint_classifier
from taolu.data.decode import (
    EncodedImage,
    decode_file,
    fit_to_size,
    match_channels,
    to_uint8_chw,
)
from taolu.data.loaders import Preprocessing
from taolu.data.pipeline import stored_eval_pipeline
from taolu.data.polarity import polarity_message, reversed_inputs
from taolu.data.sources import list_image_files
from taolu.data.transforms import SamplePipeline
from taolu.engine.calibration import KEPT_SHARE
from taolu.engine.tta import mean_probabilities, views
from taolu.errors import ConfigError, DataError
from taolu.predictions import UNKNOWN

logger = logging.getLogger("taolu")


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

    def scaled_logits(view: torch.Tensor) -> torch.Tensor:
        return classifier.forward(view).float() / classifier.temperature

    return mean_probabilities(scaled_logits, seen).cpu()


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
