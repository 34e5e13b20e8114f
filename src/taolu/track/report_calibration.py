"""The report's reliability diagram: how often the model is right at each level of
confidence, after the temperature scaling the run fitted (summary.json's "calibration")."""

from __future__ import annotations

from typing import Any

from taolu.track.report_files import RunFiles


def calibration_of(files: RunFiles) -> dict[str, Any] | None:
    """summary.json's calibration, when it holds a usable reliability table."""
    calibration = (files.summary or {}).get("calibration")
    if not isinstance(calibration, dict):
        return None
    rows = calibration.get("reliability")
    usable = isinstance(rows, list) and all(
        isinstance(row, list) and len(row) == 3 and all(isinstance(v, (int, float)) for v in row)
        for row in rows
    )
    return calibration if usable and rows else None


def draw_reliability(figure, calibration: dict[str, Any]) -> str:
    """Bars of accuracy at each bin's mean confidence against the diagonal a perfectly
    calibrated model would follow; returns the caption."""
    rows = calibration["reliability"]
    confidence = [row[0] for row in rows]
    accuracy = [row[1] for row in rows]
    counts = [row[2] for row in rows]
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    axes.bar(confidence, accuracy, width=0.05, color="tab:blue", alpha=0.8, label="accuracy")
    for x, y, count in zip(confidence, accuracy, counts, strict=True):
        axes.annotate(str(count), (x, y), ha="center", va="bottom", fontsize=8)
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.08)
    axes.set_xlabel("confidence (top-class probability, after temperature scaling)")
    axes.set_ylabel("accuracy")
    axes.set_title("Reliability on the validation split")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left")
    temperature = float(calibration.get("temperature", 1.0))
    before = float(calibration.get("ece_before", float("nan")))
    after = float(calibration.get("ece_after", float("nan")))
    threshold = calibration.get("reject_threshold")
    reject = (
        f" predict --reject-below auto answers unknown below {float(threshold):.3f}: on the "
        f"validation split that is {float(calibration.get('rejected_share', 0)):.1%} of the "
        f"images, and the answers still given are right "
        f"{float(calibration.get('answered_accuracy', 0)):.1%} of the time."
        if isinstance(threshold, (int, float))
        else ""
    )
    return (
        f"Temperature {temperature:.3f}, fitted on {calibration.get('samples', '?')} validation "
        f"images: expected calibration error {before:.4f} before, {after:.4f} after. The numbers "
        f"on the bars are how many images each bin holds.{reject}"
    )
