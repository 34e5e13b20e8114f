"""A run's report, the page: report.html, one self-contained file (plots embedded as data:
URIs, no script, no request) that opens on the verdict and the headline numbers."""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

from taolu.track.report_files import RunFiles, per_class_scores
from taolu.track.report_plots import Plot

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


def render_html(files: RunFiles, plots: list[Plot]) -> str:
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
    table = per_class_scores(files)
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
