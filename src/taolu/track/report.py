"""A run's report: PNG plots and one self-contained report.html in RUN/report/.

Drawn only from the files the run left behind: metrics.csv (loss and accuracy curves, the
per-epoch lr), the TensorBoard event files (the per-step lr), summary.json (the summary table,
the confusion matrix, per-class scores), config.yaml (the configuration table) and
report/val_samples.safetensors (the grid of sample predictions, saved by the training routine),
val_predictions.csv with report/mistakes.safetensors (the top losses and confused pairs, with
thumbnails) and label_issues.csv (the likely-mislabelled list).
A plot whose input is missing is left out with a note saying why, so an interrupted run or a
user-Dataset run still gets a report. Nothing outside RUN/report/ is ever written, and every
file is written atomically (a temporary file, then os.replace).

Reading lives in report_files.py, the pictures in report_plots.py, the page in report_page.py.
"""

from __future__ import annotations

from pathlib import Path

from taolu.atomic_file import write_atomic
from taolu.errors import ConfigError
from taolu.track.report_files import REPORT_FOLDER, REPORT_HTML, SAMPLES_FILE, read_run
from taolu.track.report_mistakes import read_mistakes, run_classes, shows_linked_matrix
from taolu.track.report_page import render_html
from taolu.track.report_plots import draw_plots

__all__ = ["REPORT_FOLDER", "REPORT_HTML", "SAMPLES_FILE", "write_report"]


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
    files = read_run(run_dir)
    mistakes = read_mistakes(run_dir, folder)
    classes = run_classes(mistakes, (files.summary or {}).get("classes"))
    # The confusion matrix is drawn once: as the table linking to its images where the page
    # has one, a PNG otherwise (no val_predictions.csv, or too many classes to read).
    linked = shows_linked_matrix(mistakes, classes)
    plots = draw_plots(files, folder, elsewhere=("confusion",) if linked else ())
    for plot in plots:
        target = folder / plot.filename
        if plot.png is not None:
            write_atomic(target, plot.png)
        elif target.is_file():  # a stale picture from an earlier report would contradict it
            target.unlink()
    page = folder / REPORT_HTML
    write_atomic(page, render_html(files, plots, mistakes).encode("utf-8"))
    return page
