"""Likely mislabelled images by confident learning (Northcutt, Jiang and Chuang, JAIR 2021),
from out-of-sample probabilities: the scoring, the folds it is measured on, and
label_issues.csv (written by `taolu find-label-issues`, read by the report)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taolu.atomic_file import write_atomic
from taolu.errors import DataError
from taolu.record_csv import read_record_csv

COLUMNS = ("path", "given", "suggested", "score")


@dataclass(frozen=True)
class LabelIssue:
    """One sample whose given label the model confidently disagrees with."""

    index: int  # row of the probability matrix
    given: int
    suggested: int  # the class the model predicts instead
    score: float  # out-of-sample probability of the given label: lower, more suspect
    margin: float  # given label's probability minus the best other class's (-1..1)


def class_thresholds(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """t_j, the mean probability of class j over the samples labelled j (the paper's per-class
    threshold: a class the model is generally unsure of needs less to be counted). A class
    with no samples gets 1.0 (nothing is counted in it, short of certainty)."""
    classes = probabilities.shape[1]
    sums = torch.zeros(classes, dtype=torch.float64).index_add_(
        0, labels, probabilities.gather(1, labels.view(-1, 1)).flatten().double()
    )
    counts = torch.bincount(labels, minlength=classes).double()
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.ones_like(sums)).float()


def confident_classes(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each sample, the class it is confidently counted in (the confident joint's column):
    of the classes k with p_k >= t_k, the most probable; -1 where there is none."""
    above = probabilities >= thresholds.view(1, -1)
    masked = torch.where(above, probabilities, torch.full_like(probabilities, -1.0))
    best = masked.argmax(dim=1)
    return torch.where(above.any(dim=1), best, torch.full_like(best, -1))


def confident_joint(
    probabilities: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """C[i][j]: how many samples labelled i are confidently counted in class j. Its
    off-diagonal share estimates the noise rate."""
    classes = probabilities.shape[1]
    counted = confident_classes(probabilities, thresholds)
    kept = counted >= 0
    joint = torch.zeros(classes, classes, dtype=torch.long)
    joint.index_put_((labels[kept], counted[kept]), torch.ones_like(labels[kept]), accumulate=True)
    return joint


def calibrated_joint(joint: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The confident joint with each row scaled to the number of samples given that label
    (the paper's calibration): the thresholds leave many samples uncounted, and this puts
    them back in proportion, so an off-diagonal cell estimates how many labels i are really
    j."""
    given = torch.bincount(labels, minlength=joint.shape[0]).double()
    counted = joint.sum(dim=1).double()
    scale = torch.where(counted > 0, given / counted.clamp(min=1), torch.zeros_like(given))
    return joint.double() * scale.view(-1, 1)


def find_label_issues(probabilities: torch.Tensor, labels: torch.Tensor) -> list[LabelIssue]:
    """Confident learning's prune-by-noise-rate (the paper's PBNR, cleanlab's default): for
    each pair of a given label i and another class j, the calibrated confident joint
    estimates how many samples labelled i are really j; that many of the samples labelled i
    with the largest margin p_j - p_i are flagged, unless the model still ranks their given
    label first. The suggested label is the model's prediction. Most suspect first: by
    self-confidence (the given label's probability, the paper's best ranking), ties by the
    normalised margin. `probabilities` (N, classes) must be out-of-sample: a model that
    memorised a label gives it back."""
    probabilities, labels = probabilities.float(), labels.long()
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities {tuple(probabilities.shape)} for {len(labels)} labels")
    thresholds = class_thresholds(probabilities, labels)
    estimated = calibrated_joint(confident_joint(probabilities, labels, thresholds), labels)
    predicted = probabilities.argmax(dim=1)
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for given in range(probabilities.shape[1]):
        members = (labels == given).nonzero().flatten()
        for other in range(probabilities.shape[1]):
            count = min(int(round(float(estimated[given, other]))), len(members))
            if other == given or count == 0:
                continue
            margin = probabilities[members, other] - probabilities[members, given]
            flagged[members[margin.topk(count).indices]] = True
    flagged &= predicted != labels
    given_probability = probabilities.gather(1, labels.view(-1, 1)).flatten()
    others = probabilities.scatter(1, labels.view(-1, 1), -1.0).max(dim=1).values
    issues = [
        LabelIssue(
            index=index,
            given=int(labels[index]),
            suggested=int(predicted[index]),
            score=float(given_probability[index]),
            margin=float(given_probability[index] - others[index]),
        )
        for index in flagged.nonzero().flatten().tolist()
    ]
    return sorted(issues, key=lambda issue: (issue.score, issue.margin, issue.index))


def assign_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Each sample's fold 0..folds-1, stratified: every class shuffled with `seed` and dealt
    round the folds, so each fold holds each class in proportion."""
    if folds < 2:
        raise ValueError("folds must be at least 2")
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    start = 0  # the next class starts where the last left off, so the folds stay even
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = (torch.arange(len(members)) + start) % folds
        start += len(members)
    return fold


def write_label_issues(
    path: Path, issues: Sequence[LabelIssue], names: Sequence[str], classes: Sequence[str]
) -> None:
    """label_issues.csv, most suspect first: each sample's path (or Dataset index), its given
    label, the suggested label and the score (the given label's out-of-sample probability)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for issue in issues:
        writer.writerow(
            [
                names[issue.index],
                classes[issue.given],
                classes[issue.suggested],
                f"{issue.score:.6f}",
            ]
        )
    write_atomic(path, text.getvalue().encode("utf-8"))


def read_label_issues(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a label_issues.csv (score as a float); a DataError naming the file when it
    is missing or not what taolu writes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: not found; `taolu find-label-issues RUN` writes it")
    return read_record_csv(path, "label_issues.csv", COLUMNS, ("score",))
