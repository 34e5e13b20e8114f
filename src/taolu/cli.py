"""The `taolu` command: argv -> options -> a call into the Python API. No training logic here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from taolu.config import FIELDS, TrainConfig, parse_set_items
from taolu.errors import ConfigError, TaoluError, TrainingInterrupted

TRAIN_EXAMPLES = """examples:
  taolu train                                  the default net on the embedded MNIST digits
  taolu train --data digits --epochs 30        scikit-learn's 8x8 digits
  taolu train --data ~/photos --image-size 64  your own folder of class folders
  taolu train --config my.yaml --set lr=0.05   a YAML file, then one value overridden
  taolu train --data ~/photos --model resnet18 --weights DEFAULT --freeze backbone
  taolu train --resume runs/train --epochs 20  continue a run from its last checkpoint

Precedence: defaults < --config file < named flags < --set key=value."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The options that shape the data, shared by `taolu train` and `taolu data preview|bench`.
DATA_OPTIONS = (
    "data_root",
    "val_fraction",
    "image_size",
    "resize_mode",
    "channels",
    "augment",
    "transforms",
    "normalize",
    "cache",
    "cache_dir",
    "max_bad_fraction",
    "batch_size",
    "workers",
    "seed",
    "device",
)


def _add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = ()) -> None:
    """One flag per config field (or per field in `names`), with the field's help and
    default; a flag not given stays out of the namespace so it cannot mask the config file."""
    for name, spec in FIELDS.items():
        if names and name not in names:
            continue
        help_text = f"{spec.metadata['help']} (default: {spec.default!r})"
        if "choices" in spec.metadata:
            help_text += f"; one of {', '.join(str(c) for c in spec.metadata['choices'])}"
        if spec.type == "bool":
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar=spec.type.upper(),
                help=help_text,
            )


def _add_checkpoint_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """What eval and predict share: the run or checkpoint, which checkpoint, device, batch."""
    parser.add_argument("run", metavar="RUN_OR_CKPT", help="run directory or checkpoint file")
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of a run directory (default: best)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"(default: {batch_size})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taolu",
        description="taolu (套路): the complete PyTorch training routine for image classifiers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train a classifier",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare the data, build the model, make the loss and optimizer, train, "
        "test and save, into OUT/NAME.",
    )
    train.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    train.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any option; beats every other source",
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
    _add_config_flags(train)
    _add_eject_command(commands)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on a validation split",
        description="Loss and accuracy of a run's best checkpoint on the validation split it "
        "was trained with, or on --data. Writes nothing.",
    )
    _add_checkpoint_arguments(evaluate, batch_size=256)
    evaluate.add_argument("--data", help="evaluate on this data's validation split instead")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    predict = commands.add_parser(
        "predict",
        help="classify image files",
        description="Top-k classes for image files and folders (searched recursively), with "
        "the model's own preprocessing. RUN_OR_CKPT may also be a file `taolu export` wrote: "
        ".onnx, .safetensors or .torchscript.pt (TorchScript holds code: loaded only with "
        "--trust-code). A file that cannot be read is reported and the rest are still "
        "classified; the exit code is then 1.",
    )
    _add_checkpoint_arguments(predict, batch_size=64)
    predict.add_argument("inputs", metavar="FILES_OR_DIRS", nargs="+")
    predict.add_argument("--topk", type=int, default=5, help="classes shown per image (default: 5)")
    output = predict.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help='print a JSON array: {"path", "predictions": [{"class", '
        '"probability"}]} or {"path", "error"} per input',
    )
    output.add_argument(
        "--csv",
        action="store_true",
        help="print CSV with the header path,rank,class,probability,error: one row per "
        "prediction (rank 1..K), one row with only path and error for a file that failed",
    )
    predict.add_argument(
        "--trust-code",
        action="store_true",
        help="load a .torchscript.pt file: it holds code that runs when loaded and can do "
        "anything a program can; only for files from someone you trust",
    )
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar on stderr for more than one batch of files (only on a terminal)",
    )
    _add_data_commands(commands)
    _add_outcome_commands(commands)
    _add_serve_command(commands)
    models = commands.add_parser(
        "models",
        help="list trainable models, or show one layer by layer",
        description="Without NAME: every model with its parameters, default input size and "
        "whether pretrained weights are in the local torch hub cache. With `show NAME`: each "
        "layer's output shape and parameters, and FLOPs per image.",
    )
    models.add_argument("action", nargs="?", choices=("show",), help="show one model")
    models.add_argument("name", nargs="?", metavar="NAME")
    models.add_argument(
        "--image-size", type=int, default=0, help="input side for show (default: the model's own)"
    )
    models.add_argument("--channels", type=int, default=3, choices=(1, 3), help="(default: 3)")
    models.add_argument("--classes", type=int, default=10, help="outputs (default: 10)")
    return parser


