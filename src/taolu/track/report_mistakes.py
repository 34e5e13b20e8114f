"""The report's error analysis: the validation images with the highest loss, by path, and a
confusion matrix whose cells link to the images of that pair of classes, drawn from
val_predictions.csv and the thumbnails the training routine kept (report/mistakes.safetensors);
and the likely-mislabelled list, from label_issues.csv where the run has one.

Thumbnails are embedded as PNG data: URIs, so report.html stays one self-contained file. A run
without thumbnails (an older run, or one whose data could not be read again) still gets the
paths and the linked matrix."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taolu.inspection import by_loss, confused_pairs, read_val_predictions
from taolu.layout import RunDir

MISTAKES_FILE = "mistakes.safetensors"
TOP_LOSSES = 24  # images in the top-loss gallery
PER_PAIR = 6  # images shown for each confused pair of classes
MAX_PAIRS = 40  # confused pairs listed (the most frequent first)
THUMB = 96  # pixels, the longest side of a kept thumbnail
MATRIX_CLASSES = 40  # above this many classes the linked matrix would not be readable
LABEL_ISSUE_ROWS = 50


def pick_rows(rows: Sequence[dict[str, Any]]) -> list[int]:
    """The val_predictions.csv rows the report shows a picture of: the top losses, and the
    highest-loss images of each of the most frequent confused pairs. Sorted row numbers."""
    chosen = set(by_loss(rows)[:TOP_LOSSES])
    for members in confused_pairs(rows)[:MAX_PAIRS]:
        chosen.update(members[1][:PER_PAIR])
    return sorted(chosen)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 shrunk so its longest side is at most THUMB pixels."""
    from PIL import Image

    height, width = image.shape[:2]
    if max(height, width) <= THUMB:
        return image
    scale = THUMB / max(height, width)
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    shrunk = np.asarray(picture.resize(shape, Image.Resampling.BILINEAR))
    return shrunk[:, :, None] if shrunk.ndim == 2 else shrunk


@dataclass
class Mistakes:
    """What the report's error analysis reads: val_predictions.csv's rows, the thumbnails by
    row number, label_issues.csv's rows (None where the run has none)."""

    rows: list[dict[str, Any]] | None
    pictures: dict[int, np.ndarray] = field(default_factory=dict)
    label_issues: list[dict[str, Any]] | None = None
    problems: list[str] = field(default_factory=list)
    label_problem: str = ""  # why label_issues.csv, which exists, could not be read


def read_mistakes(run_dir: Path, report_folder: Path) -> Mistakes:
    from taolu.errors import DataError

    found = Mistakes(rows=None)
    try:
        found.rows = read_val_predictions(run_dir)
    except DataError as error:
        found.problems.append(str(error))
    path = report_folder / MISTAKES_FILE
    if found.rows is not None and path.is_file():
        try:
            found.pictures = _read_pictures(path, len(found.rows))
        except Exception as error:  # a truncated or foreign file costs the pictures only
            found.problems.append(f"{path.name} could not be used: {error}")
    found.label_issues, found.label_problem = _read_label_issues(RunDir(run_dir).label_issues)
    return found


