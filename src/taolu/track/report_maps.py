"""The report's "Where it looks" section: the top-loss validation images with the map of where
the best model looked for its prediction, each captioned with its path, from the file the
training routine saved (report/top_loss_maps.json, written by run/top_loss_maps.py)."""

from __future__ import annotations

import base64
import binascii
import html
import json
from pathlib import Path
from typing import Any

MAPS_FILE = "top_loss_maps.json"
MAX_BYTES = 16 * 1024 * 1024  # a handful of small PNGs: far less than this
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_STYLE = "width:192px;font-size:0.85em;overflow-wrap:anywhere"
GRID_STYLE = "display:flex;flex-wrap:wrap;gap:12px;margin:10px 0"


def where_it_looks_section(report_folder: Path) -> str:
    """The section's HTML: the overlays as PNG data URLs (the page stays one file), or a note
    saying why there are none."""
    try:
        maps, note = _read_maps(report_folder / MAPS_FILE)
    except (OSError, ValueError, KeyError, TypeError) as error:  # truncated or foreign file
        maps, note = [], f"{MAPS_FILE} could not be used: {error}"
    parts = ['<section id="where_it_looks">', "<h2>Where it looks</h2>"]
    if not maps:
        parts.append(f'<p class="note skipped">Not drawn: {html.escape(note)}.</p>')
        return "\n".join(parts + ["</section>"])
    parts.append(f'<div style="{GRID_STYLE}">')
    for entry in maps:
        caption = (
            f"<strong>{_esc(entry['true'])} &rarr; {_esc(entry['predicted'])}</strong> "
            f"({entry['probability']:.2f}), loss {entry['loss']:.2f} "
            f"<code>{_esc(entry['path'])}</code>"
        )
        parts.append(
            f'<div class="map" style="{FIGURE_STYLE}"><img src="data:image/png;base64,'
            f'{entry["png"]}" alt="where the model looked for {_esc(entry["predicted"])}">'
            f"{caption}</div>"
        )
    parts.append("</div>")
    parts.append(
        f'<p class="note">The {len(maps)} validation images with the highest loss: true '
        "&rarr; predicted class (probability). The colours show where the model looked for "
        "the class it predicted (LayerCAM at its last convolutional block): red most, blue "
        "least. <code>taolu predict RUN FILES --explain DIR</code> draws the same for any "
        "image.</p>"
    )
    return "\n".join(parts + ["</section>"])


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _read_maps(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The saved entries, each checked (its PNG decoded far enough to see it is one), or none
    and why."""
    if not path.is_file():
        return [], (
            f"there is no report/{MAPS_FILE} (the training routine writes it at the end of a "
            "finished run on files or a built-in data set)"
        )
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
    if "note" in saved:
        return [], str(saved["note"])
    entries = saved["images"]
    if not isinstance(entries, list):
        raise ValueError("'images' is not a list")
    for entry in entries:
        try:
            png = base64.b64decode(entry["png"], validate=True)
        except binascii.Error as error:
            raise ValueError(f"an image is not base64: {error}") from None
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError("an image is not a PNG")
        for key in ("probability", "loss"):
            if not isinstance(entry[key], (int, float)):
                raise ValueError(f"an image's {key} is not a number")
    return entries, "it holds no images"
