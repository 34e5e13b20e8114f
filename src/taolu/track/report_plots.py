"""A run's report, the pictures: loss, accuracy and lr curves, the confusion matrix, per-class
scores and sample predictions, as PNG bytes. matplotlib Figures drawn by FigureCanvasAgg (never
pyplot: no global backend, no figure registry) at a fixed DPI, so the same run always gives the
same pictures; a plot whose input is missing gets a note saying why instead."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from taolu.track.report_calibration import calibration_of, draw_reliability
from taolu.track.report_files import (
    REPORT_FOLDER,
    SAMPLES_FILE,
    RunFiles,
    per_class_scores,
)
from taolu.track.report_samples import draw_samples, load_samples

DPI = 100
# Curves are drawn CURVE_WIDTH inches wide (1,200 px), the page's width, with text sized to be
# read there; every plot is drawn with these matplotlib settings.
CURVE_WIDTH = 12.0
STYLE = {
    "font.size": 13,
    "axes.titlesize": 15,
    "axes.labelsize": 13,
    "legend.fontsize": 12,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
}
# Beyond this many classes the class names are left off the plot axes (the ticks then show
# class indices, which the per-class table lists); beyond ANNOTATED the confusion-matrix cells
# carry no numbers.
NAMED_CLASSES = 30
ANNOTATED_CLASSES = 20
MAX_SAMPLES = 64  # sample-prediction tiles drawn at most
SAMPLE_COLUMNS = 8
INDEX_NOTE = (
    f" With more than {NAMED_CLASSES} classes the axes show class indices; "
    "the per-class table below names them."
)

# What each plot is called in the report and its file in RUN/report/, in report order.
PLOTS = (
    ("loss", "Loss", "loss.png"),
    ("accuracy", "Accuracy", "accuracy.png"),
    ("lr", "Learning rate", "lr.png"),
    ("confusion", "Confusion matrix", "confusion_matrix.png"),
    ("per_class", "Per-class precision, recall and F1", "per_class.png"),
    ("reliability", "Calibration: how sure, how often right", "reliability.png"),
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
    elsewhere: bool = False  # not drawn: the page shows it another way


# --------------------------------------------------------------------------- plots


def draw_plots(files: RunFiles, folder: Path, elsewhere: Collection[str] = ()) -> list[Plot]:
    """The plots as PNG bytes; those whose keys are in `elsewhere` are left undrawn (the page
    shows them another way: the confusion matrix as a linked table)."""
    plots = {key: Plot(key, title, filename) for key, title, filename in PLOTS}
    drawers: dict[str, Callable[[Plot], None]] = {
        "loss": lambda plot: _loss_plot(plot, files),
        "accuracy": lambda plot: _accuracy_plot(plot, files),
        "lr": lambda plot: _lr_plot(plot, files),
        "confusion": lambda plot: _confusion_plot(plot, files),
        "per_class": lambda plot: _per_class_plot(plot, files),
        "reliability": lambda plot: _reliability_plot(plot, files),
        "samples": lambda plot: _samples_plot(plot, files, folder / SAMPLES_FILE),
    }
    from matplotlib import rc_context

    with warnings.catch_warnings(), rc_context(STYLE):
        # Class names in scripts the bundled DejaVu fonts lack draw as boxes; that is all.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        for key, draw in drawers.items():
            if key in elsewhere:
                plots[key].elsewhere = True
            else:
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
    figure = _new_figure(CURVE_WIDTH, 5)
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
    figure = _new_figure(CURVE_WIDTH, 5.5)
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
    axes.legend(loc="lower right")
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
    figure = _new_figure(CURVE_WIDTH, 4.5)
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
        size = 12 if count <= 12 else 9
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
    side = min(max(9.0, 0.42 * count + 3), 13.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    _class_ticks(axes, "x", names, "predicted class")
    _class_ticks(axes, "y", names, "true class")
    if count <= ANNOTATED_CLASSES:
        size = 12 if count <= 10 else 9
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


def _per_class_plot(plot: Plot, files: RunFiles) -> None:
    if files.summary is None:
        plot.note = files.problems["summary.json"]
        return
    table = per_class_scores(files)
    if table is None:
        plot.note = "summary.json holds no per_class scores"
        return
    import numpy as np

    count = len(table)
    positions = np.arange(count)
    width = min(max(CURVE_WIDTH, 0.36 * count + 2), 18.0)
    figure = _new_figure(width, 5.5)
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
    axes.legend(loc="upper center", ncol=3)
    figure.tight_layout()
    plot.png = _png(figure)
    if count > NAMED_CLASSES:
        plot.note = INDEX_NOTE.strip()


def _reliability_plot(plot: Plot, files: RunFiles) -> None:
    calibration = calibration_of(files)
    if calibration is None:
        plot.note = "summary.json holds no calibration (a run from an older taolu, or resumed)"
        return
    figure = _new_figure(CURVE_WIDTH * 0.6, 6)
    plot.note = draw_reliability(figure, calibration)
    figure.tight_layout()
    plot.png = _png(figure)


def _samples_plot(plot: Plot, files: RunFiles, path: Path) -> None:
    if not path.is_file():
        plot.note = (
            f"there is no {REPORT_FOLDER}/{SAMPLES_FILE} (the training routine writes it at "
            "the end of a finished run)"
        )
        return
    try:
        images, labels, predicted, confidence = load_samples(path)
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

    plot.png, right = draw_samples(images, labels, predicted, confidence, name, SAMPLE_COLUMNS)
    count = len(images)
    plot.note = (
        f"The best model's predictions on {count} validation images, {right} of {count} "
        "right; green titles are right, red ones wrong."
    )
