"""`taolu train`: the options as flags, and a launch under torchrun for --nproc N."""

from __future__ import annotations

import argparse
import sys

from taolu.cli.options import add_config_flags, given_options
from taolu.errors import ConfigError
from taolu.option_values import parse_set_items

TRAIN_EXAMPLES = """examples:
  taolu train                                  the default net on the embedded MNIST digits
  taolu train --data digits --epochs 30        scikit-learn's 8x8 digits
  taolu train --data ~/photos --image-size 64  your own folder of class folders
  taolu train --config my.yaml --set lr=0.05   a YAML file, then one value overridden
  taolu train --data ~/photos --model resnet18 --weights DEFAULT --freeze backbone
  taolu train --resume runs/train --epochs 20  continue a run from its last checkpoint

Precedence: defaults < --config file < named flags < --set key=value."""


def add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a classifier\n  taolu train --data ~/photos --epochs 20",
        # The options are listed below by group; a usage line of all ~60 would bury them.
        usage="%(prog)s [--data SET_OR_FOLDER] [--model NAME_OR_FILE] [--epochs N] "
        "[--config FILE.yaml] [--set KEY=VALUE] [--resume RUN_DIR] [OPTION ...]",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare the data, build the model, make the loss and optimizer, train, "
        "test and save, into OUT/NAME.",
    )
    train.set_defaults(handler=run_train)
    add_option_layers(train)
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes on this machine (DDP): the same as "
        "torchrun --standalone --nproc_per_node=N -m taolu train ...",
    )
    train.add_argument(
        "--eject",
        metavar="FILE.py",
        help="instead of training, write these options as a standalone plain PyTorch script",
    )
    add_config_flags(train)


def add_option_layers(parser: argparse.ArgumentParser) -> None:
    """--config and --set: the layers beneath and above the named flags (train and tune)."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value")
    parser.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any option; beats every other source",
    )


def _launch_with_torchrun(argv: list[str], processes: int) -> int:
    """`taolu train --nproc N ...` runs `torchrun --standalone --nproc_per_node=N -m taolu
    train ...` with the other arguments unchanged."""
    import shlex
    import subprocess

    rest, skip = [], False
    for index, item in enumerate(argv):
        if skip:
            skip = False
        elif item == "--nproc":
            skip = index + 1 < len(argv)
        elif not item.startswith("--nproc="):
            rest.append(item)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "taolu",
        *rest,
    ]
    print(f"taolu: starting {processes} processes: {shlex.join(command)}", flush=True)
    return subprocess.call(command)


def run_train(args: argparse.Namespace) -> int:
    from taolu.api import train_from_options
    from taolu.engine.distributed import launched_by_torchrun

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: give at least 1 process")
    if args.nproc > 1:
        if launched_by_torchrun():
            raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out")
        return _launch_with_torchrun(args.argv, args.nproc)

    if args.eject:
        from taolu.api import eject_from_options
        from taolu.cli.eject import say_ejected

        if args.resume:
            raise ConfigError("--eject writes options before training; for a run: taolu eject RUN")
        written = eject_from_options(
            args.config, given_options(args), parse_set_items(args.set_items), args.eject
        )
        return say_ejected(written)
    train_from_options(
        args.config,
        given_options(args),
        parse_set_items(args.set_items),
        resume=args.resume or None,
    )
    return 0
