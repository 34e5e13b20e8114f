"""A run's report, the page: report.html, one self-contained file (plots embedded as data:
URIs, no script, no request) that opens on the verdict and the headline numbers."""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

from taolu.track.report_files import REPORT_FOLDER, RunFiles, per_class_scores
from taolu.track.report_maps import where_it_looks_section
from taolu.track.report_mistakes import MISTAKES_CSS, Mistakes, mistakes_html, run_classes
from taolu.track.report_plots import Plot

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.4; }
main { max-width: 1280px; margin: 0 auto; padding: 20px clamp(8px, 2.2vw, 28px) 48px;
       box-sizing: border-box; }
h1 { font-size: 1.5em; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.2em; margin: 18px 0 10px; border-bottom: 1px solid #d5d9e0;
     padding-bottom: 4px; }
.path { color: #5b6475; font-size: 0.9em; margin: 0 0 14px; overflow-wrap: anywhere; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 6px;
          padding: 2px clamp(8px, 1.4vw, 18px) 14px; margin-bottom: 16px; }
.verdict { font-size: 1.15em; font-weight: 600; padding: 10px 14px; border-radius: 6px;
           margin: 12px 0; }
.verdict.ok { background: #e8f6ec; color: #17552b; border: 1px solid #b9e2c5; }
.verdict.warn { background: #fff4e0; color: #7a4b00; border: 1px solid #f0d29a; }
.findings { margin: 0 0 12px; padding-left: 1.2em; }
.findings li { margin: 6px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr));
         gap: 10px; margin: 12px 0 4px; }
.card { border: 1px solid #e1e4ea; border-radius: 6px; padding: 8px 12px; background: #fbfcfd;
        min-width: 0; }
