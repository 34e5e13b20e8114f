"""The report's "Where it looks", drawn at the end of a run: LayerCAM overlays (explain.py)
of the validation images the best model got most wrong (val_predictions.csv's top losses),
each for the class it predicted, saved as report/top_loss_maps.json for the page."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from taolu.atomic_file import write_atomic
from taolu.errors import TaoluError
from taolu.explain import overlays_for
from taolu.inspection import read_val_predictions
from taolu.layout import RunDir
from taolu.run.outcome import validation_images
from taolu.run.setup import Run
from taolu.track.report_maps import MAPS_FILE

TOP_LOSS_MAPS = 8  # a handful: the report stays small and quick to draw
SHOWN_SIDE = 192  # pixels, the longer side of each overlay in the report


def write_top_loss_maps(run: Run, run_dir: Path) -> None:
    """report/top_loss_maps.json: the overlays, or {"note": why there are none} (a network
    without convolutions, no val_predictions.csv); never raises: the report must not fail
    for want of a map."""
    try:
        saved = _top_loss_maps(run, run_dir, TOP_LOSS_MAPS)
    except TaoluError as error:  # a network without convolutions, no val_predictions.csv
        saved = {"note": str(error)}
    except Exception as error:  # a user's module may fail in ways taolu's nets do not
        saved = {"note": f"{type(error).__name__}: {error}"}
    write_atomic(RunDir(run_dir).report / MAPS_FILE, json.dumps(saved).encode("utf-8"))


def _top_loss_maps(run: Run, run_dir: Path, count: int) -> dict[str, Any]:
    """The `count` highest-loss validation images, each with where the best model looked for
    its prediction, as the page reads them; or {"note"} saying why there are none."""
    rows = read_val_predictions(run_dir)
    ranked = sorted(range(len(rows)), key=lambda index: -rows[index]["loss"])[:count]
    if not ranked:
        return {"note": "the validation split is empty"}
    classes = list(run.data.bundle.classes)
    found = validation_images(run, ranked)
    ranked = [index for index in ranked if index in found]
    images = [found[index] for index in ranked]
    explained = [classes.index(rows[index]["predicted"]) for index in ranked]
    model = run.model.model
    pictures = overlays_for(
        model, images, explained, normalize=lambda batch: run.data.eval_transform(batch)
    )
    entries = []
    for index, picture in zip(ranked, pictures, strict=True):
        picture.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        row = rows[index]
        entries.append(
            {
                **{key: row[key] for key in ("path", "true", "predicted", "probability", "loss")},
                "png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        )
    return {"method": "LayerCAM", "explained": "predicted", "images": entries}