def _read_pictures(path: Path, count: int) -> dict[int, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    images, rows = tensors.get("images"), tensors.get("rows")
    if images is None or rows is None or images.ndim != 4 or len(images) != len(rows):
        raise ValueError("it does not hold images (N, H, W, C) and their rows")
    if images.dtype != np.uint8 or images.shape[3] not in (1, 3):
        raise ValueError(f"images are {images.dtype} {tuple(images.shape)}, not uint8 1 or 3")
    return {int(row): image for row, image in zip(rows, images, strict=True) if 0 <= row < count}


def _read_label_issues(path: Path) -> tuple[list[dict[str, Any]] | None, str]:
    from taolu.errors import DataError
    from taolu.label_issues import read_label_issues

    if not path.is_file():
        return None, ""
    try:
        return read_label_issues(path)[:LABEL_ISSUE_ROWS], ""
    except DataError as error:
        return None, str(error)


def run_classes(found: Mistakes, listed: Any) -> list[str]:
    """The classes in the run's order (summary.json's list), else those the predictions name."""
    if isinstance(listed, list) and listed:
        return [str(name) for name in listed]
    if not found.rows:
        return []
    return sorted({row["true"] for row in found.rows} | {row["predicted"] for row in found.rows})


def shows_linked_matrix(found: Mistakes, classes: Sequence[str]) -> bool:
    """Whether the page draws the confusion matrix as a table linking to the images (then no
    PNG of it is drawn): with predictions, some wrong, and few enough classes to read."""
    return (
        found.rows is not None
        and 0 < len(classes) <= MATRIX_CLASSES
        and any(row["true"] != row["predicted"] for row in found.rows)
    )


# --------------------------------------------------------------------------- the page


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(found: Mistakes, index: int) -> str:
    row = found.rows[index]
    picture = found.pictures.get(index)
    image = (
        f'<img class="thumb" src="{_png_uri(picture)}" alt="{_esc(row["path"])}">'
        if picture is not None
        else '<div class="thumb none">no picture</div>'
    )
    verdict = "right" if row["true"] == row["predicted"] else "wrong"
    return (
        f'<figure class="tile {verdict}">{image}<figcaption>'
        f"<b>{_esc(row['true'])} → {_esc(row['predicted'])}</b> "
        f"{row['probability']:.2f} · loss {row['loss']:.2f}"
        f'<span class="path">{_esc(row["path"])}</span></figcaption></figure>'
    )


def mistakes_html(found: Mistakes, classes: Sequence[str]) -> str:
    """The sections: top losses, the linked confusion matrix with each pair's images, and the
    likely-mislabelled list. A note says why a section is missing."""
    if found.rows is None:
        note = "; ".join(found.problems) or "this run has no val_predictions.csv"
        return (
            '<section id="top-losses"><h2>Top losses</h2>'
            f'<p class="note skipped">Not shown: {_esc(note)}.</p></section>'
            + _label_issues_section(found)
        )
    return (
        _top_losses_section(found)
        + _confusion_section(found, classes)
        + (_label_issues_section(found))
    )


def _top_losses_section(found: Mistakes) -> str:
    rows = found.rows
    top = by_loss(rows)[:TOP_LOSSES]
    tiles = "".join(_tile(found, index) for index in top)
    wrong = sum(row["true"] != row["predicted"] for row in rows)
    return (
        '<section id="top-losses"><h2>Top losses</h2>'
        f'<p class="note">The {len(top)} validation images the best model found hardest (of '
        f"{len(rows)}, {wrong} wrong), by loss; each titled true → predicted, the predicted "
        "class's probability. <code>taolu inspect RUN</code> lists them all.</p>"
        f'<div class="gallery">{tiles}</div></section>'
    )


def _pair_id(true: str, predicted: str, names: dict[str, int]) -> str:
    return f"pair-{names.get(true, 'x')}-{names.get(predicted, 'x')}"


def _confusion_section(found: Mistakes, classes: Sequence[str]) -> str:
    rows = found.rows
    names = {name: index for index, name in enumerate(classes)}
    pairs = confused_pairs(rows)
    if not pairs:
        return ""
    listed = pairs[:MAX_PAIRS]
    linked = {pair for pair, _ in listed}
    matrix = ""
    if shows_linked_matrix(found, classes):
        matrix = _linked_matrix(rows, classes, names, linked)
    blocks = []
    for (true, predicted), members in listed:
        tiles = "".join(_tile(found, index) for index in members[:PER_PAIR])
        more = len(members) - PER_PAIR
        others = ""
        if more > 0:
            paths = "".join(f"<li>{_esc(rows[index]['path'])}</li>" for index in members[PER_PAIR:])
            others = f"<details><summary>{more} more</summary><ul>{paths}</ul></details>"
        blocks.append(
            f'<div class="pair" id="{_pair_id(true, predicted, names)}">'
            f"<h3>{_esc(true)} taken for {_esc(predicted)}: {len(members)}</h3>"
            f'<div class="gallery">{tiles}</div>{others}</div>'
        )
    left_out = len(pairs) - len(listed)
    tail = f'<p class="note">{left_out} rarer pairs left out.</p>' if left_out > 0 else ""
    return (
        '<section id="confused-pairs"><h2>Confusion matrix and confused pairs</h2>'
        '<p class="note">Rows are the true classes, columns the predicted ones (counts of the '
        "best model on the validation split, coloured by the share of the true class); a "
        "wrong cell links to its images.</p>"
        f'{matrix}<div class="pairs">{"".join(blocks)}</div>{tail}</section>'
    )


def _linked_matrix(
    rows: Sequence[dict[str, Any]],
    classes: Sequence[str],
    names: dict[str, int],
    linked: set[tuple[str, str]],
) -> str:
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for row in rows:
        if row["true"] in names and row["predicted"] in names:
            counts[names[row["true"]], names[row["predicted"]]] += 1
    totals = np.maximum(counts.sum(axis=1), 1)
    head = "".join(f'<th title="{_esc(name)}">{_esc(name[:8])}</th>' for name in classes)
    lines = []
    for true_index, true in enumerate(classes):
        cells = []
        for guess_index, guess in enumerate(classes):
            count = int(counts[true_index, guess_index])
            share = count / totals[true_index]
            kind = "hit" if true_index == guess_index else "miss"
            style = f' style="--share:{share:.3f}"' if count else ""
            text = str(count) if count else ""
            if count and kind == "miss" and (true, guess) in linked:
                text = f'<a href="#{_pair_id(true, guess, names)}">{count}</a>'
            cells.append(f'<td class="num {kind}"{style}>{text}</td>')
        lines.append(f'<tr><th title="{_esc(true)}">{_esc(true[:12])}</th>{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table class="confusion">'
        f"<thead><tr><th>true \\ predicted</th>{head}</tr></thead>"
        f"<tbody>{''.join(lines)}</tbody></table></div>"
    )


def _label_issues_section(found: Mistakes) -> str:
    issues = found.label_issues
    if found.label_problem:
        return (
            '<section id="label-issues"><h2>Likely mislabelled</h2>'
            f'<p class="note skipped">Not shown: {_esc(found.label_problem)}.</p></section>'
        )
    if not issues:
        return (
            '<section id="label-issues"><h2>Likely mislabelled</h2><p class="note">'
            + (
                "label_issues.csv lists no image."
                if issues is not None
                else "This run has no label_issues.csv: <code>taolu find-label-issues RUN</code> "
                "looks for images whose label models trained without them disagree with; "
                "then <code>taolu report RUN</code> shows them here."
            )
            + "</p></section>"
        )
    columns = list(issues[0])
    head = "".join(f"<th>{_esc(column)}</th>" for column in columns)
    cells = (
        "".join(f'<td class="value">{_esc(row.get(c, ""))}</td>' for c in columns) for row in issues
    )
    body = "".join(f"<tr>{line}</tr>" for line in cells)
    return (
        '<section id="label-issues"><h2>Likely mislabelled</h2>'
        f'<p class="note">The {len(issues)} most suspect images of label_issues.csv: nothing '
        "was moved or relabelled; check them and fix the labels you agree with.</p>"
        f'<div class="scroll"><table class="label-issues"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></section>"
    )


MISTAKES_CSS = """
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr));
           gap: 8px; margin: 8px 0; }
.tile { margin: 0; border: 3px solid #c81e1e; border-radius: 4px; padding: 4px;
        background: #fff; min-width: 0; font-size: 0.8em; }
.tile.right { border-color: #17803d; }
img.thumb { width: 100%; height: auto; image-rendering: pixelated; margin: 0 0 4px; }
div.thumb.none { color: #8a92a3; padding: 20px 0; text-align: center; }
.tile .path { display: block; color: #5b6475; overflow-wrap: anywhere; }
table.confusion td.num { min-width: 2em; text-align: center;
    background: color-mix(in srgb, #2f6db5 calc(var(--share, 0) * 100%), white); }
table.confusion td.miss { background: color-mix(in srgb, #c81e1e calc(var(--share, 0) * 160%),
    white); }
table.confusion a { color: inherit; font-weight: 700; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
         gap: 4px 16px; }
.pair { min-width: 0; }
.pair .gallery { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); }
.pair h3 { font-size: 1em; margin: 14px 0 4px; }
"""
