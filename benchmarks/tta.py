"""Test-time augmentation: a run's validation accuracy and loss with and without `tta` (the
flips and shifts the run trained with, averaged), side by side on the same checkpoint.

    .venv/bin/python benchmarks/tta.py --data mnist5k --epochs 6
    .venv/bin/python benchmarks/tta.py --data ~/photos --image-size 64 --epochs 10
"""

from __future__ import annotations

import argparse
import tempfile
import time

import taolu
from taolu.checkpoint import read_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        run = taolu.train(
            data=args.data,
            epochs=args.epochs,
            image_size=args.image_size,
            out=out,
            progress=False,
            verbose=False,
            report=False,
        )
        views = read_state(run.best_checkpoint).augmentation
        print(f"{args.data}, {args.epochs} epochs; the run's augmentation: {views}")
        for tta in (False, True):
            started = time.perf_counter()
            result = taolu.evaluate(run.run_dir, tta=tta)
            seconds = time.perf_counter() - started
            print(
                f"tta={tta!s:5}  val acc {result['acc']:.4f}  val loss {result['loss']:.4f}  "
                f"{result['samples']} images in {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
