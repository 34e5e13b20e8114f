"""predict's and serve's "where it looks": a Classifier's inputs explained (explain.py's maps
for the class each result names), as PNG files in a folder the user chose, or as PNG bytes."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from taolu.classifier import Classifier
from taolu.data.loaders import BatchTransform
from taolu.errors import ConfigError
from taolu.explain import activation_maps, blend, find_layer
from taolu.inference import input_reader

SUFFIX = ".explain.png"


def explainable_network(classifier: Classifier) -> nn.Module:
    """The torch network of `classifier`; ConfigError for an ONNX or TorchScript file, whose
    runtime gives no gradients to a class-activation map."""
    if classifier.network is None:
        raise ConfigError(
            f"option 'explain': a {classifier.source} file gives no gradients, which the maps "
            "need; explain with the run's checkpoint (RUN or RUN/weights/best.pt) or its "
            ".safetensors export instead"
        )
    return classifier.network


class Explainer:
    """A Classifier's maps: the layer found once (from the first batch), then each batch of
    images (as `input_reader` gives them) explained for the classes named."""

    def __init__(self, classifier: Classifier, layer: str | None = None):
        self.classifier = classifier
        self.network = explainable_network(classifier)
        self.layer_name = layer
        self.layer: nn.Module | None = None
        self.normalize = BatchTransform(classifier.preprocessing, classifier.device)

    def overlays(self, images: list[torch.Tensor], classes: list[str]) -> list[Image.Image]:
        """Each image with the map for its class (a name of the classifier's) over it."""
        pictures = torch.stack(
            [image.float() / 255 if image.dtype == torch.uint8 else image for image in images]
        )
        inputs = self.normalize(pictures.to(self.classifier.device))
        self.network.eval()
        if self.layer is None:
            self.layer = find_layer(self.network, inputs[:1], self.layer_name)
        targets = [self.classifier.classes.index(name) for name in classes]
        maps, _ = activation_maps(self.network, inputs, self.layer, targets)
        return [blend(picture, heat) for picture, heat in zip(pictures, maps, strict=True)]


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # zlib's level 1: a quarter of the default's time for files ~15% larger.
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(picture: Image.Image) -> str:
    """The picture as a PNG data URL (serve's "explanation")."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def overlay_stem(name: str) -> str:
    """A file name's stem from what a result calls its input: a path's stem, "image-3" for
    "<image 3>"; characters that are awkward in file names become "_"."""
    stem = Path(name).stem if not name.startswith("<") else name.strip("<>")
    return re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "image"


def write_new(folder: Path, stem: str, data: bytes) -> Path:
    """`data` as folder/STEM.explain.png, or STEM-2, -3, ... when taken: never over a file."""
    for number in range(1, 100_000):
        path = folder / f"{stem}{'' if number == 1 else f'-{number}'}{SUFFIX}"
        try:
            with open(path, "xb") as handle:
                handle.write(data)
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"option 'explain': {folder} holds too many overlays named {stem}*")


def explain_folder(folder: str | Path) -> Path:
    """The folder for predict's overlays, made if missing; ConfigError when it is a file."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"option 'explain': {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"option 'explain': cannot make {path}: {error.strerror}") from None
    return path


def write_overlays(
    classifier: Classifier,
    items: list[Any],
    results: list[dict[str, Any]],
    folder: str | Path,
    *,
    layer: str | None = None,
    batch_size: int = 64,
) -> None:
    """An overlay PNG in `folder` per result that has predictions, for its top class; its
    path goes into the result as "explanation". Inputs are read again, the way predict
    read them; nothing is written beside them."""
    explainer = Explainer(classifier, layer)  # refuses ONNX before any folder is made
    target = explain_folder(folder)
    read = input_reader(classifier)
    answered = [i for i, result in enumerate(results) if "predictions" in result]
    for start in range(0, len(answered), batch_size):
        read_now = [(i, read(items[i])[0]) for i in answered[start : start + batch_size]]
        chunk = [(i, image) for i, image in read_now if image is not None]  # gone since?
        if not chunk:
            continue
        images = [image for _, image in chunk]
        classes = [results[i]["predictions"][0]["class"] for i, _ in chunk]
        for (i, _), picture in zip(chunk, explainer.overlays(images, classes), strict=True):
            stem = overlay_stem(results[i]["path"])
            results[i]["explanation"] = str(write_new(target, stem, png_bytes(picture)))
