"""What a study found, written into its folder: trials.csv (one row a trial), trials.png (each
trial's value, and its validation curve epoch by epoch) and the best trial as a `taolu train`
command line."""

from __future__ import annotations

import csv
import io
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taolu.atomic_file import write_atomic
from taolu.cli.options import flag_name
from taolu.config import FIELDS
from taolu.metric_names import lower_is_better

TABLE_FILE = "trials.csv"
PLOT_FILE = "trials.png"
COMMAND_FILE = "best_command.txt"
STATE_COLOURS = {"complete": "tab:blue", "pruned": "tab:gray", "fail": "tab:red"}


def trial_rows(trials: list[Any], searched: list[str]) -> list[dict[str, Any]]:
    """One row per trial, in trial order: its outcome, then each searched option's value."""
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        options = attrs.get("options", {})
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        epochs = attrs.get("epochs") or (max(trial.intermediate_values, default=None))
        row = {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value,
            "epochs": epochs,
            "seconds": round(seconds, 1) if seconds is not None else None,
            "baseline": bool(attrs.get("baseline")),
        }
        for option in searched:
            row[option] = options.get(option, "default" if attrs.get("baseline") else "")
        row["run_dir"] = attrs.get("run_dir", "")
        row["error"] = attrs.get("error", "")
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def write_plot(trials: list[Any], monitor: str, path: Path) -> None:
    """Left: each trial's value by trial number, the best so far as a line; right: each
    trial's monitored value epoch by epoch (pruned ones grey, the best one thick)."""
    # Imported here so importing taolu does not pay for matplotlib; a bare Figure drawn by
    # FigureCanvasAgg never touches pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    values, curves = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    best = best_trial(trials, monitor)
    best_so_far: list[tuple[int, float]] = []
    for trial in trials:
        state = trial.state.name.lower()
        colour = STATE_COLOURS.get(state, "tab:gray")
        steps = sorted(trial.intermediate_values.items())
        if steps:
            is_best = best is not None and trial.number == best.number
            curves.plot(
                [step for step, _ in steps],
                [value for _, value in steps],
                color="tab:orange" if is_best else colour,
                linewidth=3 if is_best else 1,
                alpha=1.0 if is_best else 0.5,
            )
        shown = trial.value if trial.value is not None else (steps[-1][1] if steps else None)
        if shown is None:
            continue
        marker = "*" if trial.user_attrs.get("baseline") else ("x" if state == "pruned" else "o")
        values.scatter(trial.number, shown, color=colour, marker=marker, s=60)
        if state == "complete":
            previous = best_so_far[-1][1] if best_so_far else None
            better = previous is None or _better(trial.value, previous, monitor)
            best_so_far.append((trial.number, trial.value if better else previous))
    if best_so_far:
        values.step(*zip(*best_so_far, strict=True), where="post", color="tab:orange")
    values.set_title("each trial (* default recipe, x pruned); line: best so far")
    values.set_xlabel("trial")
    values.set_ylabel(monitor)
    curves.set_title("during each trial (thick: the best)")
    curves.set_xlabel("epoch")
    curves.set_ylabel(monitor)
    from matplotlib.ticker import MaxNLocator

    for axes in (values, curves):
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials and epochs are whole
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def _better(value: float, than: float, monitor: str) -> bool:
    return value < than if lower_is_better(monitor) else value > than


def best_trial(trials: list[Any], monitor: str) -> Any | None:
    """The complete trial with the best value (the earliest of equals)."""
    best = None
    for trial in trials:
        if trial.state.name != "COMPLETE" or trial.value is None or math.isnan(trial.value):
            continue
        if best is None or _better(trial.value, best.value, monitor):
            best = trial
    return best


def train_command(
    config_file: str | None, fixed: Mapping[str, Any], drawn: Mapping[str, Any]
) -> str:
    """`taolu train` with the study's fixed options and a trial's drawn ones, as flags."""
    words = ["taolu", "train"]
    if config_file:
        words += ["--config", str(config_file)]
    for option, value in {**fixed, **drawn}.items():
        if option in ("out", "name"):
            continue
        flag = flag_name(option)
        if FIELDS[option].type == "bool":
            words.append(flag if _is_true(value) else "--no-" + flag[2:])
        else:
            words += [flag, _flag_value(value)]
    return shlex.join(words)


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _flag_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)  # YAML reads JSON: --transforms takes it as it is
    return str(value)
