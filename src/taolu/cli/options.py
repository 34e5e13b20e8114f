"""Training options as flags: one per TrainConfig field, shared by `train` and `data`."""

from __future__ import annotations

import argparse

from taolu.config import FIELDS

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


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = ()) -> None:
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
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar=spec.type.upper(),
                help=help_text,
            )


def given_options(args: argparse.Namespace) -> dict:
    """The config fields whose flags were given, by name."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
