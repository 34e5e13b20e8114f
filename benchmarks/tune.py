"""What an N-trial `taolu tune` search finds on a small folder, against the default recipe.

The folder: the first PER_CLASS images of each class of mnist5k's training part (exported as
PNG files), trained for a few short epochs. The search picks on its own validation split, so
its best value there flatters it; the comparison that counts retrains the default recipe and
the best options with other seeds and measures both on mnist5k's held-out 1,000 images.
Run:  .venv/bin/python benchmarks/tune.py [--trials 30] [--epochs 3] [--per-class 60]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def small_folder(exported: Path, target: Path, per_class: int) -> None:
    """TARGET/<class>/ with the first `per_class` training images of each class."""
    for class_dir in sorted((exported / "train").iterdir()):
        (target / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, target / class_dir.name / image.name)


def run(command: list[str]) -> tuple[float, str]:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


def held_out_acc(train_args: list[str], out: Path, name: str, exported: Path) -> float:
    """Train `taolu train ARGS` into OUT/NAME; its best checkpoint's accuracy on the 1,000
    held-out images (exported/val)."""
    import taolu

    run([sys.executable, "-m", "taolu", "train", *train_args, "--no-progress", "--no-report",
         "--out", str(out), "--name", name])  # fmt: skip
    return taolu.evaluate(out / name, data=exported)["acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=2, help="retrains of each, other seeds")
    parser.add_argument("--model", default="fastcnn", help="fixed, to keep trials short")
    args = parser.parse_args()

    from taolu.data.export import export_dataset

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        exported, folder, study = root / "mnist5k", root / "small", root / "study"
        export_dataset("mnist5k", str(exported))
        small_folder(exported, folder, args.per_class)
        fixed = ["--data", str(folder), "--epochs", str(args.epochs), "--model", args.model]
        tune = [sys.executable, "-m", "taolu", "tune", *fixed, "--trials", str(args.trials),
                "--jobs", str(args.jobs), "--out", str(study)]  # fmt: skip
        wall, printed = run(tune)
        print(printed)
        best = shlex.split((study / "best_command.txt").read_text())[2:]  # after `taolu train`
        rows = (study / "trials.csv").read_text().splitlines()[1:]
        states = [row.split(",")[1] for row in rows]
        baseline_val = float(rows[0].split(",")[2])
        best_val = max(float(row.split(",")[2]) for row in rows if row.split(",")[1] == "complete")

        seeds = range(1, args.seeds + 1)
        default = [
            held_out_acc([*fixed, "--seed", str(s)], root / "runs", f"default{s}", exported)
            for s in seeds
        ]
        tuned = [
            held_out_acc([*best, "--seed", str(s)], root / "runs", f"tuned{s}", exported)
            for s in seeds
        ]
    print(
        f"search: {len(rows)} trials ({states.count('complete')} complete, "
        f"{states.count('pruned')} pruned, {states.count('fail')} failed) in {wall:.0f} s on "
        f"{10 * args.per_class} images x {args.epochs} epochs\n"
        f"validation split (what the search picked on): default recipe {baseline_val:.4f}, "
        f"best trial {best_val:.4f}\n"
        f"held-out 1,000 images, mean of seeds {list(seeds)}: default recipe "
        f"{statistics.mean(default):.4f} {[round(a, 4) for a in default]}, tuned "
        f"{statistics.mean(tuned):.4f} {[round(a, 4) for a in tuned]}; error rate ratio "
        f"tuned/default {(1 - statistics.mean(tuned)) / (1 - statistics.mean(default)):.2f}\n"
        f"best options: taolu train {shlex.join(best)}"
    )


if __name__ == "__main__":
    main()
