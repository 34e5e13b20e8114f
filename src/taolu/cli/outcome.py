"""What happens after training: `taolu board`, `report`, `export` and `serve`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from taolu.cli.options import add_checkpoint_choice
from taolu.config import flag_name


def add_outcome_commands(commands: argparse._SubParsersAction) -> None:
    """Look at runs, report on one, export its model, serve it."""
    board = commands.add_parser(
        "board",
        help="start TensorBoard on a folder of runs (127.0.0.1 only)\n  taolu board runs",
        description="Serve TensorBoard for RUNS_DIR on 127.0.0.1 (other interfaces only with "
        "--host), on --port or the next free port after it; Ctrl-C stops it.",
    )
    board.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR")
    board.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    board.add_argument("--port", type=int, default=6006, help="first port tried (default: 6006)")

    report = commands.add_parser(
        "report",
        help="(re)write a run's report: PNG plots and report.html\n  taolu report runs/train",
        description="Write RUN/report/: loss, accuracy and lr plots, the normalised confusion "
        "matrix, per-class precision/recall/F1, sample predictions and a self-contained "
        "report.html. Training writes it too; this regenerates it.",
    )
    report.add_argument("run", metavar="RUN_DIR", help="a taolu run directory")

    export = commands.add_parser(
        "export",
        help="export a trained model to ONNX, TorchScript or safetensors\n"
        "  taolu export runs/train --format onnx",
        description="Write the model of RUN_OR_CKPT as ONNX (dynamic batch, class names and "
        "preprocessing in its metadata), TorchScript or safetensors, and check its outputs "
        "against the PyTorch model at batch 1 and 8.",
    )
    _add_export_arguments(export)
    _add_serve_command(commands)
    board.set_defaults(handler=run_board)
    report.set_defaults(handler=run_report)
    export.set_defaults(handler=run_export)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """taolu serve RUN_CKPT_OR_EXPORT [--host H] [--port P] [limits]."""
    from taolu.serving.options import DEFAULT_PORT, ServeOptions

    serve = commands.add_parser(
        "serve",
        help="serve a trained model: a web page and an HTTP API (127.0.0.1 only)\n"
        "  taolu serve runs/train --port 8000",
        description="Serve the model of RUN_CKPT_OR_EXPORT (a run, a checkpoint, or a file "
        "`taolu export` wrote) on 127.0.0.1 (other interfaces only with --host), on --port or "
        "the next free port after it: the page at /, POST /predict (multipart, images in "
        "fields named files; the JSON of `taolu predict --json`), GET /info, GET /health. "
        "Ctrl-C stops it.",
    )
    serve.set_defaults(handler=run_serve)
    serve.add_argument("run", metavar="RUN_CKPT_OR_EXPORT")
    add_checkpoint_choice(serve)
    serve.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", metavar="ADDRESS", help="interface (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"first port tried (default: {DEFAULT_PORT})"
    )
    for spec in dataclasses.fields(ServeOptions):
        serve.add_argument(
            flag_name(spec.name),
            type=type(spec.default),
            default=argparse.SUPPRESS,  # not given: ServeOptions' default
            metavar=spec.metadata["metavar"],
            help=f"{spec.metadata['help']} (default: {spec.default:g})",
        )
    serve.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a .torchscript.pt file: it holds code that runs when it is loaded",
    )


def _add_export_arguments(export: argparse.ArgumentParser) -> None:
    """taolu export RUN_OR_CKPT --format onnx|torchscript|safetensors [--out FILE]."""
    export.add_argument("run", metavar="RUN_OR_CKPT", help="run directory or checkpoint file")
    export.add_argument(
        "--format",
        choices=("onnx", "torchscript", "safetensors"),
        default="onnx",
        help="onnx and torchscript take float32 (N, C, H, W) images in 0..1 with the "
        "normalisation inside; safetensors holds the network's weights only (default: onnx)",
    )
    export.add_argument(
        "--out",
        metavar="FILE",
        help="file to write, replaced if it exists (default: RUN/export/model.onnx, "
        ".torchscript.pt or .safetensors, or model2..., model3... when that exists)",
    )
    add_checkpoint_choice(export)


def run_board(args: argparse.Namespace) -> int:
    from taolu.track.board import run_board

    return run_board(Path(args.runs_dir), host=args.host, port=args.port)


def run_serve(args: argparse.Namespace) -> int:
    from taolu.serving import ServeOptions, serve

    fields = dataclasses.fields(ServeOptions)
    return serve(
        args.run,
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        device=args.device,
        trust_code=args.trust_code,
        **{spec.name: getattr(args, spec.name) for spec in fields if hasattr(args, spec.name)},
    )


def run_report(args: argparse.Namespace) -> int:
    from taolu.track.report import write_report

    path = write_report(Path(args.run))
    print(f"taolu: report written: {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from taolu.model_export import export

    result = export(args.run, format=args.format, out=args.out, checkpoint=args.checkpoint)
    print(f"taolu: {result}")
    return 0
