"""Training options as flags: one per TrainConfig field, shared by `train` and `data`."""

from __future__ import annotations

import argparse
import dataclasses

from taolu.config import FIELDS, OPTION_GROUPS, flag_name

# The options that shape the data, shared by `taolu train` and `taolu data preview|bench`.
DATA_OPTIONS = (
    "data_root",
    "image_column",
    "label_column",
    "val_shards",
    "shuffle_buffer",
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


def add_checkpoint_choice(parser: argparse.ArgumentParser) -> None:
    """--checkpoint best|last, for every command that reads a run's model."""
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        metavar="best|last",
        default="best",
        help="which checkpoint of a run directory (default: best)",
    )


def shown_default(value: object) -> str:
    """A default as the README's table writes it: on/off, empty, or the value itself."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "empty" if value == "" else str(value)


def _metavar(spec: dataclasses.Field) -> str:
    """The placeholder after the flag: the field's own (`LR|auto`), else its choices."""
    if spec.metadata.get("metavar"):
        return spec.metadata["metavar"]
    return "|".join(str(choice) for choice in spec.metadata["choices"])


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = ()) -> None:
    """One flag per config field (or per field in `names`), with the field's help and
    default, under its group's heading in OPTION_GROUPS' order; a flag not given stays out
    of the namespace so it cannot mask the config file."""
    wanted = [name for name in FIELDS if not names or name in names]
    for group, description in OPTION_GROUPS.items():
        members = [name for name in wanted if FIELDS[name].metadata["group"] == group]
        if not members:
            continue
        section = parser.add_argument_group(f"{group} options", description)
        for name in members:
            _add_config_flag(section, name, FIELDS[name])


def _add_config_flag(section: argparse._ArgumentGroup, name: str, spec: dataclasses.Field) -> None:
    help_text = f"{spec.metadata['help']} (default: {shown_default(spec.default)})"
    if "choices" in spec.metadata and spec.metadata.get("metavar"):
        help_text += f"; one of {', '.join(str(c) for c in spec.metadata['choices'])}"
    if spec.type == "bool":
        section.add_argument(
            flag_name(name),
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        section.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(spec),
            help=help_text,
        )


def given_options(args: argparse.Namespace) -> dict:
    """The config fields whose flags were given, by name."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
