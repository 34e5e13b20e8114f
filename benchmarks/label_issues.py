"""`taolu find-label-issues` on known noise: how many of the labels flipped on purpose it finds,
and how many of its flags are right.

Writes mnist5k's 5,000 digits as PNG files with a CSV list whose labels are flipped for a
share of them (5% by default, each to another digit drawn at random, seeded), trains a run on
that list, then runs the k-fold label search on the run and prints the precision and recall
of the flagged set and the precision in the top N (N = the number flipped). For contrast, the
same confident-learning scoring on in-sample probabilities (the run's own model, which trained
on most of those labels) shows what k-fold buys: a memorised label hides itself.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_issues.py --epochs 6 --folds 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import taolu
from taolu.data.embedded import load_mnist5k
from taolu.label_issues import find_label_issues


def write_noisy_list(root: Path, share: float, seed: int) -> tuple[Path, set[int], np.ndarray]:
    """PNG files and a CSV list with `share` of the labels flipped: (CSV, flipped rows, the
    labels as listed)."""
    images, labels = load_mnist5k()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), size=int(round(share * len(labels))), replace=False)
    listed = labels.copy()
    listed[flipped] = (labels[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    (root / "images").mkdir()
    lines = ["path,label"]
    for index, image in enumerate(images):
        name = f"images/{index:04d}.png"
        Image.fromarray(image).save(root / name)
        lines.append(f"{name},{listed[index]}")
    csv_path = root / "noisy.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, set(flipped.tolist()), listed


def scores(flagged: list[int], flipped: set[int]) -> tuple[float, float, float]:
    """(precision, recall, precision in the top N) of a ranked list of flagged rows."""
    hits = [index in flipped for index in flagged]
    precision = sum(hits) / len(hits) if hits else float("nan")
    recall = sum(hits) / len(flipped)
    top = sum(hits[: len(flipped)]) / len(flipped)
    return precision, recall, top


def in_sample(run_dir: Path, root: Path, listed: np.ndarray) -> list[int]:
    """Confident learning on the run's own model's probabilities for every image (most of
    which it trained on): the flagged rows, most suspect first."""
    files = [root / "images" / f"{index:04d}.png" for index in range(len(listed))]
    results = taolu.predict(run_dir, files, topk=10, batch_size=256)
    probabilities = torch.zeros(len(files), 10)
    for row, result in enumerate(results):
        for guess in result["predictions"]:
            probabilities[row, int(guess["class"])] = guess["probability"]
    found = find_label_issues(probabilities, torch.from_numpy(listed).long())
    return [issue.index for issue in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the run and each fold")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        csv_path, flipped, listed = write_noisy_list(root, args.noise, args.seed)
        started = time.perf_counter()
        # Digits must not be mirrored; a CSV list of files is taken for photos.
        run = taolu.train(
            data=str(csv_path),
            epochs=args.epochs,
            augment="shift",
            out=str(root / "runs"),
            verbose=False,
            progress=False,
            report=False,
        )
        trained = time.perf_counter() - started
        search = taolu.find_label_issues(run.run_dir, folds=args.folds, epochs=args.epochs)
        searched = time.perf_counter() - started - trained
        flagged = [int(Path(row["path"]).stem) for row in search.issues]
        baseline = in_sample(run.run_dir, root, listed)
    print(
        f"\nmnist5k, {len(flipped)} of {len(listed)} labels flipped (seed {args.seed}); "
        f"run {args.epochs} epochs (best val acc {run.best_val_acc:.4f}, on noisy labels), "
        f"{args.folds} folds of {args.epochs} epochs"
    )
    print(f"{'scored on':<32} {'flagged':>8} {'precision':>10} {'recall':>8} {'top-N prec':>11}")
    for name, rows in (
        ("k-fold (find-label-issues)", flagged),
        ("in-sample (the run's model)", baseline),
    ):
        precision, recall, top = scores(rows, flipped)
        print(f"{name:<32} {len(rows):>8} {precision:>10.3f} {recall:>8.3f} {top:>11.3f}")
    accuracy = ", ".join(f"{value:.3f}" for value in search.fold_accuracy)
    print(f"fold accuracy on held-out (noisy) labels: {accuracy}")
    print(f"time: run {trained:.0f} s, label search {searched:.0f} s")


if __name__ == "__main__":
    main()
