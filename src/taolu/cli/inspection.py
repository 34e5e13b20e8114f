"""`taolu inspect`: a run's worst validation mistakes and the classes it confuses, with paths."""

from __future__ import annotations

import argparse
import sys


def add_inspect_command(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="a run's worst mistakes and confused classes, by file\n  taolu inspect runs/train",
        description="Read RUN/val_predictions.csv (the best model on every validation image, "
        "written at the end of training) and print the images with the highest loss and, for "
        "each pair of classes the model confuses, how many and which images.",
    )
    inspect.add_argument("run", metavar="RUN_DIR", help="a taolu run directory")
    inspect.add_argument(
        "--top", type=int, default=20, metavar="N", help="top losses shown (default: 20)"
    )
    inspect.add_argument("--json", action="store_true", help="print everything as JSON")
    inspect.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from taolu.api import inspect
    from taolu.inspection import render_inspection

    found = inspect(args.run, top=max(1, args.top))
    sys.stdout.write(render_inspection(found, "json" if args.json else "text"))
    return 0
