"""A run's report, reading side: what the run directory holds (metrics.csv, summary.json,
config.yaml, the TensorBoard lr), each file read on its own; a missing or unreadable one is None,
with the reason kept for the report to show."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_FOLDER = "report"
REPORT_HTML = "report.html"
SAMPLES_FILE = "val_samples.safetensors"


@dataclass
class RunFiles:
    """What was read from the run directory; None where a file is missing or unreadable, with
    the reason in `problems` under the file's name."""

    run_dir: Path
    metrics: list[dict[str, float | None]] | None
    summary: dict[str, Any] | None
    config: dict[str, Any] | None
    lr_steps: list[tuple[int, float]] | None
    problems: dict[str, str]


def read_run(run_dir: Path) -> RunFiles:
    problems: dict[str, str] = {}
    metrics = _read_metrics(run_dir / "metrics.csv", problems)
    summary = _read_mapping(run_dir / "summary.json", problems, json.loads)
    config = _read_mapping(run_dir / "config.yaml", problems, _yaml_load)
    lr_steps = _read_lr_steps(run_dir, problems)
    return RunFiles(run_dir, metrics, summary, config, lr_steps, problems)


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _read_metrics(path: Path, problems: dict[str, str]) -> list[dict[str, float | None]] | None:
    """metrics.csv's rows with every value a float, or None where the cell is empty or not a
    number (val_top5_acc is empty below 5 classes)."""
    if not path.is_file():
        problems["metrics.csv"] = "there is no metrics.csv (no epoch was recorded)"
        return None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems["metrics.csv"] = f"metrics.csv could not be read: {error}"
        return None
    parsed = [{key: number(value) for key, value in row.items() if key} for row in rows]
    parsed = [row for row in parsed if row.get("epoch") is not None]
    if not parsed:
        problems["metrics.csv"] = "metrics.csv holds no epoch yet"
        return None
    return parsed


def number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_mapping(
    path: Path, problems: dict[str, str], parse: Callable[[str], Any]
) -> dict[str, Any] | None:
    name = path.name
    if not path.is_file():
        why = " (the run may have stopped before it finished)" if name == "summary.json" else ""
        problems[name] = f"there is no {name}{why}"
        return None
    try:
        loaded = parse(path.read_text(encoding="utf-8"))
    except Exception as error:  # JSON or YAML syntax, encoding, permissions
        problems[name] = f"{name} could not be read: {error}"
        return None
    if not isinstance(loaded, dict):
        problems[name] = f"{name} does not hold a mapping"
        return None
    return loaded


def _read_lr_steps(run_dir: Path, problems: dict[str, str]) -> list[tuple[int, float]] | None:
    """The `train/lr` scalars of the run's TensorBoard event files as (step, lr), or None.
    EventAccumulator reads every event file of the folder in order and drops the events a
    resumed run purged, so a resumed run's curve has no duplicates."""
    if not any(run_dir.glob("events.out.tfevents.*")):
        problems["events"] = "there are no TensorBoard event files"
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # 0 keeps every scalar; the rest (images, histograms, PR curves) is not needed.
        guidance = {"scalars": 0, "images": 1, "histograms": 1, "tensors": 1, "audio": 1}
        accumulator = EventAccumulator(str(run_dir), size_guidance=guidance)
        accumulator.Reload()
        if "train/lr" not in accumulator.Tags().get("scalars", []):
            problems["events"] = "the TensorBoard event files hold no train/lr"
            return None
        points = {event.step: float(event.value) for event in accumulator.Scalars("train/lr")}
    except Exception as error:  # a truncated or foreign event file must not stop the report
        problems["events"] = f"the TensorBoard event files could not be read: {error}"
        return None
    steps = sorted((step, value) for step, value in points.items() if math.isfinite(value))
    return steps or None


def per_class_scores(files: RunFiles) -> list[tuple[str, dict[str, float | None]]] | None:
    """[(class, {precision, recall, f1, support})] in the run's class order, or None."""
    scores = (files.summary or {}).get("per_class")
    if not isinstance(scores, dict) or not scores:
        return None
    order = (files.summary or {}).get("classes")
    names = [str(n) for n in order] if isinstance(order, list) else []
    names = [n for n in names if n in scores] + [n for n in scores if n not in set(names)]
    table = []
    for name in names:
        entry = scores[name] if isinstance(scores[name], dict) else {}
        table.append((name, {key: number(entry.get(key)) for key in ("precision", "recall", "f1")}))
        table[-1][1]["support"] = number(entry.get("support"))
    return table
