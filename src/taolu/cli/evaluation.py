"""`taolu eval` and `taolu predict`: a trained model scored on data, or run on image files."""

from __future__ import annotations

import argparse
import json
import sys

from taolu.cli.options import add_checkpoint_choice


def _add_checkpoint_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """What eval and predict share: the run or checkpoint, which checkpoint, device, batch."""
    parser.add_argument("run", metavar="RUN_OR_CKPT", help="run directory or checkpoint file")
    add_checkpoint_choice(parser)
    parser.add_argument(
        "--device", default="auto", metavar="auto|cpu|cuda[:N]|mps", help="(default: auto)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, metavar="N", help=f"(default: {batch_size})"
    )


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on a validation split\n  taolu eval runs/train",
        description="Loss and accuracy of a run's best checkpoint on the validation split it "
        "was trained with, or on --data. Writes nothing.",
    )
    evaluate.set_defaults(handler=run_eval)
    _add_checkpoint_arguments(evaluate, batch_size=256)
    evaluate.add_argument(
        "--data", metavar="SET_OR_FOLDER", help="evaluate on this data's validation split instead"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_tta_argument(evaluate)


def _add_tta_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over the flips and shifts the run trained with",
    )


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify image files\n  taolu predict runs/train digit.png",
        description="Top-k classes for image files and folders (searched recursively), with "
        "the model's own preprocessing. RUN_OR_CKPT may also be a file `taolu export` wrote: "
        ".onnx, .safetensors or .torchscript.pt (TorchScript holds code: loaded only with "
        "--trust-code). A file that cannot be read is reported and the rest are still "
        "classified; the exit code is then 1.",
    )
    predict.set_defaults(handler=run_predict)
    _add_checkpoint_arguments(predict, batch_size=64)
    predict.add_argument("inputs", metavar="FILES_OR_DIRS", nargs="+")
    predict.add_argument(
        "--topk", type=int, default=5, metavar="K", help="classes shown per image (default: 5)"
    )
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
        "--reject-below",
        metavar="P|auto",
        help="answer 'unknown' when the top probability is below P (auto: the threshold the "
        "run stored, keeping 95%% of its right validation answers)",
    )
    _add_tta_argument(predict)
    predict.add_argument(
        "--explain",
        metavar="DIR",
        help="write DIR/NAME.explain.png per input: the image with a map of where the model "
        "looks for its top class (LayerCAM; needs the checkpoint or a .safetensors export)",
    )
    predict.add_argument(
        "--explain-layer",
        metavar="NAME",
        help="the module the map is taken at, by its dotted name (default: the last "
        "convolutional block; a wrong name lists the ones that fit)",
    )
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar on stderr for more than one batch of files (only on a terminal)",
    )


def run_eval(args: argparse.Namespace) -> int:
    from taolu.api import evaluate

    result = evaluate(
        args.run,
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
        tta=args.tta,
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


def run_predict(args: argparse.Namespace) -> int:
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
        reject_below=args.reject_below,
        tta=args.tta,
        explain=args.explain,
        explain_layer=args.explain_layer,
    )
    sys.stdout.write(
        render_predictions(results, "json" if args.json else "csv" if args.csv else "text")
    )
    failed = sum("error" in result for result in results)
    if args.explain is not None:
        drawn = sum("explanation" in result for result in results)
        print(f"taolu: {drawn} overlays in {args.explain}", file=sys.stderr)
    if failed:
        print(f"taolu: {failed} of {len(results)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0
