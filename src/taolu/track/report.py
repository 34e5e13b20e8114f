"""A run's report: PNG plots and one self-contained report.html in RUN/report/.

Drawn only from the files the run left behind: metrics.csv (loss and accuracy curves, the
per-epoch lr), the TensorBoard event files (the per-step lr), summary.json (the summary table,
the confusion matrix, per-class scores), config.yaml (the configuration table) and
report/val_samples.safetensors (the grid of sample predictions, saved by the training routine).
A plot whose input is missing is left out with a note saying why, so an interrupted run or a
user-Dataset run still gets a report. Nothing outside RUN/report/ is ever written, and every
file is written atomically (a temporary file, then os.replace).

The plots are matplotlib Figures drawn by FigureCanvasAgg (never pyplot: no global backend, no
figure registry) at a fixed DPI, so the same run always gives the same pictures.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taolu.atomic_file import write_atomic
from taolu.errors import ConfigError

REPORT_FOLDER = "report"
REPORT_HTML = "report.html"
SAMPLES_FILE = "val_samples.safetensors"
DPI = 100
# Beyond this many classes the class names are left off the plot axes (the ticks then show
# class indices, which the per-class table lists); beyond ANNOTATED the confusion-matrix cells
# carry no numbers.
NAMED_CLASSES = 30
ANNOTATED_CLASSES = 20
MAX_SAMPLES = 64  # sample-prediction tiles drawn at most
SAMPLE_COLUMNS = 8
TITLE_CHARS = 26  # what one line of a tile's title holds
INDEX_NOTE = (
    f" With more than {NAMED_CLASSES} classes the axes show class indices; "
    "the per-class table below names them."
)
RIGHT, WRONG = "#17803d", "#c81e1e"

# What each plot is called in the report and its file in RUN/report/, in report order.
PLOTS = (
    ("loss", "Loss", "loss.png"),
    ("accuracy", "Accuracy", "accuracy.png"),
    ("lr", "Learning rate", "lr.png"),
    ("confusion", "Confusion matrix", "confusion_matrix.png"),
    ("per_class", "Per-class precision, recall and F1", "per_class.png"),
    ("samples", "Sample predictions", "val_samples.png"),
)
ACCURACY_CURVES = (
    ("train_acc", "train accuracy", "tab:blue", "-"),
    ("val_acc", "val accuracy", "tab:orange", "-"),
    ("val_top5_acc", "val top-5 accuracy", "tab:green", "--"),
    ("val_macro_f1", "val macro-F1", "tab:purple", "--"),
    ("val_balanced_acc", "val balanced accuracy", "tab:brown", ":"),
)


@dataclass
class Plot:
    key: str
    title: str
    filename: str
    png: bytes | None = None  # None: skipped, `note` says why
    note: str = ""  # why it was skipped, or where its data came from


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


def write_report(run_dir: Path) -> Path:
    """Write RUN/report/: the plots as PNG files and report.html (the plots embedded, so the
    page is one self-contained file); return the path of report.html.

    Raises ConfigError when `run_dir` is not a folder, is not a taolu run (neither metrics.csv
    nor config.yaml in it), or its report/ exists and is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no such run directory: {run_dir}")
    if not (run_dir / "metrics.csv").is_file() and not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not a taolu run directory: looked for metrics.csv and config.yaml "
            "in it and found neither"
        )
    folder = run_dir / REPORT_FOLDER
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(
            f"cannot write the report: {folder} exists and is not a folder; move it away"
        )
    folder.mkdir(exist_ok=True)
    files = _read_run(run_dir)
    plots = _draw_plots(files, folder)
    for plot in plots:
        target = folder / plot.filename
        if plot.png is not None:
            write_atomic(target, plot.png)
        elif target.is_file():  # a stale picture from an earlier report would contradict it
            target.unlink()
    page = folder / REPORT_HTML
    write_atomic(page, _render_html(files, plots).encode("utf-8"))
    return page


# --------------------------------------------------------------------------- reading


