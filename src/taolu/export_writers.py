"""Each export format's writer and its check: the file is written, loaded back by the
runtime that will read it (onnxruntime, torch.jit, safetensors into a fresh network), and
its outputs compared with the PyTorch model's on random images at batch 1 and batch 8.
model_export decides where the file goes; this module only writes and measures."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.data.loaders import Preprocessing
from taolu.errors import ExportError
from taolu.export_format import INPUT_NAME, METADATA_FILE, OUTPUT_NAME

ONNX_OPSET = 18  # used by the fallback (TorchScript-based) ONNX exporter
CHECK_BATCHES = (1, 8)
EXAMPLE_BATCH = 2  # traced at 2 so that both checked batch sizes differ from it


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


def first_line(error: BaseException) -> str:
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
            failures.append(f"torch.export-based exporter: {first_line(error)}")
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
                failures.append(f"TorchScript-based exporter: {first_line(error)}")
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
                f"TorchScript export (torch.jit.trace) failed: {first_line(error)}"
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
        raise ExportError(f"the written weights do not load back: {first_line(error)}") from None
    reloaded = Normalized(fresh.float().eval(), preprocessing.mean, preprocessing.std).eval()
    with torch.no_grad():
        return [
            _max_difference(want, reloaded(x)) for x, want in zip(inputs, expected, strict=True)
        ]


def write_checked(
    format: str,
    network: nn.Module,
    fresh: nn.Module | None,
    preprocessing: Preprocessing,
    path: Path,
    metadata: dict[str, str],
) -> tuple[str, list[float]]:
    """Write `network` (CPU, float32, eval) as `format` to `path`, load it back and return
    (which exporter wrote it, the largest output difference at each of CHECK_BATCHES).
    ONNX and TorchScript hold the normalisation inside; safetensors holds the bare weights,
    loaded back into `fresh`, an untouched network of the same shape."""
    wrapped = Normalized(network, preprocessing.mean, preprocessing.std).eval()
    generator = torch.Generator().manual_seed(0)
    shape = (preprocessing.channels, *preprocessing.size)
    example = torch.rand(EXAMPLE_BATCH, *shape, generator=generator)
    inputs = [torch.rand(batch, *shape, generator=generator) for batch in CHECK_BATCHES]
    with torch.no_grad():
        expected = [wrapped(x).float() for x in inputs]
    if format == "onnx":
        exporter = _write_onnx(wrapped, example, path, metadata)
        return exporter, _check_onnx(path, inputs, expected)
    if format == "torchscript":
        exporter = _write_torchscript(wrapped, example, path, metadata)
        return exporter, _check_torchscript(path, inputs, expected)
    exporter = _write_safetensors(network, path, metadata)
    return exporter, _check_safetensors(path, fresh, preprocessing, inputs, expected)