def _add_outcome_commands(commands: argparse._SubParsersAction) -> None:
    """What happens after training: look at runs, report on one, export its model."""
    board = commands.add_parser(
        "board",
        help="start TensorBoard on a folder of runs (127.0.0.1 only)",
        description="Serve TensorBoard for RUNS_DIR on 127.0.0.1 (other interfaces only with "
        "--host), on --port or the next free port after it; Ctrl-C stops it.",
    )
    board.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR")
    board.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    board.add_argument("--port", type=int, default=6006, help="first port tried (default: 6006)")

    report = commands.add_parser(
        "report",
        help="(re)write a run's report: PNG plots and report.html",
        description="Write RUN/report/: loss, accuracy and lr plots, the normalised confusion "
        "matrix, per-class precision/recall/F1, sample predictions and a self-contained "
        "report.html. Training writes it too; this regenerates it.",
    )
    report.add_argument("run", metavar="RUN_DIR", help="a taolu run directory")

    export = commands.add_parser(
        "export",
        help="export a trained model to ONNX, TorchScript or safetensors",
        description="Write the model of RUN_OR_CKPT as ONNX (dynamic batch, class names and "
        "preprocessing in its metadata), TorchScript or safetensors, and check its outputs "
        "against the PyTorch model at batch 1 and 8.",
    )
    _add_export_arguments(export)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """taolu serve RUN_CKPT_OR_EXPORT [--host H] [--port P] [limits]."""
    from taolu.serving.options import DEFAULT_PORT, ServeOptions

    serve = commands.add_parser(
        "serve",
        help="serve a trained model: a web page and an HTTP API (127.0.0.1 only)",
        description="Serve the model of RUN_CKPT_OR_EXPORT (a run, a checkpoint, or a file "
        "`taolu export` wrote) on 127.0.0.1 (other interfaces only with --host), on --port or "
        "the next free port after it: the page at /, POST /predict (multipart, images in "
        "fields named files; the JSON of `taolu predict --json`), GET /info, GET /health. "
        "Ctrl-C stops it.",
    )
    serve.add_argument("run", metavar="RUN_CKPT_OR_EXPORT")
    serve.add_argument("--checkpoint", choices=("best", "last"), default="best")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"first port tried (default: {DEFAULT_PORT})"
    )
    for spec in dataclasses.fields(ServeOptions):
        serve.add_argument(
            _flag(spec.name),
            type=type(spec.default),
            default=argparse.SUPPRESS,  # not given: ServeOptions' default
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
    export.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of a run directory (default: best)",
    )


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="look at data before training: check, preview, ...")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    check = actions.add_parser(
        "check",
        help="list what is wrong with a data set, with paths",
        description="Lists unreadable, corrupt, truncated and zero-byte files, non-image files, "
        "tiny images, odd modes, EXIF-rotated files, duplicates within and across splits, "
        "empty or missing classes, class counts and image sizes. Changes no file unless "
        "--quarantine is given. Exits 1 when training would refuse the data.",
    )
    check.add_argument("spec", metavar="SPEC", help="image folder, CSV list or embedded name")
    check.add_argument("--val-fraction", type=float, default=0.2, help="(default: 0.2)")
    check.add_argument(
        "--min-size",
        type=int,
        default=8,
        help="report images whose shorter side is below this (default: 8)",
    )
    check.add_argument("--max-bad-fraction", type=float, default=0.1, help="(default: 0.1)")
    check.add_argument("--workers", type=int, default=2, help="threads reading files (default: 2)")
    check.add_argument(
        "--quarantine",
        metavar="DIR",
        help="move the unreadable files into DIR (relative paths kept)",
    )
    check.add_argument("--data-root", default="", help="where torchvision sets lie on disk")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    export = actions.add_parser(
        "export",
        help="write an embedded or on-disk data set as PNG folders",
        description="Writes NAME as DIR/train/<class>/*.png and DIR/val/<class>/*.png. "
        "DIR must not exist or be empty.",
    )
    export.add_argument("name", metavar="NAME", help="mnist5k, digits, or a torchvision set")
    export.add_argument("target", metavar="DIR")
    export.add_argument("--data-root", default="", help="where torchvision sets lie on disk")

    preview = actions.add_parser(
        "preview",
        help="a PNG grid of augmented training samples with their labels",
    )
    preview.add_argument("data", metavar="SPEC")
    preview.add_argument(
        "--output",
        default="preview.png",
        help="PNG to write; an existing file is never replaced (default: preview.png)",
    )
    preview.add_argument("--count", type=int, default=32, help="images in the grid (default: 32)")
    _add_config_flags(preview, DATA_OPTIONS)

    bench = actions.add_parser(
        "bench",
        help="images/s the data path delivers per epoch",
        description="Images per second delivered as normalised, augmented batches on the "
        "device, per epoch; epoch 1 includes listing and decoding into the cache.",
    )
    bench.add_argument("data", metavar="SPEC")
    bench.add_argument("--epochs", type=int, default=3, help="(default: 3)")
    bench.add_argument(
        "--json", action="store_true", help='print {"images_per_second": [...], "cache": MODE, ...}'
    )
    _add_config_flags(bench, DATA_OPTIONS)


