"""The `taolu` command: argv -> options -> a call into the Python API. No training logic here.

One module per group of commands; each adds its parsers and sets the function that runs them.
"""

from __future__ import annotations

import argparse
import sys

from taolu.cli.console import plain_message, show_warnings_plainly
from taolu.cli.data import add_data_commands
from taolu.cli.evaluation import add_eval_command, add_predict_command
from taolu.cli.models import add_models_command
from taolu.cli.outcome import add_outcome_commands
from taolu.cli.train import add_train_command
from taolu.errors import TaoluError, TrainingInterrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taolu",
        description="taolu (套路): the complete PyTorch training routine for image classifiers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_train_command(commands)
    add_eval_command(commands)
    add_predict_command(commands)
    add_data_commands(commands)
    add_outcome_commands(commands)
    add_models_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    show_warnings_plainly()
    try:
        return args.handler(args)
    except TrainingInterrupted as stopped:  # SIGTERM / Ctrl-C: saved, and how to go on
        print(f"taolu: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except TaoluError as error:
        print(f"taolu: error: {plain_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taolu: interrupted", file=sys.stderr)
        return 130
