"""`taolu predict`'s results as it prints them: lines of text, one JSON array, or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

STYLES = ("text", "json", "csv")
UNKNOWN = "unknown"  # the answer below a rejection threshold (inference.answered)
CSV_HEADER = ["path", "rank", "class", "probability", "error"]


def render_predictions(results: Sequence[dict[str, Any]], style: str = "text") -> str:
    """Results of `taolu.predict` as printed: `text`, a line per input ("PATH: class p, ...",
    "PATH: unknown (class p, ...)" below a rejection threshold, or "PATH: error: why"); `json`,
    one JSON array holding one object per input; `csv`, a row per prediction (rank 1..K) and
    a row with only path and error for an input that failed, with an `answer` column when
    predict was asked to reject (--reject-below) and an `explanation` column (the overlay's
    path) with --explain."""
    if style == "json":
        return json.dumps(list(results), indent=2, ensure_ascii=False) + "\n"
    if style == "csv":
        return _csv(results)
    if style != "text":
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    lines = []
    for result in results:
        path = result["path"]
        if "error" in result:
            # A file's error already starts with its path (the API's message stands alone).
            lines.append(f"{path}: error: {result['error'].removeprefix(f'{path}: ')}")
        else:
            shown = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in result["predictions"])
            unknown = result.get("answer") == UNKNOWN
            line = f"{path}: {UNKNOWN} ({shown})" if unknown else f"{path}: {shown}"
            where = f"  [map: {result['explanation']}]" if "explanation" in result else ""
            lines.append(line + where)
    return "".join(line + "\n" for line in lines)


def _csv(results: Sequence[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    answers = any("answer" in result for result in results)
    maps = any("explanation" in result for result in results)
    writer.writerow(CSV_HEADER + ["answer"] * answers + ["explanation"] * maps)
    for result in results:
        extra = [result.get("answer", "")] * answers + [result.get("explanation", "")] * maps
        if "error" in result:
            writer.writerow([result["path"], "", "", "", result["error"], *extra])
        for rank, p in enumerate(result.get("predictions", []), start=1):
            row = [result["path"], rank, p["class"], f"{p['probability']:.6f}", ""]
            writer.writerow(row + extra)
    return text.getvalue()
