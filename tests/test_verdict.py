"""The end-of-run verdict: each finding from the run's own numbers, and silence when healthy."""

from __future__ import annotations

import math

from taolu.run.verdict import judge_run, render


def rows(*epochs: tuple[float, float, float, float]) -> list[dict[str, float]]:
    """(train_loss, train_acc, val_loss, val_acc) per epoch."""
    return [
        {"epoch": number, "train_loss": tl, "train_acc": ta, "val_loss": vl, "val_acc": va}
        for number, (tl, ta, vl, va) in enumerate(epochs, start=1)
    ]


BALANCED = {str(digit): 100 for digit in range(10)}
HEALTHY = rows((0.9, 0.80, 0.5, 0.90), (0.5, 0.90, 0.35, 0.94), (0.4, 0.93, 0.3, 0.95))


def kinds(**overrides) -> list[str]:
    arguments = dict(history=HEALTHY, classes=10, val_support=BALANCED, best_val_acc=0.95, lr=0.05)
    arguments.update(overrides)
    return [finding.kind for finding in judge_run(**arguments)]


def test_a_healthy_run_says_nothing():
    assert kinds() == []
    assert (
        render(judge_run(HEALTHY, classes=10, val_support=BALANCED, best_val_acc=0.95, lr=0.05))
        == []
    )


def test_chance_level_accuracy_is_named_with_what_to_try():
    history = rows((2.3, 0.1, 2.3, 0.1), (2.3, 0.11, 2.3, 0.1))
    findings = judge_run(history, classes=10, val_support=BALANCED, best_val_acc=0.11, lr=0.05)
    chance = [finding for finding in findings if finding.kind == "chance"]
    assert chance and "0.110" in chance[0].message and "--lr" in chance[0].advice
    assert "--weights" in chance[0].advice
    # pretrained runs are not told to use pretrained weights
    again = judge_run(
        history, classes=10, val_support=BALANCED, best_val_acc=0.11, lr=0.05, pretrained=True
    )
    assert "--weights" not in [f for f in again if f.kind == "chance"][0].advice


def test_chance_accounts_for_the_majority_class():
    # 90% of the validation images are one class: 0.9 accuracy is what guessing it gives
    support = {"a": 90, "b": 10}
    assert "chance" in kinds(classes=2, val_support=support, best_val_acc=0.9)
    assert "chance" not in kinds(classes=2, val_support=support, best_val_acc=0.97)


def test_an_unstable_first_epoch_is_named():
    history = rows((14.4, 0.3, 1.0, 0.4), (1.0, 0.5, 0.9, 0.6), (0.8, 0.6, 0.8, 0.65))
    assert "unstable_start" in kinds(
        history=history, classes=3, val_support={"a": 20, "b": 20, "c": 20}, best_val_acc=0.65
    )
    nan_first = rows((math.nan, 0.3, 1.0, 0.4), (1.0, 0.5, 0.9, 0.6))
    assert "unstable_start" in kinds(history=nan_first, best_val_acc=0.6)


def test_overfitting_and_the_gap_are_named():
    history = rows(
        (1.0, 0.7, 0.6, 0.80),
        (0.5, 0.85, 0.5, 0.85),
        (0.3, 0.92, 0.55, 0.85),
        (0.15, 0.97, 0.65, 0.84),
        (0.05, 0.99, 0.8, 0.83),
    )
    found = kinds(history=history, best_val_acc=0.85)
    assert "overfitting" in found and "gap" in found
    # validation loss that wobbles but does not climb is not overfitting
    steady = rows(
        (1.0, 0.7, 0.6, 0.8),
        (0.5, 0.85, 0.5, 0.85),
        (0.45, 0.86, 0.52, 0.85),
        (0.4, 0.87, 0.5, 0.86),
    )
    assert kinds(history=steady, best_val_acc=0.86) == []


def test_a_tiny_validation_split_is_named_with_the_fix():
    findings = judge_run(
        HEALTHY, classes=3, val_support={"ant": 4, "bee": 12, "cat": 12}, best_val_acc=0.95, lr=0.05
    )
    small = [finding for finding in findings if finding.kind == "small_val"]
    assert small and "'ant'" in small[0].message and "--val-fraction" in small[0].advice


def test_nan_recoveries_are_reported_with_the_lr_they_ended_at():
    recoveries = [{"epoch": 2, "step": 40, "old_lr": 0.05, "new_lr": 0.0125}]
    findings = judge_run(
        HEALTHY, classes=10, val_support=BALANCED, best_val_acc=0.95, lr=0.05, recoveries=recoveries
    )
    assert [f.kind for f in findings] == ["nan"] and "0.0125" in findings[0].advice
    assert render(findings) == [f"{findings[0].message}. Try: {findings[0].advice}"]
