"""How long `taolu train` with no arguments takes, start-up included, and what it reaches.

Targets (issue 2): under 60 s wall on 2 CPU cores, >= 98% validation accuracy on mnist5k.
Run:  .venv/bin/python benchmarks/default_recipe.py [--repeats 3]
Each repeat is a fresh `taolu train` process in a temporary folder, timed from launch to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 60.0
TARGET_ACC = 0.98


def one_run() -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "taolu", "train", "--no-progress"],
            cwd=folder,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        summary = json.loads((Path(folder) / "runs" / "train" / "summary.json").read_text())
    return wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    walls, accs = [], []
    for repeat in range(args.repeats):
        wall, summary = one_run()
        walls.append(wall)
        accs.append(summary["best_val_acc"])
        print(
            f"run {repeat + 1}: wall {wall:.1f} s (training {summary['train_seconds']:.1f} s, "
            f"{summary['images_per_second']:,.0f} img/s), best val acc "
            f"{summary['best_val_acc']:.4f}, final {summary['final_val_acc']:.4f}, "
            f"{summary['device']} {summary['precision']}"
        )
    wall, acc = statistics.median(walls), min(accs)
    print(
        f"default recipe on {os.cpu_count()} cores: median wall {wall:.1f} s = "
        f"{wall / TARGET_SECONDS:.2f}x of the {TARGET_SECONDS:.0f} s budget; "
        f"worst best-val-acc {acc:.4f} (target >= {TARGET_ACC})"
    )


if __name__ == "__main__":
    main()
