"""How long the `taolu` commands take to start, against importing torch and torchvision.

Targets (issue 14), each a difference measured in this one run:
  taolu eval RUN, taolu predict RUN IMAGE, taolu models, taolu models show NAME
      add <= 1.5 s to `python -c "import torch, torchvision"`;
  the default `taolu train` spends <= 4 s outside its training loop in all: the process's
      wall time from launch to exit, less the loop's own clock (summary.json's train_seconds,
      which runs from the first epoch's first step to the last epoch's checkpoint).
Run:  .venv/bin/python benchmarks/startup.py [--repeats 3]
Each command is a fresh process, timed from launch to exit; the baseline and the short
commands take the median of --repeats runs, interleaved so that a busy machine slows all
of them alike. The default train runs once (about 30 s); its run is what eval and predict use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_ADDED_SECONDS = 1.5
TARGET_TRAIN_OUTSIDE_SECONDS = 4.0
BASELINE = "import torch, torchvision"


def timed(command: list[str], folder: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds from launch to exit of `python COMMAND...` in
    `folder`; a failure stops here. On a shared machine the CPU time is the steadier one."""
    used_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *command], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr.decode()[-2000:]}")
    cpu = used.ru_utime - used_before.ru_utime + used.ru_stime - used_before.ru_stime
    return wall, cpu


def time_default_train(folder: Path, run: Path) -> dict[str, float]:
    """The default `taolu train`, timed from launch to exit, and where its time went, from
    the run's own records: summary.json's train_seconds (the loop's clock) and wall_seconds
    (from run_training's start to the summary), and the summary file's own time of writing."""
    launched = time.time()
    wall, _ = timed(["-m", "taolu", "train", "--no-progress"], folder)
    exited = launched + wall
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text())
    written = summary_path.stat().st_mtime
    return {
        "wall": wall,
        "loop": summary["train_seconds"],
        "start-up (imports, options)": written - summary["wall_seconds"] - launched,
        "setup (data, model, optimizer, logs)": summary["wall_seconds"] - summary["train_seconds"],
        "after the loop (report, exit)": exited - written,
    }


def write_image(path: Path) -> None:
    """A 28x28 gray PNG (a white stroke on black, like the MNIST digits)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(14, 4), (14, 24)], fill=255, width=3)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet18", help="NAME for `taolu models show`")
    parser.add_argument(
        "--run",
        type=Path,
        help="time eval and predict on this run instead, and skip the default train",
    )
    args = parser.parse_args()
    train = None
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        run = args.run.resolve() if args.run else folder / "runs" / "train"
        if args.run is None:
            train = time_default_train(folder, run)
        image = folder / "digit.png"
        write_image(image)
        commands = {
            "baseline": ["-c", BASELINE],
            "taolu eval RUN": ["-m", "taolu", "eval", str(run)],
            "taolu predict RUN IMAGE": ["-m", "taolu", "predict", str(run), str(image)],
            "taolu models": ["-m", "taolu", "models"],
            f"taolu models show {args.model}": ["-m", "taolu", "models", "show", args.model],
        }
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
        for _ in range(args.repeats):
            for label, command in commands.items():
                times[label].append(timed(command, folder))
    wall = {label: statistics.median(t[0] for t in pairs) for label, pairs in times.items()}
    cpu = {label: statistics.median(t[1] for t in pairs) for label, pairs in times.items()}
    print(
        f"{os.cpu_count()} cores, medians of {args.repeats}; python -c {BASELINE!r}: "
        f"{wall['baseline']:.2f} s wall, {cpu['baseline']:.2f} s CPU"
    )
    print(f"{'command':<30} {'wall':>7} {'added':>7} {'CPU':>7} {'added':>7}  target (wall)")
    for label in list(commands)[1:]:
        added = wall[label] - wall["baseline"]
        verdict = "ok" if added <= TARGET_ADDED_SECONDS else "MISSED"
        print(
            f"{label:<30} {wall[label]:>6.2f}s {added:>+6.2f}s {cpu[label]:>6.2f}s "
            f"{cpu[label] - cpu['baseline']:>+6.2f}s  <= {TARGET_ADDED_SECONDS} s {verdict}"
        )
    if train is not None:
        outside = train["wall"] - train["loop"]
        verdict = "ok" if outside <= TARGET_TRAIN_OUTSIDE_SECONDS else "MISSED"
        print(
            f"{'taolu train (default)':<30} {train['wall']:>6.2f}s, of which {outside:.2f} s "
            f"outside the training loop ({train['loop']:.2f} s in it)  "
            f"<= {TARGET_TRAIN_OUTSIDE_SECONDS} s {verdict}"
        )
        for phase in list(train)[2:]:
            print(f"  {phase:<40} {train[phase]:>6.2f}s")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
