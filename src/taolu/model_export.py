"""Export a trained model as ONNX, TorchScript or safetensors, checked on the spot.

`taolu export RUN_OR_CKPT --format onnx|torchscript|safetensors` and `taolu.export(...)` take
the checkpoint's inference weights (the EMA when the run kept one), write the file under a
temporary name, compare its outputs with the PyTorch model's on random images at batch 1 and
batch 8, and only then rename it into place. A difference above `TOLERANCE` (1e-4) refuses
the export and leaves no file behind.

What each file takes as input:

* ONNX and TorchScript: float32 images (N, C, H, W) with values 0..1 (RGB, or gray when C is
  1) at the stored size H x W, batch N of any size. The normalisation (the checkpoint's mean
  and std) is built into the graph, so a user only decodes, resizes and divides by 255. The
  output is logits (N, classes); softmax gives probabilities.
* safetensors: the network's own weights, without the normalisation: a freshly built network
  loads them with `load_state_dict`, and its input is (image / 255 - mean) / std.

Every file carries the same metadata, str -> str (`metadata_props` in ONNX, `taolu.json` among
a TorchScript archive's extra files, the header metadata of safetensors): the taolu format and
version, the class names and the preprocessing as JSON, the model name, and a description of
the input and the output. `taolu predict` reads it to classify with any of the three files.

The export directory is RUN/export/; its default file is model.onnx (model.torchscript.pt,
model.safetensors), and when that exists the first free of model2.onnx, model3.onnx, ... is
taken: an existing file is replaced only when the user names it with `out`.

The module is model_export, not export, so that the package attribute `taolu.export` stays the
function (importing a submodule binds it to the package attribute of its name).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from taolu import checkpoint as ckpt
from taolu.data.loaders import Preprocessing
from taolu.errors import ConfigError, ExportError, TaoluError
from taolu.export_format import (
    FORMATS,
    build_metadata,
)
from taolu.export_writers import first_line, write_checked
from taolu.layout import EXPORT_DIR
from taolu.rebuild import rebuild_network, restore_model

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and how closely it matches the PyTorch model."""

    path: Path
    format: str
    max_abs_diff_batch1: float
    max_abs_diff_batch8: float
    exporter: str  # which path wrote it: "dynamo" or "torchscript" (ONNX), "trace", "safetensors"

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_batch1, self.max_abs_diff_batch8)

    def __str__(self) -> str:
        return (
            f"exported {self.path} ({self.format}); max abs difference from the PyTorch model: "
            f"{self.max_abs_diff_batch1:.2e} at batch 1, {self.max_abs_diff_batch8:.2e} at "
            f"batch 8 (limit {TOLERANCE:.0e})"
        )


# --------------------------------------------------------------------------- files


