"""`taolu models [show NAME]`: what can be trained, and one model layer by layer."""

from __future__ import annotations

import argparse
import textwrap

from taolu.errors import ConfigError


def add_models_command(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        help="list trainable models, or show one layer by layer\n  taolu models show resnet18",
        description="Without NAME: every model with its parameters, default input size, the "
        "situations it is recommended for, and whether pretrained weights are in the local "
        "torch hub cache. With `show NAME`: each layer's output shape and parameters, and "
        "FLOPs per image.",
    )
    models.add_argument(
        "action", nargs="?", choices=("show",), metavar="show", help="show one model"
    )
    models.add_argument("name", nargs="?", metavar="NAME")
    models.add_argument(
        "--image-size",
        type=int,
        default=0,
        metavar="PIXELS",
        help="input side for show (default: the model's own)",
    )
    models.add_argument(
        "--channels",
        type=int,
        default=0,
        choices=(0, 1, 3),
        metavar="0|1|3",
        help="input channels for show (default: 0, the model's own: 1 for fastcnn and lenet5, "
        "else 3)",
    )
    models.add_argument(
        "--classes", type=int, default=10, metavar="N", help="outputs (default: 10)"
    )
    models.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    if args.action is None:
        _list_models()
        return 0
    if not args.name:
        raise ConfigError("taolu models show needs a model NAME")
    _show_model(args.name, args.image_size, args.channels, args.classes)
    return 0


def _list_models() -> None:
    from taolu.models import summary

    print(
        f"{'model':<28} {'source':<12} {'parameters':>12} {'input':>6}  "
        f"{'recommended for':<30} local weights"
    )
    for row in summary.list_models():
        situations = ", ".join(summary.recommended_for(row["name"])) or "-"
        print(
            f"{row['name']:<28} {row['source']:<12} {row['parameters']:>12,} "
            f"{row['input_size']:>6}  {situations:<30} {row['local_weights'] or '-'}"
        )
    note = (
        f"parameters: built-in nets with a {summary.BUILTIN_CLASSES}-class head at their own "
        f"input; torchvision models with the {summary.IMAGENET_CLASSES}-class ImageNet head "
        "their weights were published with. Training replaces the head to fit your data's "
        "classes: `taolu models show NAME --classes N` counts a model for N classes."
    )
    print("\n" + textwrap.fill(note, width=100) + "\n\nrecommended:")
    for situation, (names, why) in summary.RECOMMENDED.items():
        shown = []
        for name in names:
            top1 = summary.imagenet_top1(name)
            shown.append(f"{name} (ImageNet top-1 {top1:.1f}%)" if top1 else name)
        print(f"  {situation + ':':<18} {', '.join(shown)}")
        print(textwrap.fill(why, width=100, initial_indent=" " * 21, subsequent_indent=" " * 21))


def _show_model(name: str, image_size: int, channels: int, classes: int) -> None:
    from taolu.models import check_model_name, summary

    check_model_name(name)  # before the header: a typo gets its "did you mean" alone
    size = image_size or summary.default_size(name)
    channels = channels or summary.default_channels(name)
    print(f"{name} at {channels}x{size}x{size}, {classes} classes")
    print(f"{'layer':<36} {'type':<22} {'output':<22} {'parameters':>12}")
    rows = summary.layer_table(name, size, channels, classes)
    for row in rows:
        print(
            f"{row['layer']:<36} {row['type']:<22} {str(row['output']):<22} "
            f"{row['parameters']:>12,}"
        )
    total = sum(row["parameters"] for row in rows)
    listed, head = summary.listed_parameters(name)
    line = f"parameters {total:,} with a {classes}-class head"
    if listed != total:
        line += f" (`taolu models` lists {listed:,}: a {head}-class head"
        if channels != summary.default_channels(name) or size != summary.default_size(name):
            line += ", its own input"
        line += ")"
    print(line)
    flops = summary.count_flops(name, size, channels, classes)
    print(
        f"FLOPs per image: forward {summary.flops_text(flops['forward'])}, training step "
        f"{summary.flops_text(flops['train_step'])}"
    )