def _read_run(run_dir: Path) -> RunFiles:
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
    parsed = [{key: _number(value) for key, value in row.items() if key} for row in rows]
    parsed = [row for row in parsed if row.get("epoch") is not None]
    if not parsed:
        problems["metrics.csv"] = "metrics.csv holds no epoch yet"
        return None
    return parsed


def _number(value: Any) -> float | None:
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


# --------------------------------------------------------------------------- plots


def _draw_plots(files: RunFiles, folder: Path) -> list[Plot]:
    plots = {key: Plot(key, title, filename) for key, title, filename in PLOTS}
    drawers: dict[str, Callable[[Plot], None]] = {
        "loss": lambda plot: _loss_plot(plot, files),
        "accuracy": lambda plot: _accuracy_plot(plot, files),
        "lr": lambda plot: _lr_plot(plot, files),
        "confusion": lambda plot: _confusion_plot(plot, files),
        "per_class": lambda plot: _per_class_plot(plot, files),
        "samples": lambda plot: _samples_plot(plot, files, folder / SAMPLES_FILE),
    }
    with warnings.catch_warnings():
        # Class names in scripts the bundled DejaVu fonts lack draw as boxes; that is all.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        for key, draw in drawers.items():
            draw(plots[key])
    return list(plots.values())


def _new_figure(width: float, height: float):
    # Imported here so importing taolu does not pay for matplotlib. A bare Figure drawn by
    # FigureCanvasAgg never touches pyplot's global backend or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    figure.clear()  # drop the artists now rather than whenever the figure is collected
    return buffer.getvalue()


def _series(rows: list[dict[str, float | None]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["epoch"], row.get(key)) for row in rows if row.get(key) is not None]
    return [epoch for epoch, _ in points], [value for _, value in points]


def _epoch_axes(figure, title: str, ylabel: str, rows: list[dict[str, float | None]]):
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    _whole_ticks(axes)
    return axes


def _whole_ticks(axes) -> None:
    """Epochs on the x axis: whole numbers only (no epoch 1.25)."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_best_epoch(axes, files: RunFiles) -> None:
    best = (files.summary or {}).get("best_epoch")
    if isinstance(best, (int, float)) and not isinstance(best, bool):
        axes.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch {best}")


def _loss_plot(plot: Plot, files: RunFiles) -> None:
    rows = files.metrics
    if rows is None:
        plot.note = files.problems["metrics.csv"]
        return
    curves = [
        (key, label, colour)
        for key, label, colour in (
            ("train_loss", "train loss", "tab:blue"),
            ("val_loss", "val loss", "tab:orange"),
        )
        if _series(rows, key)[0]
    ]
    if not curves:
        plot.note = "metrics.csv holds no finite loss"
        return
    figure = _new_figure(7, 4.5)
    axes = _epoch_axes(figure, "Loss per epoch", "loss", rows)
    for key, label, colour in curves:
        axes.plot(*_series(rows, key), color=colour, marker="o", markersize=4, label=label)
    _mark_best_epoch(axes, files)
    axes.legend()
    figure.tight_layout()
    plot.png = _png(figure)


def _accuracy_plot(plot: Plot, files: RunFiles) -> None:
    rows = files.metrics
    if rows is None:
        plot.note = files.problems["metrics.csv"]
        return
    curves = [curve for curve in ACCURACY_CURVES if _series(rows, curve[0])[0]]
    if not curves:
        plot.note = "metrics.csv holds no accuracy"
        return
    figure = _new_figure(7, 4.5)
    axes = _epoch_axes(figure, "Accuracy and validation scores per epoch", "score", rows)
    for key, label, colour, style in curves:
        axes.plot(
            *_series(rows, key),
            color=colour,
            linestyle=style,
            marker="o",
            markersize=4,
            label=label,
        )
    _mark_best_epoch(axes, files)
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    plot.png = _png(figure)


def _lr_plot(plot: Plot, files: RunFiles) -> None:
    if files.lr_steps is not None:
        xs = [step for step, _ in files.lr_steps]
        ys = [value for _, value in files.lr_steps]
        xlabel, source = "optimizer step", "train/lr from the TensorBoard event files"
    elif files.metrics is not None and _series(files.metrics, "lr")[0]:
        xs, ys = _series(files.metrics, "lr")
        xlabel = "epoch"
        source = (
            f"metrics.csv's lr column, one point per epoch ({files.problems.get('events', '')})"
        )
    else:
        plot.note = "; ".join(
            files.problems.get(name, "no lr recorded") for name in ("events", "metrics.csv")
        )
        return
    figure = _new_figure(7, 4)
    axes = figure.add_subplot()
    marker = "o" if len(xs) <= 50 else None
    axes.plot(xs, ys, color="tab:blue", marker=marker, markersize=3)
    axes.set_title("Learning-rate schedule")
    axes.set_xlabel(xlabel)
    if xlabel == "epoch":
        _whole_ticks(axes)
    axes.set_ylabel("learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    plot.png = _png(figure)
    plot.note = f"From {source}."


def _class_names(files: RunFiles, count: int) -> list[str]:
    """summary.json's class names, or the indices when they are missing or do not match."""
    names = (files.summary or {}).get("classes")
    if isinstance(names, list) and len(names) == count:
        return [str(name) for name in names]
    return [str(index) for index in range(count)]


