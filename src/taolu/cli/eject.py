"""`taolu eject`: a run (or, through `taolu train --eject`, options not yet trained) written
as one standalone plain PyTorch script."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_eject_command(commands: argparse._SubParsersAction) -> None:
    eject = commands.add_parser(
        "eject",
        help="write a run as one standalone plain PyTorch script\n  taolu eject runs/train",
        description="Write the run in RUN as one plain PyTorch + torchvision script in the "
        "tutorial's order (Dataset, transforms, DataLoader, model, loss, optimizer, train and "
        "test loop, TensorBoard, torch.save) that runs without taolu. `taolu train --eject "
        "FILE.py ...` does the same for options not yet trained.",
    )
    eject.add_argument("run", metavar="RUN", help="a run directory")
    eject.add_argument("--out", metavar="FILE.py", help="where to write it; default RUN/eject.py")
    eject.set_defaults(handler=run_eject)


def run_eject(args: argparse.Namespace) -> int:
    from taolu.api import eject

    return say_ejected(eject(args.run, args.out))


def say_ejected(path: Path) -> int:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    print(f"taolu: wrote {path} ({lines} lines); run it with: python {path}")
    return 0
