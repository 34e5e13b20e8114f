"""`predict --reject-below`: how much of a class the model never saw is answered "unknown",
and how many images of the known classes are lost to "unknown" on the way.

Trains taolu's default recipe on mnist5k's digits 0-8 (the 9s held out entirely), then
predicts the held-out 9s and the validation images of 0-8 with `reject_below="auto"` (the
confidence that keeps 95% of the run's right answers on its validation split) and a few fixed
thresholds, and prints, for each, the share of 9s rejected, the share of known images
rejected, and the accuracy on the known images that were answered.

    .venv/bin/python benchmarks/reject_unseen.py --epochs 6
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset

import taolu
from taolu.checkpoint import read_state
from taolu.data.embedded import load_mnist5k, stratified_split

HELD_OUT = 9


class Digits(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def shares(results: list[dict], labels: np.ndarray | None) -> tuple[float, float]:
    """(share answered unknown, accuracy of the answered ones; nan without labels)."""
    unknown = np.array([r["answer"] == "unknown" for r in results])
    if labels is None:
        return float(unknown.mean()), float("nan")
    answered = [
        (r["answer"], str(label))
        for r, label in zip(results, labels, strict=True)
        if r["answer"] != "unknown"
    ]
    accuracy = np.mean([a == b for a, b in answered]) if answered else float("nan")
    return float(unknown.mean()), float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    images, labels = load_mnist5k()
    known = labels != HELD_OUT
    known_images, known_labels = images[known], labels[known]
    train_index, val_index = stratified_split(torch.from_numpy(known_labels), 0.2)
    train_index, val_index = train_index.numpy(), val_index.numpy()
    with tempfile.TemporaryDirectory() as out:
        result = taolu.train(
            data=Digits(known_images[train_index], known_labels[train_index]),
            val_data=Digits(known_images[val_index], known_labels[val_index]),
            classes=[str(d) for d in range(9)],
            epochs=args.epochs,
            out=out,
            progress=False,
            verbose=False,
            report=False,
        )
        state = read_state(result.best_checkpoint)
        calibration = result.summary.get("calibration", {})
        before, after = calibration.get("ece_before", np.nan), calibration.get("ece_after", np.nan)
        print(
            f"digits 0-8 of mnist5k, {args.epochs} epochs: best val acc {result.best_val_acc:.4f}; "
            f"temperature {state.temperature:.3f}; ECE {before:.4f} -> {after:.4f}"
        )
        unseen = list(images[labels == HELD_OUT])
        seen = list(known_images[val_index])
        thresholds: list[float | str] = ["auto", 0.5, 0.7, 0.9, 0.99]
        print(
            f"{'reject below':>14}  {'9s rejected':>11}  {'known rejected':>14}  {'known acc':>9}"
        )
        for threshold in thresholds:
            if threshold == "auto" and state.reject_threshold is None:
                print(f"{'auto':>14}  the run stored no threshold")
                continue
            unseen_rejected, _ = shares(
                taolu.predict(result.run_dir, unseen, reject_below=threshold), None
            )
            known_rejected, accuracy = shares(
                taolu.predict(result.run_dir, seen, reject_below=threshold),
                known_labels[val_index],
            )
            shown = (
                f"auto ({state.reject_threshold:.3f})" if threshold == "auto" else f"{threshold:g}"
            )
            print(
                f"{shown:>14}  {unseen_rejected:>11.1%}  {known_rejected:>14.1%}  {accuracy:>9.4f}"
            )


if __name__ == "__main__":
    main()