def _short(name: str, limit: int) -> str:
    """A class name fit for a plot label: control characters and runs of white space become
    one space, and long names are cut with an ellipsis."""
    flat = re.sub(r"[\s\x00-\x1f\x7f]+", " ", name).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _class_ticks(axes, axis: str, names: list[str], label: str) -> None:
    """Class names on an axis up to NAMED_CLASSES; beyond that, index ticks chosen by
    matplotlib and an axis label pointing at the per-class table."""
    count = len(names)
    setter = axes.set_xticks if axis == "x" else axes.set_yticks
    set_label = axes.set_xlabel if axis == "x" else axes.set_ylabel
    if count <= NAMED_CLASSES:
        size = 9 if count <= 12 else 7
        rotation = 90 if axis == "x" and max(len(n) for n in names) > 3 else 0
        setter(
            range(count),
            labels=[_short(name, 18) for name in names],
            fontsize=size,
            rotation=rotation,
            parse_math=False,
        )
        set_label(label)
    else:
        set_label(f"{label} (class index; names in the per-class table)")


def _confusion_plot(plot: Plot, files: RunFiles) -> None:
    if files.summary is None:
        plot.note = files.problems["summary.json"]
        return
    matrix = files.summary.get("confusion_matrix")
    try:
        import numpy as np

        counts = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        counts = None
    if counts is None or counts.ndim != 2 or counts.shape[0] != counts.shape[1] or not counts.size:
        plot.note = "summary.json holds no usable confusion_matrix"
        return
    count = counts.shape[0]
    names = _class_names(files, count)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.42 * count + 3), 13.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    _class_ticks(axes, "x", names, "predicted class")
    _class_ticks(axes, "y", names, "true class")
    if count <= ANNOTATED_CLASSES:
        size = 9 if count <= 10 else 7
        for row in range(count):
            for column in range(count):
                share = shares[row, column]
                if counts[row, column] == 0:
                    continue
                axes.text(
                    column,
                    row,
                    f"{share:.2f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if share > 0.5 else "black",
                )
    best = files.summary.get("best_epoch")
    epoch = f" (epoch {best})" if isinstance(best, int) else ""
    axes.set_title(f"Confusion matrix{epoch}, each row normalised")
    figure.tight_layout()
    plot.png = _png(figure)
    plot.note = "Rows are the true classes, columns the predicted ones; each row sums to 1." + (
        INDEX_NOTE if count > NAMED_CLASSES else ""
    )


def _per_class_scores(files: RunFiles) -> list[tuple[str, dict[str, float | None]]] | None:
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
        table.append(
            (name, {key: _number(entry.get(key)) for key in ("precision", "recall", "f1")})
        )
        table[-1][1]["support"] = _number(entry.get("support"))
    return table


