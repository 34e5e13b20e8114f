"""Error analysis of a run: val_predictions.csv (the best model on every validation image,
by path or Dataset index) written at the end of training, and `taolu inspect`'s reading of
it: the top losses, and per confused pair of classes, how many and which images."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taolu.atomic_file import write_atomic
from taolu.errors import DataError
from taolu.layout import RunDir
from taolu.record_csv import read_record_csv

COLUMNS = ("path", "true", "predicted", "probability", "true_probability", "loss")
TOP = 20  # rows `taolu inspect` shows by default


def write_val_predictions(
    path: Path,
    names: Sequence[str],
    classes: Sequence[str],
    probabilities: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """One row per validation image, in the split's order: its path (or Dataset index), true
    and predicted class, the predicted class's and the true class's probability (calibrated,
    as predict reports them) and its loss, -log(true probability)."""
    confidence, predicted = probabilities.max(dim=1)
    true_probability = probabilities.gather(1, labels.view(-1, 1)).flatten()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in zip(
        names,
        labels.tolist(),
        predicted.tolist(),
        confidence.tolist(),
        true_probability.tolist(),
        strict=True,
    ):
        name, truth, guess, sure, given = row
        loss = -math.log(max(given, 1e-12))
        writer.writerow(
            [name, classes[truth], classes[guess], f"{sure:.6f}", f"{given:.6f}", f"{loss:.6f}"]
        )
    write_atomic(path, text.getvalue().encode("utf-8"))


def read_val_predictions(run: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's val_predictions.csv, numbers as floats; a DataError naming the file
    when it is missing or not what taolu writes."""
    path = RunDir(Path(run).expanduser()).val_predictions
    if not path.is_file():
        raise DataError(
            f"{path}: not found; a run writes it at the end of training (taolu 0.x runs that "
            "finished before it existed, and runs stopped early, have none): train again"
        )
    return read_record_csv(
        path, "val_predictions.csv", COLUMNS, ("probability", "true_probability", "loss")
    )


def by_loss(rows: Sequence[dict[str, Any]]) -> list[int]:
    """val_predictions.csv's row numbers, the highest loss first."""
    return sorted(range(len(rows)), key=lambda index: -rows[index]["loss"])


def confused_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[tuple[str, str], list[int]]]:
    """Each (true, predicted) pair the model confuses, with its row numbers by falling loss;
    the most frequent pair first."""
    pairs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index in by_loss(rows):
        row = rows[index]
        if row["true"] != row["predicted"]:
            pairs[(row["true"], row["predicted"])].append(index)
    return sorted(pairs.items(), key=lambda item: -len(item[1]))


def inspect_run(run: str | Path, top: int = TOP) -> dict[str, Any]:
    """What the best model gets wrong on the validation split: the `top` images with the
    highest loss, and each confused pair (true -> predicted) with its count and images, the
    most frequent first."""
    rows = read_val_predictions(run)
    pairs = confused_pairs(rows)
    return {
        "images": len(rows),
        "wrong": sum(len(members) for _, members in pairs),
        "top_losses": [rows[index] for index in by_loss(rows)[:top]],
        "confused_pairs": [
            {
                "true": true,
                "predicted": guess,
                "count": len(members),
                "paths": [rows[index]["path"] for index in members],
            }
            for (true, guess), members in pairs
        ],
    }


def render_inspection(found: dict[str, Any], style: str = "text", shown: int = 5) -> str:
    """`taolu inspect`'s output: text, or JSON (everything)."""
    if style == "json":
        return json.dumps(found, indent=2, ensure_ascii=False) + "\n"
    lines = [
        f"{found['wrong']} of {found['images']} validation images wrong",
        "",
        "top losses (loss, true -> predicted (probability), path):",
    ]
    for row in found["top_losses"]:
        lines.append(
            f"  {row['loss']:7.3f}  {row['true']} -> {row['predicted']} "
            f"({row['probability']:.3f})  {row['path']}"
        )
    if found["confused_pairs"]:
        lines += ["", "confused pairs (true -> predicted: count, then the images):"]
    for pair in found["confused_pairs"]:
        lines.append(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
        lines += [f"    {path}" for path in pair["paths"][:shown]]
        if pair["count"] > shown:
            lines.append(f"    ... and {pair['count'] - shown} more (--json lists all)")
    return "\n".join(lines) + "\n"
