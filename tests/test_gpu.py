"""Training end to end on a CUDA GPU: device choice, each precision, channels_last, compile, the
cached image-folder path with batch augmentation on the GPU, and a GPU checkpoint used on the
CPU. Skipped where torch sees no CUDA GPU; benchmarks/gpu.sh runs them with `-m cuda`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import taolu
from taolu.checkpoint import load_checkpoint
from taolu.data.loaders import BatchTransform, Preprocessing

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

QUIET = {"verbose": False, "progress": False}


def bf16_on_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def assert_trained_finite(result: taolu.TrainResult) -> None:
    """Every epoch's losses are numbers and no batch was left out for a NaN loss."""
    assert result.history
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]), row
    assert result.summary.get("skipped_batches", 0) == 0


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> taolu.TrainResult:
    """The default net on the embedded digits with every device/precision choice left to
    taolu (device auto, precision auto)."""
    out = tmp_path_factory.mktemp("cuda_run")
    return taolu.train(data="digits", epochs=2, out=str(out), **QUIET)


def test_auto_device_trains_on_the_gpu(cuda_run):
    assert cuda_run.summary["device"].startswith("cuda")
    assert next(cuda_run.model.parameters()).is_cuda
    assert cuda_run.summary["precision"] == ("bf16" if bf16_on_gpu() else "fp16")
    assert_trained_finite(cuda_run)


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_each_precision_trains_to_a_finite_loss(tmp_path, precision):
    if precision == "bf16" and not bf16_on_gpu():
        pytest.skip("this GPU has no native bf16")
    result = taolu.train(
        data="digits", epochs=2, device="cuda", precision=precision, out=str(tmp_path), **QUIET
    )
    expected = precision if precision != "auto" else ("bf16" if bf16_on_gpu() else "fp16")
    assert result.summary["precision"] == expected
    assert result.summary["device"].startswith("cuda")
    assert_trained_finite(result)
    scaler = load_checkpoint(result.last_checkpoint)["grad_scaler"]
    if expected == "fp16":  # fp16 gradients need loss scaling; its state is checkpointed
        assert "scale" in scaler and 0 < float(scaler["scale"]) < math.inf
    else:  # bf16 has fp32's range: no scaler
        assert not scaler


@pytest.mark.parametrize("channels_last", ["on", "off"])
def test_channels_last_sets_the_gpu_weights_layout(tmp_path, channels_last):
    result = taolu.train(
        data="digits",
        epochs=1,
        device="cuda",
        channels_last=channels_last,
        out=str(tmp_path),
        **QUIET,
    )
    assert_trained_finite(result)
    # Only filters with more than one input channel tell the two layouts apart.
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    assert convs
    for conv in convs:
        assert conv.weight.is_cuda
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (
            channels_last == "on"
        )
        assert conv.weight.is_contiguous() == (channels_last == "off")


def test_compiled_model_trains_and_saves_plain_weights(tmp_path):
    torch._dynamo.reset()  # no compiled graphs carried over from another test
    result = taolu.train(
        data="digits", epochs=2, device="cuda", compile=True, out=str(tmp_path), **QUIET
    )
    assert_trained_finite(result)
    # The checkpoint holds the model's own state dict, not the compiled wrapper's.
    state = load_checkpoint(result.best_checkpoint)
    assert not any(key.startswith("_orig_mod.") for key in state["model"])
    # ...so the uncompiled net rebuilt by `evaluate` scores what the compiled one did.
    evaluated = taolu.evaluate(result.run_dir, device="cuda")
    assert evaluated["acc"] == pytest.approx(result.best_val_acc, abs=0.03)


def test_cached_image_folder_trains_with_shift_flip_on_the_gpu(image_folder: Path, tmp_path):
    result = taolu.train(
        data=str(image_folder),
        epochs=2,
        batch_size=4,
        workers=0,
        device="cuda",
        cache="ram",
        augment="shift-flip",
        out=str(tmp_path / "runs"),
        **QUIET,
    )
    assert_trained_finite(result)
    summary = result.summary
    assert summary["device"].startswith("cuda")
    assert summary["cache"] == "ram"  # decoded once, then sliced in memory: no DataLoader
    assert "augment shift-flip" in summary["recipe"]
    assert (summary["train_samples"], summary["val_samples"]) == (16, 4)


def test_batch_augmentation_on_the_gpu_repeats_the_cpu_one():
    """Shifts and flips are drawn from a CPU generator, so the GPU batch is the CPU batch."""
    preprocessing = Preprocessing(3, (12, 12), "squash", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    outputs = {}
    for device in ("cpu", "cuda"):
        transform = BatchTransform(
            preprocessing, torch.device(device), shift=2, flip=True, channels_last=True
        )
        outputs[device] = transform(images.to(device), torch.Generator().manual_seed(3))
    on_gpu = outputs["cuda"]
    assert on_gpu.is_cuda and on_gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(on_gpu.cpu(), outputs["cpu"], rtol=1e-6, atol=1e-6)
    plain = BatchTransform(preprocessing, torch.device("cuda"))(images.cuda())
    assert not torch.equal(on_gpu, plain)  # the augmentation did move pixels


def test_gpu_checkpoint_predicts_on_the_cpu(cuda_run, digits_arrays):
    images = [np.ascontiguousarray(image) for image in digits_arrays[0][:24]]
    on_cpu = taolu.predict(cuda_run.run_dir, images, topk=10, device="cpu")
    on_gpu = taolu.predict(cuda_run.run_dir, images, topk=10, device="cuda")
    assert len(on_cpu) == len(images) and all("predictions" in item for item in on_cpu)
    for cpu_item, gpu_item in zip(on_cpu, on_gpu, strict=True):
        cpu_probs = {p["class"]: p["probability"] for p in cpu_item["predictions"]}
        gpu_probs = {p["class"]: p["probability"] for p in gpu_item["predictions"]}
        assert cpu_probs.keys() == gpu_probs.keys()
        # fp32 on both; cuDNN may run convolutions in TF32, hence the tolerance.
        for name, probability in cpu_probs.items():
            assert probability == pytest.approx(gpu_probs[name], abs=1e-2)
    evaluated = taolu.evaluate(cuda_run.run_dir, device="cpu")
    assert evaluated["acc"] == pytest.approx(cuda_run.best_val_acc, abs=0.03)