def _per_class_plot(plot: Plot, files: RunFiles) -> None:
    if files.summary is None:
        plot.note = files.problems["summary.json"]
        return
    table = _per_class_scores(files)
    if table is None:
        plot.note = "summary.json holds no per_class scores"
        return
    import numpy as np

    count = len(table)
    positions = np.arange(count)
    width = min(max(7.0, 0.36 * count + 2), 18.0)
    figure = _new_figure(width, 4.8)
    axes = figure.add_subplot()
    bar = 0.27
    bars = (("precision", "precision", "tab:blue"), ("recall", "recall", "tab:orange"))
    for offset, (key, label, colour) in enumerate((*bars, ("f1", "F1", "tab:green"))):
        values = [scores[key] if scores[key] is not None else 0.0 for _, scores in table]
        axes.bar(positions + (offset - 1) * bar, values, bar, color=colour, label=label)
    _class_ticks(axes, "x", [name for name, _ in table], "class")
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("score")
    best = files.summary.get("best_epoch")
    epoch = f" (epoch {best})" if isinstance(best, int) else ""
    axes.set_title(f"Per-class validation scores{epoch}")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper center", ncol=3, fontsize=8)
    figure.tight_layout()
    plot.png = _png(figure)
    if count > NAMED_CLASSES:
        plot.note = INDEX_NOTE.strip()


def _load_samples(path: Path) -> tuple[Any, Any, Any, Any]:
    """(images uint8 (N, H, W, C) numpy, labels, predicted, confidence) from the samples file;
    raises ValueError when its tensors are not what the training routine writes."""
    import numpy as np
    from safetensors.torch import load_file

    from taolu.track.pictures import to_uint8

    tensors = load_file(str(path))
    missing = [key for key in ("images", "labels", "predicted", "confidence") if key not in tensors]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    images = tensors["images"]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images has shape {tuple(images.shape)}, not (N, 1 or 3, H, W)")
    pictures = to_uint8(images).permute(0, 2, 3, 1).numpy()
    count = len(pictures)
    parts = [tensors[key].reshape(-1) for key in ("labels", "predicted", "confidence")]
    if any(len(part) != count for part in parts):
        raise ValueError("images, labels, predicted and confidence differ in length")
    labels, predicted = (part.long().numpy() for part in parts[:2])
    confidence = parts[2].float().numpy()
    return np.ascontiguousarray(pictures), labels, predicted, confidence


def _samples_plot(plot: Plot, files: RunFiles, path: Path) -> None:
    if not path.is_file():
        plot.note = (
            f"there is no {REPORT_FOLDER}/{SAMPLES_FILE} (the training routine writes it at "
            "the end of a finished run)"
        )
        return
    try:
        images, labels, predicted, confidence = _load_samples(path)
    except Exception as error:  # a truncated or foreign file
        plot.note = f"{REPORT_FOLDER}/{SAMPLES_FILE} could not be used: {error}"
        return
    if not len(images):
        plot.note = f"{REPORT_FOLDER}/{SAMPLES_FILE} holds no images"
        return
    images = images[:MAX_SAMPLES]
    classes = (files.summary or {}).get("classes")
    classes = [str(name) for name in classes] if isinstance(classes, list) else []

    def name(index: int) -> str:
        return _short(classes[index], 11) if 0 <= index < len(classes) else str(index)

    count = len(images)
    columns = min(SAMPLE_COLUMNS, count)
    rows = -(-count // columns)
    figure = _new_figure(1.75 * columns, 1.95 * rows + 0.5)
    # Small images (digits, CIFAR) stay crisp; large ones are smoothed when shrunk to a tile.
    smoothing = "nearest" if max(images.shape[1:3]) <= 64 else "antialiased"
    right = 0
    for index, picture in enumerate(images):
        axes = figure.add_subplot(rows, columns, index + 1)
        truth, guess = int(labels[index]), int(predicted[index])
        correct = truth == guess
        right += correct
        if picture.shape[2] == 1:
            axes.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation=smoothing)
        else:
            axes.imshow(picture, interpolation=smoothing)
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_edgecolor(RIGHT if correct else WRONG)
            spine.set_linewidth(2)
        pair, score = f"{name(truth)} → {name(guess)}", f"({float(confidence[index]):.2f})"
        # Two lines where one would run into the next tile's title.
        title = f"{pair} {score}" if len(pair) + len(score) < TITLE_CHARS else f"{pair}\n{score}"
        axes.set_title(
            title,
            fontsize=7.5,
            color=RIGHT if correct else WRONG,
            parse_math=False,
        )
    figure.suptitle(
        f"Validation samples: {right} of {count} right (true → predicted (confidence))",
        fontsize=10,
    )
    figure.tight_layout()
    plot.png = _png(figure)
    plot.note = (
        f"The best model's predictions on {count} validation images, {right} of {count} "
        "right; green titles are right, red ones wrong."
    )


