"""`taolu data check|export|preview|bench`: look at data before training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taolu.cli.options import DATA_OPTIONS, add_config_flags, given_options
from taolu.config import TrainConfig
from taolu.errors import ConfigError


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help="look at data before training: check, export, preview, bench\n"
        "  taolu data check ~/photos",
    )
    data.set_defaults(handler=run_data)
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    for add_action in (_add_check, _add_export, _add_preview, _add_bench):
        add_action(actions)


def _add_check(actions: argparse._SubParsersAction) -> None:
    check = actions.add_parser(
        "check",
        help="list what is wrong with a data set, with paths",
        description="Lists unreadable, corrupt, truncated and zero-byte files, non-image files, "
        "tiny images, odd modes, EXIF-rotated files, duplicates within and across splits, "
        "empty or missing classes, class counts and image sizes. Changes no file unless "
        "--quarantine is given. Exits 1 when training would refuse the data.",
    )
    check.add_argument(
        "spec",
        metavar="SPEC",
        help="image folder, CSV list, embedded name, Hugging Face dataset (folder, Parquet "
        "files, hf:NAME), WebDataset shards ('train-{000..009}.tar')",
    )
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
    check.add_argument("--image-column", default="", help="a Hugging Face dataset's image column")
    check.add_argument("--label-column", default="", help="a Hugging Face dataset's label column")
    check.add_argument("--val-shards", default="", help="WebDataset shards to validate on")
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_export(actions: argparse._SubParsersAction) -> None:
    export = actions.add_parser(
        "export",
        help="write a data set as PNG folders or WebDataset shards",
        description="--format png writes NAME (an embedded or torchvision set) as "
        "DIR/train/<class>/*.png and DIR/val/<class>/*.png. --format webdataset writes any "
        "data set taolu reads (also an image folder, a CSV list or a Hugging Face dataset) as "
        "DIR/train-NNNNNN.tar and DIR/val-NNNNNN.tar shards with DIR/classes.txt, image files "
        "keeping their bytes. DIR must not exist or be empty.",
    )
    export.add_argument(
        "name", metavar="NAME", help="mnist5k, digits, a torchvision set (webdataset: any SPEC)"
    )
    export.add_argument("target", metavar="DIR")
    export.add_argument("--data-root", default="", help="where torchvision sets lie on disk")
    export.add_argument(
        "--format", choices=("png", "webdataset"), default="png", help="(default: png)"
    )
    export.add_argument(
        "--shard-size", type=int, default=1000, help="webdataset: images a shard (default: 1000)"
    )
    export.add_argument("--val-fraction", type=float, default=0.2, help="(default: 0.2)")
    export.add_argument("--image-column", default="", help="a Hugging Face dataset's image column")
    export.add_argument("--label-column", default="", help="a Hugging Face dataset's label column")


def _add_preview(actions: argparse._SubParsersAction) -> None:
    preview = actions.add_parser(
        "preview",
        help="a PNG grid of augmented training samples with their labels",
        usage="%(prog)s SPEC [--output PNG] [--count N] [DATA OPTION ...]",
    )
    preview.add_argument("data", metavar="SPEC")
    preview.add_argument(
        "--output",
        default="preview.png",
        help="PNG to write; an existing file is never replaced (default: preview.png)",
    )
    preview.add_argument("--count", type=int, default=32, help="images in the grid (default: 32)")
    add_config_flags(preview, DATA_OPTIONS)


def _add_bench(actions: argparse._SubParsersAction) -> None:
    bench = actions.add_parser(
        "bench",
        help="images/s the data path delivers per epoch",
        usage="%(prog)s SPEC [--epochs N] [--json] [DATA OPTION ...]",
        description="Images per second delivered as normalised, augmented batches on the "
        "device, per epoch; epoch 1 includes listing and decoding into the cache.",
    )
    bench.add_argument("data", metavar="SPEC")
    bench.add_argument("--epochs", type=int, default=3, help="(default: 3)")
    bench.add_argument(
        "--json", action="store_true", help='print {"images_per_second": [...], "cache": MODE, ...}'
    )
    add_config_flags(bench, DATA_OPTIONS)


def _data_config(args: argparse.Namespace) -> TrainConfig:
    from taolu.train_options import build_train_config

    return build_train_config(None, given_options(args))


def run_data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        return _run_data_check(args)
    if args.data_command == "export" and args.format == "webdataset":
        return _export_shards(args)
    if args.data_command == "export":
        from taolu.data.export import export_dataset

        counts = export_dataset(
            args.name,
            args.target,
            data_root=args.data_root or None,
            val_fraction=args.val_fraction,
        )
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
    from taolu.data.sources import HF_DATASET, SHARDS, data_base_folder, data_kind

    if args.quarantine and data_kind(args.spec) in (HF_DATASET, SHARDS):
        raise ConfigError(
            f"--quarantine moves image files; {args.spec} holds its images inside tables or "
            "shards, so there is nothing to move: the report names the bad samples"
        )
    report = check_data(
        args.spec,
        val_fraction=args.val_fraction,
        min_size=args.min_size,
        max_bad_fraction=args.max_bad_fraction,
        workers=args.workers,
        data_root=args.data_root or None,
        image_column=args.image_column,
        label_column=args.label_column,
        val_shards=args.val_shards,
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


def _export_shards(args: argparse.Namespace) -> int:
    from taolu.data.shard_export import export_shards

    if args.shard_size < 1:
        raise ConfigError("--shard-size: give 1 or more images a shard")
    written = export_shards(
        args.name,
        args.target,
        data_root=args.data_root or None,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        image_column=args.image_column,
        label_column=args.label_column,
    )
    for split, (count, pattern) in written.items():
        print(f"wrote {count} {split} images to {pattern}")
    train, val = written["train"][1], written["val"][1]
    print(f"train on them with: taolu train --data '{train}' --val-shards '{val}'")
    return 0
