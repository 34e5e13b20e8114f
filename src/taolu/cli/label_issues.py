"""`taolu find-label-issues`: the images of a run whose given label its k-fold models most
confidently disagree with, written to RUN/label_issues.csv."""

from __future__ import annotations

import argparse
import json
import sys


def add_label_issues_command(commands: argparse._SubParsersAction) -> None:
    found = commands.add_parser(
        "find-label-issues",
        help="images whose label looks wrong, by k-fold confident learning\n"
        "  taolu find-label-issues runs/train --folds 4 --epochs 5",
        description="Pool the run's training and validation images, train FOLDS models with "
        "the run's own options (each on all folds but one, in a scratch folder of the run "
        "directory, removed after), score every image with the model that never saw it, and "
        "list the images whose given label the models confidently disagree with (confident "
        "learning: per-class thresholds, ranked by the given label's probability). Writes "
        "RUN/label_issues.csv (path,given,suggested,score); nothing is moved or relabelled.",
    )
    found.add_argument("run", metavar="RUN_DIR", help="a taolu run directory")
    found.add_argument(
        "--folds", type=int, default=4, metavar="K", help="fold models to train (default: 4)"
    )
    found.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs per fold model (default: the run's own)",
    )
    found.add_argument("--device", default=None, help="device (default: the run's own)")
    found.add_argument(
        "--top", type=int, default=20, metavar="N", help="rows printed (default: 20)"
    )
    found.add_argument("--json", action="store_true", help="print every row as JSON")
    found.set_defaults(handler=run_find_label_issues)


def run_find_label_issues(args: argparse.Namespace) -> int:
    from taolu.api import find_label_issues

    search = find_label_issues(
        args.run, folds=args.folds, epochs=args.epochs, device=args.device, verbose=not args.json
    )
    if args.json:
        sys.stdout.write(json.dumps(search.issues, indent=2, ensure_ascii=False) + "\n")
        return 0
    print(f"{len(search.issues)} of {search.samples} images look mislabelled -> {search.path}")
    if search.issues:
        print("most suspect first (score: the given label's out-of-sample probability):")
    for row in search.issues[: max(0, args.top)]:
        print(f"  {row['score']:.3f}  {row['given']} -> {row['suggested']}  {row['path']}")
    if len(search.issues) > args.top:
        print(f"  ... and {len(search.issues) - args.top} more in {search.path}")
    if search.report is not None:
        print(f"the list is in the run's report too: {search.report}")
    return 0
