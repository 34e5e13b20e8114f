"""`taolu tune`: the search's own flags, and every `taolu train` option as the fixed part of
each trial."""

from __future__ import annotations

import argparse

from taolu.cli.options import add_config_flags, given_options
from taolu.cli.train import add_option_layers
from taolu.config import FIELDS
from taolu.option_values import parse_set_items

# train's options a trial cannot take from the user: the study names its trials and folder.
NOT_TUNE_FLAGS = ("out", "name", "lr_find")

TUNE_EXAMPLES = """examples:
  taolu tune --data ~/photos --epochs 5 --trials 30       the default space, 30 trials
  taolu tune --data digits --epochs 3 --space space.yaml  your own space
  taolu tune --data ~/photos --trials 40 --jobs 2 --timeout 3600 --out runs/photos-tune

A space file maps options to a list of choices or a range, e.g.
  lr: {low: 0.001, high: 0.3, log: true}
  batch_size: [32, 64, 128]
  augment: [none, shift, shift-flip]
Run the same command again to go on with a stopped study (STUDY_DIR/study.db keeps it)."""


def add_tune_command(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune",
        help="search for better options with Optuna\n"
        "  taolu tune --data ~/photos --epochs 5 --trials 30",
        usage="%(prog)s [--data SET_OR_FOLDER] [--epochs N] [--space FILE.yaml] [--trials N] "
        "[--timeout SECONDS] [--jobs J] [--out STUDY_DIR] [OPTION ...]",
        epilog=TUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train trial after trial, each an ordinary run in STUDY_DIR/trial-NNN with "
        "options drawn from the search space (the train options given here are fixed), "
        "stop the bad ones after early epochs, and print the best as a taolu train command.",
    )
    tune.set_defaults(handler=run_tune)
    search = tune.add_argument_group("search options", "what is searched, how long, and where")
    search.add_argument(
        "--space",
        metavar="FILE.yaml",
        help="the search space; default: lr, weight decay, batch size, augment, mixup, label "
        "smoothing, optimizer and model, less the options given here",
    )
    search.add_argument(
        "--trials", type=int, default=20, metavar="N", help="trials in all (default: 20)"
    )
    search.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="start no trial after this many seconds (default: none)",
    )
    search.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="J",
        help="trials side by side, one process each, the CPU threads shared out (default: 1)",
    )
    search.add_argument(
        "--pruner",
        choices=("median", "hyperband", "none"),
        default="median",
        help="how bad trials are stopped after early epochs (default: median)",
    )
    search.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trial 0 trains the default recipe, to compare against (default: on)",
    )
    search.add_argument(
        "--out",
        metavar="STUDY_DIR",
        default="runs/tune",
        help="the study folder: study.db, trials.csv, trials.png and the trial runs "
        "(default: runs/tune)",
    )
    add_option_layers(tune)
    add_config_flags(tune, tuple(name for name in FIELDS if name not in NOT_TUNE_FLAGS))


def run_tune(args: argparse.Namespace) -> int:
    from taolu.tuning.study import tune

    tune(
        out=args.out,
        trials=args.trials,
        timeout=args.timeout,
        jobs=args.jobs,
        space=args.space,
        pruner=args.pruner,
        baseline=args.baseline,
        config=args.config,
        set_options=parse_set_items(args.set_items),
        **{key: value for key, value in given_options(args).items() if key != "out"},
    )
    return 0
