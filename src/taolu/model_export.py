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

import contextlib
import copy
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu import checkpoint as ckpt
from taolu.data.loaders import Preprocessing
from taolu.errors import ConfigError, ExportError, TaoluError
from taolu.export_format import (
    FORMATS,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAME,
    build_metadata,
)
from taolu.layout import EXPORT_DIR
from taolu.rebuild import rebuild_network, restore_model

TOLERANCE = 1e-4
ONNX_OPSET = 18  # used by the fallback (TorchScript-based) ONNX exporter
CHECK_BATCHES = (1, 8)
EXAMPLE_BATCH = 2  # traced at 2 so that both checked batch sizes differ from it


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


class Normalized(nn.Module):
    """The network with taolu's normalisation in front of it: takes images in 0..1."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)


class FixedAdaptivePool2d(nn.Module):
    """An adaptive max/avg pool for one known input size, as slices: the same bins as torch's
    (start floor(i*in/out), end ceil((i+1)*in/out)), in ops every ONNX exporter handles.
    ONNX has no adaptive max pool and no adaptive average pool whose output does not divide
    the input; fastcnn pools 4x4 (8 px digits) to 3x3."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], mode: str):
        super().__init__()
        self.mode = mode
        self.rows = _bins(in_size[0], out_size[0])
        self.cols = _bins(in_size[1], out_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for top, bottom in self.rows:
            cells = []
            for left, right in self.cols:
                cell = x[:, :, top:bottom, left:right]
                cells.append(cell.amax(dim=(2, 3)) if self.mode == "max" else cell.mean(dim=(2, 3)))
            rows.append(torch.stack(cells, dim=-1))
        return torch.stack(rows, dim=-2)


def _bins(size: int, count: int) -> list[tuple[int, int]]:
    return [(math.floor(i * size / count), math.ceil((i + 1) * size / count)) for i in range(count)]


def onnx_friendly(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose adaptive 2-D pools, at the input size `example` gives them, are
    made of slices where ONNX cannot express them (the output does not divide the input)."""
    model = copy.deepcopy(model)
    pools = (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
    sizes: dict[str, tuple[int, int]] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, inputs: tuple, _output: Any) -> None:
            sizes[name] = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

        return hook

    hooks = [
        module.register_forward_hook(recorder(name))
        for name, module in model.named_modules()
        if isinstance(module, pools)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, in_size in sizes.items():
        pool = model.get_submodule(name)
        if getattr(pool, "return_indices", False):
            continue
        wanted = (
            pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        )
        out_size = tuple(in_size[i] if wanted[i] is None else int(wanted[i]) for i in range(2))
        if all(side % out == 0 for side, out in zip(in_size, out_size, strict=True)):
            continue  # torch's own ONNX mapping handles these (global or even pooling)
        mode = "max" if isinstance(pool, nn.AdaptiveMaxPool2d) else "avg"
        model.set_submodule(name, FixedAdaptivePool2d(in_size, out_size, mode))
    return model


# --------------------------------------------------------------------------- metadata


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters: their warnings, progress prints and torch's log records."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch"))]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _max_difference(expected: torch.Tensor, got: Any) -> float:
    got = torch.as_tensor(got).float()
    if got.shape != expected.shape:
        raise ExportError(
            f"the exported model gives outputs of shape {tuple(got.shape)}, the PyTorch model "
            f"{tuple(expected.shape)}"
        )
    return float((got - expected).abs().max()) if got.numel() else 0.0


def _write_onnx(
    wrapped: nn.Module, example: torch.Tensor, target: Path, metadata: dict[str, str]
) -> str:
    """Export with torch's default (torch.export-based) exporter, falling back to the
    TorchScript-based one for a model torch.export cannot capture; returns which one wrote."""
    import onnx

    exportable = onnx_friendly(wrapped, example)
    failures = []
    proto = None
    exporter = "dynamo"
    with _quiet():
        try:
            program = torch.onnx.export(
                exportable,
                (example,),
                None,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
            )
            proto = program.model_proto
        except Exception as error:  # torch.export refuses many a user's forward
            failures.append(f"torch.export-based exporter: {_first_line(error)}")
        if proto is None:
            exporter = "torchscript"
            buffer = io.BytesIO()
            try:
                torch.onnx.export(
                    exportable,
                    (example,),
                    buffer,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=ONNX_OPSET,
                )
                proto = onnx.load_from_string(buffer.getvalue())
            except Exception as error:
                failures.append(f"TorchScript-based exporter: {_first_line(error)}")
    if proto is None:
        raise ExportError("ONNX export failed; " + "; ".join(failures))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"taolu export: input {json.loads(metadata['input'])}; output "
        f"{json.loads(metadata['output'])}"
    )
    onnx.save_model(proto, str(target))
    return exporter


def _check_onnx(target: Path, inputs: list[torch.Tensor], expected: list[torch.Tensor]) -> list:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [
        _max_difference(want, session.run(None, {name: x.numpy()})[0])
        for x, want in zip(inputs, expected, strict=True)
    ]


def _write_torchscript(
    wrapped: nn.Module, example: torch.Tensor, target: Path, metadata: dict[str, str]
) -> str:
    with _quiet(), torch.no_grad():
        try:
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        except Exception as error:
            raise ExportError(
                f"TorchScript export (torch.jit.trace) failed: {_first_line(error)}"
            ) from None
        torch.jit.save(traced, str(target), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return "trace"


def _check_torchscript(
    target: Path, inputs: list[torch.Tensor], expected: list[torch.Tensor]
) -> list:
    with _quiet():
        loaded = torch.jit.load(str(target), map_location="cpu")
    with torch.no_grad():
        return [_max_difference(want, loaded(x)) for x, want in zip(inputs, expected, strict=True)]


def _write_safetensors(network: nn.Module, target: Path, metadata: dict[str, str]) -> str:
    from safetensors.torch import save

    # Own, contiguous copies: safetensors refuses tensors that share storage (tied weights).
    weights = {
        key: value.detach().cpu().contiguous().clone()
        for key, value in network.state_dict().items()
    }
    target.write_bytes(save(weights, metadata=metadata))
    return "safetensors"


def _check_safetensors(
    target: Path,
    fresh: nn.Module,
    preprocessing: Preprocessing,
    inputs: list[torch.Tensor],
    expected: list[torch.Tensor],
) -> list:
    from safetensors.torch import load_file

    try:
        fresh.load_state_dict(load_file(str(target)))
    except RuntimeError as error:
        raise ExportError(f"the written weights do not load back: {_first_line(error)}") from None
    reloaded = Normalized(fresh.float().eval(), preprocessing.mean, preprocessing.std).eval()
    with torch.no_grad():
        return [
            _max_difference(want, reloaded(x)) for x, want in zip(inputs, expected, strict=True)
        ]


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
    wrapped = Normalized(network, preprocessing.mean, preprocessing.std).eval()
    metadata = build_metadata(state, normalized_inside=format != "safetensors")

    if target is None:
        target = default_target(run_directory(source), format)
    target.parent.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    shape = (preprocessing.channels, *preprocessing.size)
    example = torch.rand(EXAMPLE_BATCH, *shape, generator=generator)
    inputs = [torch.rand(batch, *shape, generator=generator) for batch in CHECK_BATCHES]
    with torch.no_grad():
        expected = [wrapped(x).float() for x in inputs]

    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if format == "onnx":
            exporter = _write_onnx(wrapped, example, temporary, metadata)
            differences = _check_onnx(temporary, inputs, expected)
        elif format == "torchscript":
            exporter = _write_torchscript(wrapped, example, temporary, metadata)
            differences = _check_torchscript(temporary, inputs, expected)
        else:
            exporter = _write_safetensors(network, temporary, metadata)
            differences = _check_safetensors(temporary, fresh, preprocessing, inputs, expected)
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
        raise ExportError(f"{format} export failed: {_first_line(error)}") from error
    finally:
        temporary.unlink(missing_ok=True)
    return ExportResult(
        path=target,
        format=format,
        max_abs_diff_batch1=differences[0],
        max_abs_diff_batch8=differences[1],
        exporter=exporter,
    )