def _data_config(args: argparse.Namespace) -> TrainConfig:
    from taolu.api import build_train_config

    options = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    return build_train_config(None, options)


def _run_models(args: argparse.Namespace) -> int:
    from taolu.models import summary

    if args.action is None:
        print(f"{'model':<28} {'source':<12} {'parameters':>14} {'input':>6}  local weights")
        for row in summary.list_models():
            print(
                f"{row['name']:<28} {row['source']:<12} {row['parameters']:>14,} "
                f"{row['input_size']:>6}  {row['local_weights'] or '-'}"
            )
        return 0
    if not args.name:
        raise ConfigError("taolu models show needs a model NAME")
    size = args.image_size or summary.default_size(args.name)
    print(f"{args.name} at {args.channels}x{size}x{size}, {args.classes} classes")
    print(f"{'layer':<36} {'type':<22} {'output':<22} {'parameters':>12}")
    rows = summary.layer_table(args.name, size, args.channels, args.classes)
    for row in rows:
        print(
            f"{row['layer']:<36} {row['type']:<22} {str(row['output']):<22} "
            f"{row['parameters']:>12,}"
        )
    flops = summary.count_flops(args.name, size, args.channels, args.classes)
    total = sum(row["parameters"] for row in rows)
    print(
        f"parameters {total:,}; FLOPs per image: forward {flops['forward']:,}, "
        f"training step {flops['train_step']:,}"
    )
    return 0


def _run_data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        return _run_data_check(args)
    if args.data_command == "export":
        from taolu.data.export import export_dataset

        counts = export_dataset(args.name, args.target, data_root=args.data_root or None)
        print(
            f"wrote {', '.join(f'{n} {split}' for split, n in counts.items())} PNG files "
            f"under {args.target}"
        )
        return 0
    if args.data_command == "preview":
        from taolu.data.pipeline import DataOptions
        from taolu.data.preview import preview_training_samples, save_preview

        output = Path(args.output)
        if output.exists():
            raise ConfigError(f"{output} already exists; choose another --output")
        config = _data_config(args)
        images, labels, classes = preview_training_samples(
            DataOptions.taken_from(config), config.augment, config.seed, args.count
        )
        save_preview(images, labels, classes, output)
        print(f"wrote {len(labels)} augmented training samples to {output}")
        return 0
    from taolu.data.bench import measure_delivery
    from taolu.data.pipeline import DataOptions
    from taolu.engine.precision import pick_device

    config = _data_config(args)
    result = measure_delivery(
        DataOptions.taken_from(config),
        batch_size=config.batch_size,
        augment=config.augment,
        seed=config.seed,
        epochs=args.epochs,
        device=pick_device(config.device),
    )
    if args.json:
        print(json.dumps(result))
    else:
        for epoch, rate in enumerate(result["images_per_second"], start=1):
            print(f"epoch {epoch}: {rate:,.0f} images/s")
        print(
            f"{result['images']} training images at {result['size'][0]}x{result['size'][1]}, "
            f"cache {result['cache']}"
        )
    return 0


def _run_data_check(args: argparse.Namespace) -> int:
    from taolu.data.check import check_data
    from taolu.data.quarantine import quarantine
    from taolu.data.sources import data_base_folder

    report = check_data(
        args.spec,
        val_fraction=args.val_fraction,
        min_size=args.min_size,
        max_bad_fraction=args.max_bad_fraction,
        workers=args.workers,
        data_root=args.data_root or None,
    )
    print(
        json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.render()
    )
    if args.quarantine:
        moves = quarantine(report, Path(args.quarantine), data_base_folder(args.spec))
        for source, target in moves:
            print(f"moved {source} -> {target}", file=sys.stderr)
        print(
            f"quarantine: moved {len(moves)} unreadable file(s) to {args.quarantine}",
            file=sys.stderr,
        )
    return 1 if report.blocking else 0


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