.card .label { display: block; color: #5b6475; font-size: 0.85em; }
.card .big { display: block; font-size: 1.5em; font-weight: 600; overflow-wrap: anywhere; }
.card .sub { display: block; color: #5b6475; font-size: 0.85em; overflow-wrap: anywhere; }
.card.alert .big { color: #a34a00; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #e1e4ea; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.value, td.path { overflow-wrap: anywhere; }
tbody tr:nth-child(even) { background: #fafbfc; }
img { width: 100%; height: auto; display: block; margin: 6px 0; }
.note { color: #5b6475; font-size: 0.9em; margin: 4px 0; }
.skipped { color: #8a5a00; background: #fff8e6; border: 1px solid #f0dca8; border-radius: 4px;
           padding: 6px 10px; }
.muted { color: #8a92a3; }
"""


def render_html(files: RunFiles, plots: list[Plot], mistakes: Mistakes | None = None) -> str:
    """The page: the verdict and the headline numbers first, then the plots at the page's
    width, the error analysis (top losses, confused pairs, likely-mislabelled images), the
    files left out by name, the summary and the configuration the run used."""
    run_name = files.run_dir.resolve().name or str(files.run_dir)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>taolu report: {_esc(run_name)}</title>",
        f"<style>{CSS}{MISTAKES_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>taolu run {_esc(run_name)}</h1>",
        f'<p class="path">{_esc(files.run_dir.resolve())}</p>',
        '<section id="overview">',
        _verdict(files),
        _headline_cards(files),
        "</section>",
    ]
    for plot in plots:
        if plot.elsewhere:
            continue
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
            parts.append(_scrolling(_per_class_table(files)))
        parts.append("</section>")
    if mistakes is not None:
        classes = run_classes(mistakes, (files.summary or {}).get("classes"))
        parts.append(mistakes_html(mistakes, classes))
    parts.append(where_it_looks_section(files.run_dir / REPORT_FOLDER))
    parts += [
        _skipped_section(files),
        '<section id="summary">',
        "<h2>Summary</h2>",
        _scrolling(_summary_table(files)),
        "</section>",
        '<section id="configuration">',
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
    return "\n".join(part for part in parts if part)


def _scrolling(table: str) -> str:
    """A wide table scrolls inside its own box on a narrow screen, never the whole page."""
    return f'<div class="scroll">{table}</div>' if table else ""


# --------------------------------------------------------------------------- the first screen


def _verdict(files: RunFiles) -> str:
    """What the run's own numbers say (summary.json's verdict), in one line and a list."""
    summary = files.summary
    if summary is None:
        return (
            '<p class="verdict warn">The run did not finish: '
            f"{_esc(files.problems['summary.json'])}. The numbers below come from metrics.csv."
            "</p>"
        )
    findings = summary.get("verdict")
    if not isinstance(findings, list):
        return '<p class="verdict ok">Finished (this run recorded no verdict).</p>'
    findings = [item for item in findings if isinstance(item, dict)]
    if not findings:
        return '<p class="verdict ok">Healthy: the run&#x27;s numbers show nothing to fix.</p>'
    items = "".join(
        f"<li><strong>{_esc(item.get('message', ''))}</strong> "
        f"Try: {_esc(item.get('advice', ''))}</li>"
        for item in findings
    )
    count = len(findings)
    title = f"{count} thing{'s' if count != 1 else ''} to look at"
    return f'<p class="verdict warn">{_esc(title)}</p>\n<ul class="findings">{items}</ul>'


def _card(label: str, big: str, sub: str = "", alert: bool = False) -> str:
    """One headline number: `big` and `sub` are already formatted (escaped) HTML."""
    kind = "card alert" if alert else "card"
    sub_html = f'<span class="sub">{sub}</span>' if sub else ""
    return (
        f'<div class="{kind}"><span class="label">{_esc(label)}</span>'
        f'<span class="big">{big}</span>{sub_html}</div>'
    )


def _headline_cards(files: RunFiles) -> str:
    summary, config = files.summary, files.config or {}
    if summary is None:
        rows = files.metrics or []
        accuracies = [row.get("val_acc") for row in rows if row.get("val_acc") is not None]
        cards = [
            _card("Best val accuracy", _fmt(max(accuracies, default=None), "percent")),
            _card("Epochs recorded", _fmt(len(rows)), _esc(f"of {config.get('epochs', '?')}")),
            _card("Model", _fmt(config.get("model")), _fmt(config.get("data"))),
        ]
        return f'<div class="cards">{"".join(cards)}</div>'
    best_metrics = summary.get("best_metrics")
    best_metrics = best_metrics if isinstance(best_metrics, dict) else {}
    epochs, planned = summary.get("epochs_completed"), config.get("epochs")
    skipped = _skipped_files(summary)
    classes = summary.get("classes")
    cards = [
        _card(
            "Best val accuracy",
            _fmt(summary.get("best_val_acc"), "percent"),
            _esc(f"epoch {summary.get('best_epoch')} (by {summary.get('monitor', 'val/acc')})"),
        ),
        _card(
            "Final val accuracy",
            _fmt(summary.get("final_val_acc"), "percent"),
            "loss " + _fmt(summary.get("final_val_loss"), "score"),
        ),
        _card("Macro-F1 (best epoch)", _fmt(best_metrics.get("val_macro_f1"), "score")),
        _card(
            "Epochs",
            _fmt(epochs),
            _esc(f"of {planned}" if planned is not None else "")
            + _esc(" (stopped early)" if summary.get("stopped_early") else ""),
        ),
        _card(
            "Training time",
            _fmt(summary.get("train_seconds"), "seconds"),
            _fmt(summary.get("images_per_second"), "rate") + " images/s",
        ),
        _card("Model", _fmt(summary.get("model", config.get("model")))),
        _card(
            "Data",
            _pair(summary, "train_samples", "val_samples"),
            _esc("train / val images")
            + (_esc(f", {len(classes)} classes") if isinstance(classes, list) else "")
            + " · "
            + _fmt(summary.get("data")),
        ),
        _card("Device", _fmt(summary.get("device")), _fmt(summary.get("precision"))),
        _card("Skipped files", _fmt(len(skipped)), alert=bool(skipped)),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _skipped_files(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """summary.json's skipped_files as (path, reason): {"path", "reason"} items, or names."""
    skipped = summary.get("skipped_files")
    if not isinstance(skipped, list):
        return []
    return [
        (str(item.get("path", "")), str(item.get("reason", "")))
        if isinstance(item, dict)
        else (str(item), "")
        for item in skipped
    ]


def _skipped_section(files: RunFiles) -> str:
    """The files training left out, by name and why (none: no section)."""
    skipped = _skipped_files(files.summary or {})
    if not skipped:
        return ""
    rows = "\n".join(
        f'<tr><td class="path">{_esc(path)}</td><td class="value">{_esc(reason)}</td></tr>'
        for path, reason in skipped
    )
    return (
        '<section id="skipped">\n'
        f"<h2>Skipped files ({len(skipped)})</h2>\n"
        '<p class="note">Training left these out: they could not be read as images.</p>\n'
        '<table class="skipped-files">\n<thead><tr><th>file</th><th>why</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody>\n</table>\n</section>"
    )


# --------------------------------------------------------------------------- tables


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
    """config.yaml's options, each with the value the run used where the setting left it to
    the run (auto, 0, -1): summary.json's `resolved`, the setting shown beside it."""
    if files.config is None:
        return f'<p class="note skipped">{_esc(files.problems["config.yaml"])}.</p>'
    resolved = (files.summary or {}).get("resolved")
    resolved = resolved if isinstance(resolved, dict) else {}
    rows = []
    for key, value in files.config.items():
        used = resolved.get(key, value)
        cell = _fmt(used)
        if used != value:
            cell += f' <span class="muted">(set: {_fmt(value)})</span>'
        rows.append(f'<tr><th>{_esc(key)}</th><td class="value">{cell}</td></tr>')
    body = "\n".join(rows)
    note = (
        '<p class="note">Values the run chose itself show what was set beside them.</p>\n'
        if resolved
        else ""
    )
    return f'{note}<table class="config">\n<tbody>\n{body}\n</tbody>\n</table>'
