"""`taolu models [show NAME] [--timm [PATTERN]]`: what can be trained, and one model layer by
layer."""

from __future__ import annotations

import argparse
import textwrap

from taolu.errors import ConfigError

TIMM_COUNTED = 40  # `--timm PATTERN` counts parameters (~0.05 s a model) up to this many


def add_models_command(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        help="list trainable models, or show one layer by layer\n  taolu models show resnet18",
        description="Without NAME: every model with its parameters, default input size, the "
        "situations it is recommended for, and whether pretrained weights are in the local "
        "torch hub cache, then a few of timm's models when timm is installed. With `show "
        "NAME`: each layer's output shape and parameters, and FLOPs per image. With --timm: "
        "timm's models.",
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
    models.add_argument(
        "--timm",
        nargs="?",
        const="*",
        default=None,
        metavar="PATTERN",
        help="list timm's models instead, all or those matching a shell-style PATTERN "
        "(taolu models --timm 'convnext*'); counted when at most "
        f"{TIMM_COUNTED} match",
    )
    models.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    if args.timm is not None:
        _list_timm(args.timm)
        return 0
    if args.action is None:
        _list_models()
        _timm_section()
        return 0
    if not args.name:
        raise ConfigError("taolu models show needs a model NAME")
    _show_model(args.name, args.image_size, args.channels, args.classes)
    return 0


def _print_rows(rows: list[dict]) -> None:
    from taolu.models import summary

    print(
        f"{'model':<28} {'source':<12} {'parameters':>12} {'input':>6}  "
        f"{'recommended for':<30} local weights"
    )
    for row in rows:
        situations = ", ".join(summary.recommended_for(row["name"])) or "-"
        print(
            f"{row['name']:<28} {row['source']:<12} {row['parameters']:>12,} "
            f"{row['input_size']:>6}  {situations:<30} {row['local_weights'] or '-'}"
        )


def _list_models() -> None:
    from taolu.models import summary

    _print_rows(summary.list_models())
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


def _timm_section() -> None:
    """A few of timm's models under their own heading; timm is imported only when installed."""
    from taolu.models import summary, timm_zoo

    if not timm_zoo.is_timm_installed():
        print(
            "\ntimm models: not installed; `pip install 'taolu[timm]'` adds timm's models "
            "(--model timm:NAME)"
        )
        return
    total = len(timm_zoo.list_timm_models())
    print(f"\ntimm models (--model timm:NAME; {total} in all, a few to start from):")
    _print_rows(summary.timm_rows(list(timm_zoo.CURATED)))
    print(
        "every timm model: taolu models --timm; those matching a pattern, counted: "
        "taolu models --timm 'convnext*'"
    )


def _list_timm(pattern: str) -> None:
    """timm's models matching `pattern`: counted when few, else their names in columns."""
    from taolu.models import summary, timm_zoo

    names = timm_zoo.list_timm_models(pattern)
    if not names:
        raise ConfigError(
            f"no timm model matches {pattern!r}; patterns are shell-style: 'resnet*', '*vit*'"
        )
    if len(names) <= TIMM_COUNTED:
        _print_rows(summary.timm_rows(names))
    else:
        print(textwrap.fill("  ".join(timm_zoo.TIMM_PREFIX + name for name in names), width=100))
        print(
            f"\n{len(names)} timm models; a narrower PATTERN (at most {TIMM_COUNTED} matches) "
            "lists them with parameters and input size"
        )


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
