"""The end-of-run verdict: what the run's own numbers say went badly, and what to try next.
A healthy run gets an empty list."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Fewer validation images than this in some class, and one image moves that class's recall by
# 10 points or more: the accuracy it feeds is too coarse to compare epochs or runs.
MIN_VAL_PER_CLASS = 10
# The best accuracy must clear chance by this share of the way to 100% to count as learning.
ABOVE_CHANCE = 0.1
# A first epoch whose mean training loss exceeds this multiple of ln(classes) (the loss of a
# uniform guess) moved away from a guess instead of towards the labels: an unstable start.
UNSTABLE_LOSS_FACTOR = 2.0
# Training accuracy (on augmented images) this far above validation accuracy: memorising.
LARGE_GAP = 0.15
# Validation loss this share above its lowest, at the end, while training loss kept falling.
OVERFIT_RISE = 0.1


@dataclass(frozen=True)
class Finding:
    kind: str  # a short fixed id: chance, unstable_start, overfitting, gap, small_val, nan
    message: str  # what the numbers show
    advice: str  # the next thing to try, naming the flag

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def judge_run(
    history: Sequence[Mapping[str, Any]],
    *,
    classes: int,
    val_support: Mapping[str, int],
    best_val_acc: float,
    lr: float,
    recoveries: Sequence[Mapping[str, Any]] = (),
    pretrained: bool = False,
    lr_from_range_test: bool = False,
) -> list[Finding]:
    """What went badly in a run, from its per-epoch rows (train_loss, train_acc, val_loss,
    val_acc), its class count, the validation images per class and the lr it used (and
    whether --lr auto's range test chose it)."""
    if not history:
        return []
    findings: list[Finding] = []
    weights_hint = "" if pretrained else ", or start from pretrained --weights"
    if lr_from_range_test:
        lower_lr = f"a lower --lr (the range test chose {lr:.3g})"
    else:
        lower_lr = f"a lower --lr (it was {lr:.3g}) or --lr auto"
    chance = max(1.0 / classes, _majority_share(val_support))
    if best_val_acc < chance + ABOVE_CHANCE * (1 - chance):
        findings.append(
            Finding(
                "chance",
                f"the best validation accuracy {best_val_acc:.3f} is at chance level "
                f"({chance:.3f} for {classes} classes): the model learned nothing usable",
                f"{lower_lr}; check the labels match the images (taolu data preview)"
                f"{weights_hint}",
            )
        )
    first_loss = float(history[0].get("train_loss", math.nan))
    uniform = math.log(max(classes, 2))
    if not math.isfinite(first_loss) or first_loss > UNSTABLE_LOSS_FACTOR * uniform:
        findings.append(
            Finding(
                "unstable_start",
                f"the first epoch's training loss was {first_loss:.3g}, far above "
                f"{uniform:.2f} (a uniform guess over {classes} classes): an unstable start",
                f"{lower_lr}, or --warmup-epochs 1 with --scheduler cosine",
            )
        )
    findings += _overfitting(history, weights_hint)
    if recoveries:
        last = recoveries[-1]
        findings.append(
            Finding(
                "nan",
                f"the loss became NaN or infinite {len(recoveries)} time(s); taolu went back to "
                f"the last good weights and lowered the lr to {float(last['new_lr']):.3g}",
                f"train with --lr {float(last['new_lr']):.3g} or lower from the start",
            )
        )
    if val_support:
        fewest_class, fewest = min(val_support.items(), key=lambda item: item[1])
        if fewest < MIN_VAL_PER_CLASS:
            total = sum(val_support.values())
            findings.append(
                Finding(
                    "small_val",
                    f"the validation split is too small to trust: {total} images, only "
                    f"{fewest} of class {fewest_class!r} (one image moves its recall by "
                    f"{1 / max(fewest, 1):.0%})",
                    "hold out more with --val-fraction 0.3, or give a val/ folder with at "
                    f"least {MIN_VAL_PER_CLASS} images per class",
                )
            )
    return findings


def _majority_share(val_support: Mapping[str, int]) -> float:
    total = sum(val_support.values())
    return max(val_support.values()) / total if total else 0.0


def _overfitting(history: Sequence[Mapping[str, Any]], weights_hint: str) -> list[Finding]:
    """Validation loss rising from its low while training loss falls, or a wide gap."""
    findings = []
    val_losses = [float(row.get("val_loss", math.nan)) for row in history]
    finite = [(loss, index) for index, loss in enumerate(val_losses) if math.isfinite(loss)]
    advice = (
        "stronger augmentation (--transforms photos, --mixup 0.2), more data, fewer --epochs "
        f"or --patience 3{weights_hint}; best.pt already holds the best epoch"
    )
    if len(finite) >= 3:
        low, low_index = min(finite)
        last_index = len(history) - 1
        train_low = float(history[low_index].get("train_loss", math.nan))
        train_last = float(history[last_index].get("train_loss", math.nan))
        rose = val_losses[last_index] > low * (1 + OVERFIT_RISE) + 1e-3
        if low_index < last_index - 1 and rose and train_last < train_low:
            findings.append(
                Finding(
                    "overfitting",
                    f"validation loss rose from {low:.3f} (epoch {low_index + 1}) to "
                    f"{val_losses[last_index]:.3f} while training loss fell from "
                    f"{train_low:.3f} to {train_last:.3f}: the model is overfitting",
                    advice,
                )
            )
    last = history[-1]
    gap = float(last.get("train_acc", math.nan)) - float(last.get("val_acc", math.nan))
    if math.isfinite(gap) and gap > LARGE_GAP:
        findings.append(
            Finding(
                "gap",
                f"training accuracy {float(last['train_acc']):.3f} is far above validation "
                f"accuracy {float(last['val_acc']):.3f}: the model memorises its training "
                "images",
                advice,
            )
        )
    return findings


def render(findings: Sequence[Finding]) -> list[str]:
    """The verdict as the warnings printed at the end of a run (none for a healthy run)."""
    return [f"{finding.message}. Try: {finding.advice}" for finding in findings]