def _run_train(args: argparse.Namespace) -> int:
    from taolu.api import train_from_options
    from taolu.engine.distributed import launched_by_torchrun

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: give at least 1 process")
    if args.nproc > 1:
        if launched_by_torchrun():
            raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out")
        return _launch_with_torchrun(args.argv, args.nproc)

    options = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    if args.eject:
        from taolu.api import eject_from_options

        if args.resume:
            raise ConfigError("--eject writes options before training; for a run: taolu eject RUN")

        written = eject_from_options(
            args.config, options, parse_set_items(args.set_items), args.eject
        )
        return _say_ejected(written)
    train_from_options(
        args.config, options, parse_set_items(args.set_items), resume=args.resume or None
    )
    return 0


# --- taolu eject: a run as a standalone plain PyTorch script (issue 16) ---
def _add_eject_command(commands: Any) -> None:
    eject = commands.add_parser(
        "eject",
        help="write a run as one standalone plain PyTorch script",
        description="Write the run in RUN as one plain PyTorch + torchvision script in the "
        "tutorial's order (Dataset, transforms, DataLoader, model, loss, optimizer, train and "
        "test loop, TensorBoard, torch.save) that runs without taolu. `taolu train --eject "
        "FILE.py ...` does the same for options not yet trained.",
    )
    eject.add_argument("run", metavar="RUN", help="a run directory")
    eject.add_argument("--out", metavar="FILE.py", help="where to write it; default RUN/eject.py")


def _run_eject(args: argparse.Namespace) -> int:
    from taolu.api import eject

    return _say_ejected(eject(args.run, args.out))


def _say_ejected(path: Path) -> int:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    print(f"taolu: wrote {path} ({lines} lines); run it with: python {path}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from taolu.api import evaluate

    result = evaluate(
        args.run,
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        extra = "".join(
            f"  {label} {result[key]:.4f}"
            for key, label in (
                ("top5_acc", "top-5"),
                ("macro_f1", "macro-F1"),
                ("balanced_acc", "balanced acc"),
            )
            if key in result
        )
        print(
            f"{result['checkpoint']} (epoch {result['epoch']}) on {result['data']}: "
            f"{result['samples']} images  loss {result['loss']:.4f}  acc {result['acc']:.4f}"
            + extra
        )
        for name, scores in result["per_class"].items():
            print(
                f"  {name:<20} precision {scores['precision']:.4f}  recall "
                f"{scores['recall']:.4f}  f1 {scores['f1']:.4f}  ({scores['support']} images)"
            )
    return 0


def _run_board(args: argparse.Namespace) -> int:
    from taolu.track.board import run_board

    return run_board(Path(args.runs_dir), host=args.host, port=args.port)


def _run_serve(args: argparse.Namespace) -> int:
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


def _run_report(args: argparse.Namespace) -> int:
    from taolu.track.report import write_report

    path = write_report(Path(args.run))
    print(f"taolu: report written: {path}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from taolu.model_export import export

    result = export(args.run, format=args.format, out=args.out, checkpoint=args.checkpoint)
    print(f"taolu: {result}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from taolu.api import predict
    from taolu.predictions import render_predictions

    results = predict(
        args.run,
        args.inputs,
        topk=args.topk,
        device=args.device,
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
        progress=args.progress,
        trust_code=args.trust_code,
    )
    sys.stdout.write(
        render_predictions(results, "json" if args.json else "csv" if args.csv else "text")
    )
    failed = sum("error" in result for result in results)
    if failed:
        print(f"taolu: {failed} of {len(results)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


def _plain_message(error: BaseException) -> str:
    # Errors re-raised from DataLoader workers carry the worker's traceback text; the user
    # needs its last line, which names the file or sample.
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted, not as it was when the handler
    was made: whoever calls main() in-process (tests, notebooks) may swap it in between."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _show_warnings_plainly() -> None:
    """taolu's warnings (skipped files, ignored links) as 'taolu: warning: ...' on stderr."""
    logger = logging.getLogger("taolu")
    # Whatever handlers an earlier caller in this process left (a notebook's, a test's), the
    # command's warnings go to stderr, once.
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("taolu: warning: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handlers: dict[str, Any] = {
        "train": _run_train,
        "eval": _run_eval,
        "predict": _run_predict,
        "data": _run_data,
        "models": _run_models,
        "board": _run_board,
        "serve": _run_serve,
        "report": _run_report,
        "export": _run_export,
        "eject": _run_eject,
    }
    _show_warnings_plainly()
    try:
        return handlers[args.command](args)
    except TrainingInterrupted as stopped:  # SIGTERM / Ctrl-C: saved, and how to go on
        print(f"taolu: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except TaoluError as error:
        print(f"taolu: error: {_plain_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taolu: interrupted", file=sys.stderr)
        return 130
