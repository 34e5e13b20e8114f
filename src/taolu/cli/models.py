"""`taolu models [show NAME]`: what can be trained, and one model layer by layer."""

from __future__ import annotations

import argparse

from taolu.errors import ConfigError


def add_models_command(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        help="list trainable models, or show one layer by layer\n  taolu models show resnet18",
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
    models.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
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