def run_directory(checkpoint_path: Path) -> Path:
    """The run a checkpoint belongs to (RUN/weights/best.pt -> RUN), else its own folder."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == ckpt.CHECKPOINT_DIR else parent


def default_target(run_dir: Path, format: str) -> Path:
    """RUN/export/model.onnx, or the first free of model2.onnx, model3.onnx, ..."""
    folder = run_dir / EXPORT_DIR
    suffix = FORMATS[format]
    candidate, number = folder / f"model{suffix}", 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = folder / f"model{number}{suffix}"
    return candidate


def _claim(temporary: Path, target: Path, run_dir: Path, format: str) -> Path:
    """Give the checked file a default name without ever replacing an existing file, even one
    that appeared since the name was chosen: a hard link fails when the name is taken."""
    while True:
        try:
            os.link(temporary, target)
            return target
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not (target.exists() or target.is_symlink()):
                os.replace(temporary, target)
                return target
        target = default_target(run_dir, format)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------- export


def _restore_for_export(state: dict[str, Any], model: nn.Module | None) -> nn.Module:
    """The checkpoint's network on the CPU in float32 eval mode (the user's own module is
    copied first, so export leaves it where it was)."""
    if model is not None:
        model = copy.deepcopy(model)
    return restore_model(state, model).cpu().float().eval()


def _fresh_network(state: dict[str, Any], model: nn.Module | None) -> nn.Module:
    """An untouched network of the same shape, for reloading the safetensors file into."""
    return copy.deepcopy(model).cpu() if model is not None else rebuild_network(state)


def _check_target(target: Path, source: Path, format: str) -> None:
    """Refuse an `out` that would replace a run's checkpoint (the one exported, any taolu
    checkpoint, or any file in a run's weights/ folder: resume and eval read those), or that
    lacks the format's suffix (predict tells the formats by it, TorchScript by it alone)."""
    if target.is_dir():
        raise ConfigError(f"option 'out': {target} is a folder; name the file to write")
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"option 'out': {target} is the checkpoint being exported")
    folder = target.parent.resolve()
    in_run = folder.name == ckpt.CHECKPOINT_DIR and any(
        (folder / name).exists() for name in (ckpt.BEST_NAME, ckpt.LAST_NAME)
    )
    if in_run or ckpt.is_checkpoint_file(target):
        raise ConfigError(
            f"option 'out': {target} is a taolu checkpoint or lies in a run's "
            f"{ckpt.CHECKPOINT_DIR}/ folder; an export never replaces a run's checkpoints "
            "(resume and eval need them): name a file elsewhere, or leave --out out to write "
            "into RUN/export/"
        )
    if not target.name.lower().endswith(FORMATS[format]):
        raise ConfigError(
            f"option 'out': name the {format} file *{FORMATS[format]} (predict recognises an "
            f"export by its name); got {target.name}"
        )


def export(
    run_or_checkpoint: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    model: nn.Module | None = None,
    checkpoint: str = "best",
) -> ExportResult:
    """Export a run's `best` (or `last`) checkpoint, or a checkpoint file, as `format` (onnx,
    torchscript or safetensors) and check it against the PyTorch model at batch 1 and 8.

    `out` names the file (an existing one is replaced only then); without it the file goes to
    RUN/export/model.<ext>, or model2.<ext>, ... when that exists. A run trained with your own
    nn.Module needs it passed back as `model` (taolu never imports code from a checkpoint).
    Raises ExportError (a TaoluError), leaving no file, when the outputs differ by more than
    1e-4.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"option 'format': {format!r} is not allowed; use one of {', '.join(FORMATS)}"
        )
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"option 'checkpoint': {checkpoint!r} is not allowed; use best or last")
    source = ckpt.find_checkpoint(run_or_checkpoint, f"{checkpoint}.pt")
    target = None if out is None else Path(out).expanduser()
    if target is not None:
        _check_target(target, source, format)  # before the work: a refusal costs nothing
    state = ckpt.load_checkpoint(source)
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    network = _restore_for_export(state, model)  # refuses a model it cannot rebuild
    fresh = _fresh_network(state, model) if format == "safetensors" else None
    metadata = build_metadata(state, normalized_inside=format != "safetensors")

    if target is None:
        target = default_target(run_directory(source), format)
    target.parent.mkdir(parents=True, exist_ok=True)

    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        exporter, differences = write_checked(
            format, network, fresh, preprocessing, temporary, metadata
        )
        _fsync(temporary)
        worst = max(differences)
        if not worst <= TOLERANCE:  # NaN fails too
            raise ExportError(
                f"refused: the exported {format} model's outputs differ from the PyTorch "
                f"model's by up to {worst:.3g} (batch 1: {differences[0]:.3g}, batch 8: "
                f"{differences[1]:.3g}); the limit is {TOLERANCE:g}. Nothing was written to "
                f"{target}. A forward() that depends on Python state or on the input's values "
                "in Python cannot be exported faithfully."
            )
        if out is None:
            target = _claim(temporary, target, run_directory(source), format)
        else:
            os.replace(temporary, target)  # the user named this file: theirs to replace
    except TaoluError:
        raise
    except Exception as error:
        raise ExportError(f"{format} export failed: {first_line(error)}") from error
    finally:
        temporary.unlink(missing_ok=True)
    return ExportResult(
        path=target,
        format=format,
        max_abs_diff_batch1=differences[0],
        max_abs_diff_batch8=differences[1],
        exporter=exporter,
    )