# --------------------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 1.2em; margin: 32px 0 10px; border-bottom: 1px solid #d5d9e0;
     padding-bottom: 4px; }
.path { color: #5b6475; font-size: 0.9em; margin: 0 0 18px; word-break: break-all; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 6px; padding: 4px 18px 16px;
          margin-bottom: 18px; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #e1e4ea; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.value { word-break: break-word; max-width: 760px; }
tbody tr:nth-child(even) { background: #fafbfc; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.note { color: #5b6475; font-size: 0.9em; margin: 4px 0; }
.skipped { color: #8a5a00; background: #fff8e6; border: 1px solid #f0dca8; border-radius: 4px;
           padding: 6px 10px; }
.muted { color: #8a92a3; }
"""


def _render_html(files: RunFiles, plots: list[Plot]) -> str:
    run_name = files.run_dir.resolve().name or str(files.run_dir)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>taolu report: {_esc(run_name)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>taolu run {_esc(run_name)}</h1>",
        f'<p class="path">{_esc(files.run_dir.resolve())}</p>',
        "<section>",
        "<h2>Summary</h2>",
        _summary_table(files),
        "</section>",
    ]
    for plot in plots:
        parts.append(f'<section id="{_esc(plot.key)}">')
        parts.append(f"<h2>{_esc(plot.title)}</h2>")
        if plot.png is None:
            parts.append(f'<p class="note skipped">Not drawn: {_esc(plot.note)}.</p>')
        else:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{_esc(plot.title)}">')
            if plot.note:
                parts.append(f'<p class="note">{_esc(plot.note)}</p>')
        if plot.key == "per_class":
            parts.append(_per_class_table(files))
        parts.append("</section>")
    parts += [
        "<section>",
        "<h2>Configuration</h2>",
        _config_table(files),
        "</section>",
        f'<p class="note">Written by <code>taolu report</code> from the files in '
        f"{_esc(files.run_dir.resolve())}.</p>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, kind: str = "") -> str:
    """A value for a table cell, escaped."""
    if value is None:
        return '<span class="muted">—</span>'
    if value == "":
        return '<span class="muted">(empty)</span>'
    if isinstance(value, bool):
        return _esc("true" if value else "false")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return _esc(value)
        if kind == "percent":
            return _esc(f"{value:.2%}")
        if kind == "seconds":
            return _esc(f"{value:,.1f} s")
        if kind == "rate":
            return _esc(f"{value:,.0f}")
        if kind == "score":
            return _esc(f"{value:.3f}")
        if isinstance(value, float):
            return _esc(f"{value:.4g}")
        return _esc(value)
    if isinstance(value, (list, dict)):
        return _esc(json.dumps(value, ensure_ascii=False))
    return _esc(value)


def _summary_table(files: RunFiles) -> str:
    summary = files.summary
    config = files.config or {}
    rows: list[tuple[str, str]] = []
    note = ""
    if summary is not None:
        skipped = summary.get("skipped_files")
        skipped_count = len(skipped) if isinstance(skipped, (list, dict)) else skipped
        classes = summary.get("classes")
        epochs = summary.get("epochs_completed")
        planned = config.get("epochs")
        epochs_text = _fmt(epochs)
        if isinstance(planned, int) and planned != epochs:
            epochs_text += _esc(f" of {planned}")
        if summary.get("stopped_early"):
            epochs_text += _esc(" (stopped early)")
        rows += [
            ("Best val accuracy", _fmt(summary.get("best_val_acc"), "percent")),
            ("Best epoch", _fmt(summary.get("best_epoch"))),
            ("Monitor", _fmt(summary.get("monitor", config.get("monitor")))),
            ("Final val accuracy", _fmt(summary.get("final_val_acc"), "percent")),
            ("Epochs", epochs_text),
            ("Train seconds", _fmt(summary.get("train_seconds"), "seconds")),
            ("Images/s", _fmt(summary.get("images_per_second"), "rate")),
            ("Device", _fmt(summary.get("device"))),
            ("Precision", _fmt(summary.get("precision"))),
            ("Recipe", _fmt(summary.get("recipe"))),
            ("Model", _fmt(summary.get("model", config.get("model")))),
            ("Data", _fmt(summary.get("data", config.get("data")))),
            ("Classes", _fmt(len(classes) if isinstance(classes, list) else None)),
            ("Train / val samples", _pair(summary, "train_samples", "val_samples")),
            ("Skipped files", _fmt(skipped_count)),
            ("Skipped batches", _fmt(summary.get("skipped_batches"))),
        ]
    else:
        note = (
            f'<p class="note skipped">{_esc(files.problems["summary.json"])}; '
            "what follows comes from metrics.csv and config.yaml.</p>"
        )
        metrics = files.metrics or []
        accuracies = [(row.get("val_acc"), row["epoch"]) for row in metrics]
        accuracies = [(acc, epoch) for acc, epoch in accuracies if acc is not None]
        best = max(accuracies, default=None)
        rows += [
            ("Best val accuracy", _fmt(best[0] if best else None, "percent")),
            ("Best epoch (by val accuracy)", _fmt(int(best[1]) if best else None)),
            ("Monitor", _fmt(config.get("monitor"))),
            (
                "Last val accuracy",
                _fmt(accuracies[-1][0] if accuracies else None, "percent"),
            ),
            ("Epochs recorded", _fmt(len(metrics))),
            ("Planned epochs", _fmt(config.get("epochs"))),
            (
                "Train seconds",
                _fmt(metrics[-1].get("elapsed_seconds") if metrics else None, "seconds"),
            ),
            ("Model", _fmt(config.get("model"))),
            ("Data", _fmt(config.get("data"))),
            ("Device", _fmt(config.get("device"))),
            ("Precision", _fmt(config.get("precision"))),
        ]
    body = "\n".join(f"<tr><th>{_esc(label)}</th><td>{value}</td></tr>" for label, value in rows)
    return f'{note}<table class="summary">\n<tbody>\n{body}\n</tbody>\n</table>'


def _pair(summary: dict[str, Any], one: str, other: str) -> str:
    first, second = summary.get(one), summary.get(other)
    if first is None and second is None:
        return _fmt(None)
    return f"{_fmt(first)} / {_fmt(second)}"


def _per_class_table(files: RunFiles) -> str:
    table = _per_class_scores(files)
    if table is None:
        return ""
    head = (
        "<tr><th>#</th><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
        "<th>support</th></tr>"
    )
    lines = []
    for index, (name, scores) in enumerate(table):
        support = scores["support"]
        cells = "".join(
            f'<td class="num">{_fmt(scores[key], "score")}</td>'
            for key in ("precision", "recall", "f1")
        )
        lines.append(
            f'<tr><td class="num">{index}</td><td>{_esc(name)}</td>{cells}'
            f'<td class="num">{_fmt(int(support) if support is not None else None)}</td></tr>'
        )
    body = "\n".join(lines)
    return f'<table class="per-class">\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _config_table(files: RunFiles) -> str:
    if files.config is None:
        return f'<p class="note skipped">{_esc(files.problems["config.yaml"])}.</p>'
    body = "\n".join(
        f'<tr><th>{_esc(key)}</th><td class="value">{_fmt(value)}</td></tr>'
        for key, value in files.config.items()
    )
    return f'<table class="config">\n<tbody>\n{body}\n</tbody>\n</table>'
