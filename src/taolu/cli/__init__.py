"""The `taolu` command: argv -> options -> a call into the Python API. No training logic here.

One module per group of commands; each adds its parsers (with one example each, shown by a
bare `taolu`) and sets the function that runs them as `handler`.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import NoReturn

from taolu.cli.console import plain_message, show_warnings_plainly
from taolu.cli.data import add_data_commands
from taolu.cli.eject import add_eject_command
from taolu.cli.evaluation import add_eval_command, add_predict_command
from taolu.cli.inspection import add_inspect_command
from taolu.cli.label_issues import add_label_issues_command
from taolu.cli.models import add_models_command
from taolu.cli.outcome import add_outcome_commands
from taolu.cli.parsing import CommandParser
from taolu.cli.train import add_train_command
from taolu.cli.tune import add_tune_command
from taolu.errors import TaoluError, TrainingInterrupted


class _PrintVersion(argparse.Action):
    """--version: taolu's and the versions a bug report needs, read without importing torch."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        from importlib.metadata import PackageNotFoundError, version

        from taolu import __version__

        parts = [f"Python {sys.version.split()[0]}"]
        for package in ("torch", "torchvision"):
            try:
                parts.append(f"{package} {version(package)}")
            except PackageNotFoundError:
                parts.append(f"{package} not installed")
        print(f"taolu {__version__} ({', '.join(parts)})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="taolu",
        usage="%(prog)s COMMAND [OPTION ...]   (taolu COMMAND --help: its options)",
        description="taolu (套路): the complete PyTorch training routine for image classifiers.",
        # Raw text: each command's help line is followed by its example on the next line.
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--version", action=_PrintVersion, help="print the versions and exit")
    commands = parser.add_subparsers(
        title="commands",
        dest="command",
        metavar="COMMAND",
        parser_class=CommandParser,
        prog="taolu",  # else each command's name would start with the usage line above
    )
    commands.required = True
    add_train_command(commands)
    add_tune_command(commands)
    add_eval_command(commands)
    add_predict_command(commands)
    add_data_commands(commands)
    add_outcome_commands(commands)
    add_models_command(commands)
    add_inspect_command(commands)
    add_label_issues_command(commands)
    add_eject_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # a bare `taolu` asks what it can do
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
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
    except BrokenPipeError:  # `taolu models | head`: the reader has what it wanted
        # Python would complain again flushing stdout at exit; point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE


def run() -> NoReturn:
    """The `taolu` command and `python -m taolu`: main(), then a quick exit. The exit handlers
    libraries registered still run (multiprocessing's, logging's, finalizers) and the
    standard streams are flushed; what is skipped is Python tearing down every module torch
    brought in, which took 0.7 s of each command's end on a 2-core machine, longer than many
    commands' own work (benchmarks/startup.py). Every file taolu writes is closed by then."""
    try:
        code = main()
    except SystemExit as leaving:  # argparse's --help, usage errors
        if not isinstance(leaving.code, (int, type(None))):
            raise
        code = leaving.code or 0
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader gone, or a stream already closed
            pass
    os._exit(code)
