"""The learning-rate range test: schedule, stop rule, suggestion, restoration and its files."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from taolu.data.bundle import ImageTensors
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.engine.lr_find import LrSweep, suggest_lr, sweep_lr, write_lr_sweep
from taolu.engine.precision import Precision
from taolu.engine.step import Stepper

CPU = torch.device("cpu")
CLASSES = 4


def make_batches(count: int = 128, batch_size: int = 16) -> Batches:
    """Learnable 8x8 images: each class lights up its own 4x4 quadrant over strong noise, and
    one label in eight is wrong, so the loss cannot reach 0 and a too-high lr shows."""
    maker = torch.Generator().manual_seed(0)
    labels = torch.arange(count) % CLASSES
    images = torch.randint(0, 160, (count, 1, 8, 8), generator=maker, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 60
    labels[::8] = (labels[::8] + 1) % CLASSES
    split = ImageTensors(images, labels.to(torch.int64))
    return Batches(split, batch_size, CPU, shuffle=True)


def make_transform() -> BatchTransform:
    # What pipeline.batch_transforms builds with augment "none": normalisation only.
    return BatchTransform(Preprocessing(1, (8, 8), "squash", (0.3,), (0.25,)), CPU)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.1),  # draws from torch's global RNG, which the sweep must give back
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, CLASSES),
    )


def make_optimizer(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    head, body = model[-1], [model[0], model[1]]
    return torch.optim.SGD(
        [
            {"params": [p for layer in body for p in layer.parameters()], "lr": lr * 0.1},
            {"params": list(head.parameters()), "lr": lr},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )


def run(model=None, optimizer=None, batches=None, loss_fn=None, **options) -> LrSweep:
    model = model if model is not None else make_model()
    optimizer = optimizer if optimizer is not None else make_optimizer(model)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    stepper = Stepper(model, loss_fn, optimizer, Precision("fp32", "cpu"), make_transform())
    return sweep_lr(
        stepper,
        batches if batches is not None else make_batches(),
        torch.Generator().manual_seed(1),
        **options,
    )


def train_a_little(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A few real steps, so the optimizer has momentum buffers for the sweep to disturb."""
    batches, transform, loss_fn = make_batches(), make_transform(), nn.CrossEntropyLoss()
    for images, labels in batches.iterate(torch.Generator().manual_seed(2)):
        optimizer.zero_grad()
        loss_fn(model(transform(images)), labels).backward()
        optimizer.step()


@pytest.fixture(scope="module")
def sweep() -> LrSweep:
    # 60 steps over 8 batches an epoch: the sweep has to go round the data several times.
    return run(start_lr=1e-4, end_lr=1.0, steps=60, diverge_factor=1e9)


def test_lrs_rise_geometrically_from_start_to_end(sweep):
    assert len(sweep.lrs) == len(sweep.losses) == len(sweep.smoothed) == 60
    assert not sweep.stopped_early
    assert sweep.lrs[0] == pytest.approx(1e-4)
    assert sweep.lrs[-1] == pytest.approx(1.0)
    assert max(sweep.lrs) <= 1.0 * (1 + 1e-12)
    ratios = np.array(sweep.lrs[1:]) / np.array(sweep.lrs[:-1])
    assert np.allclose(ratios, (1.0 / 1e-4) ** (1 / 59))


def test_smoothed_loss_is_a_centred_moving_average(sweep):
    half = max(2, len(sweep.losses) // 25)
    for index, smoothed in enumerate(sweep.smoothed):
        window = sweep.losses[max(index - half, 0) : index + half + 1]
        assert smoothed == pytest.approx(sum(window) / len(window))
    assert all(math.isfinite(value) for value in sweep.losses)


def test_the_sweep_learns_and_suggests_an_lr_before_the_climb(sweep):
    lowest = int(np.argmin(sweep.smoothed))
    assert sweep.smoothed[lowest] < 0.7 * sweep.smoothed[0]  # the data is learnable
    assert sweep.lrs[0] <= sweep.suggested_lr <= sweep.lrs[lowest]
    assert sweep.suggested_lr == pytest.approx(suggest_lr(sweep.lrs, sweep.losses))


def falling_then_climbing(lrs: list[float], low: float, climb: float) -> list[float]:
    """2.3 until 1e-4, down to 1.0 at `low`, flat, then up steeply from `climb`."""
    logs = np.log10(lrs)
    fall = np.clip((logs + 4) / (np.log10(low) + 4), 0, 1)
    rise = np.where(logs > np.log10(climb), 40 * (logs - np.log10(climb)) ** 2, 0.0)
    return list(2.3 - 1.3 * fall + rise)


def test_a_falling_curve_gives_the_mean_of_its_lowest_point_and_a_tenth_of_the_climb():
    lrs = list(np.logspace(-5, 0, 51))
    curve = falling_then_climbing(lrs, low=1e-2, climb=3e-2)
    suggested = suggest_lr(lrs, curve)
    # between the lowest point (~1e-2) and a tenth of where the loss climbs past 1.2x the
    # start, on the swept grid
    assert 2e-3 < suggested < 1.2e-2


def test_a_noise_dip_at_the_start_is_never_the_answer():
    # The 120-photo folder: flat up to 1e-3, a blow-up above it, and a dip in the
    # first few noisy steps; the old steepest-slope rule answered 3.68e-06.
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-6, 1, 100))
    curve = [
        1.1 + rng.normal(0, 0.03) + (30 * (np.log10(lr) + 3) ** 2 if lr > 1e-3 else 0.0)
        for lr in lrs
    ]
    curve[3:6] = [0.7, 0.7, 0.7]
    suggested = suggest_lr(lrs, curve)
    assert 1e-5 <= suggested <= 1e-3 / 10  # flat: well below the blow-up, far above the dip
    assert suggested == pytest.approx(lrs[np.argmax(np.array(curve) > 1.32)] / 50, rel=0.3)


def test_the_band_bounds_the_suggestion_and_the_sweep_bounds_the_band():
    lrs = list(np.logspace(-5, 0, 51))
    curve = falling_then_climbing(lrs, low=1e-2, climb=3e-2)
    assert suggest_lr(lrs, curve, band=(1e-4, 1e-3)) == pytest.approx(1e-3)
    assert suggest_lr(lrs, curve, band=(0.05, 0.1)) == pytest.approx(0.05)
    assert suggest_lr(lrs, curve, band=(10.0, 20.0)) == pytest.approx(lrs[-1])
    assert math.isnan(suggest_lr([], []))


def test_weights_optimizer_modes_and_rng_are_restored_bit_for_bit():
    model = make_model()
    optimizer = make_optimizer(model)
    train_a_little(model, optimizer)
    model.eval()
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    state = {
        key: {name: value.clone() for name, value in values.items()}
        for key, values in optimizer.state_dict()["state"].items()
    }
    groups = [dict(group, params=None) for group in optimizer.param_groups]
    rng = torch.get_rng_state()

    result = run(model, optimizer, start_lr=1e-3, end_lr=1.0, steps=20, diverge_factor=1e9)

    assert len(result.lrs) == 20
    after = model.state_dict()
    assert after.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(after[name], value), name
    restored = optimizer.state_dict()["state"]
    assert restored.keys() == state.keys() and state
    for key, values in state.items():
        for name, value in values.items():
            assert torch.equal(restored[key][name], value), (key, name)
    assert [dict(group, params=None) for group in optimizer.param_groups] == groups
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.005, 0.05])
    assert not any(module.training for module in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_restored_also_when_the_sweep_raises():
    model = make_model()
    optimizer = make_optimizer(model)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    calls = 0

    def failing_loss(logits, labels):
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(logits, labels)

    with pytest.raises(RuntimeError, match="boom"):
        run(model, optimizer, loss_fn=failing_loss, start_lr=1e-2, end_lr=10.0, steps=10)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert optimizer.state_dict()["state"] == {}
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.005, 0.05])
    assert model.training  # a new module trains; the sweep put that back as it was


def test_a_huge_end_lr_diverges_and_stops_early():
    result = run(start_lr=1e-3, end_lr=1e4, steps=100)
    assert result.stopped_early
    assert 5 < len(result.lrs) < 100
    assert all(math.isfinite(value) for value in result.losses + result.smoothed)
    assert result.lrs[0] <= result.suggested_lr <= result.lrs[-1]


def test_param_group_ratios_are_kept_during_the_sweep():
    model = make_model()
    optimizer = make_optimizer(model)
    seen: list[list[float]] = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append([g["lr"] for g in optimizer.param_groups])
    )
    result = run(model, optimizer, start_lr=1e-4, end_lr=1e-1, steps=12)
    assert len(seen) == 12
    # The sweep's lr is the base lr (the optimizer's own, here the head's): the backbone
    # keeps its tenth of it, so the suggestion is what --lr would be.
    for (body, head), lr in zip(seen, result.lrs, strict=True):
        assert body == pytest.approx(lr / 10)
        assert head == pytest.approx(lr)


def test_fewer_batches_than_steps_goes_round_the_data():
    batches = make_batches(count=20, batch_size=8)  # 2 batches an epoch, the odd 4 dropped
    assert len(batches) == 3
    result = run(batches=batches, start_lr=1e-4, end_lr=1e-2, steps=25)
    assert len(result.losses) == 25 and not result.stopped_early


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        run(start_lr=1.0, end_lr=0.1, steps=10)
    with pytest.raises(ValueError):
        run(steps=1)


def test_write_lr_sweep_writes_a_png_and_a_csv(sweep, tmp_path):
    csv_path, png_path = write_lr_sweep(sweep, tmp_path / "run")
    assert csv_path == tmp_path / "run" / "lr_find.csv"
    assert png_path == tmp_path / "run" / "lr_find.png"
    data = png_path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "lr", "loss", "smoothed_loss"]
    assert len(rows) == len(sweep.lrs) + 1
    assert [int(row[0]) for row in rows[1:]] == list(range(1, len(sweep.lrs) + 1))
    assert [float(row[1]) for row in rows[1:]] == sweep.lrs
    assert [float(row[2]) for row in rows[1:]] == sweep.losses
    assert [float(row[3]) for row in rows[1:]] == sweep.smoothed
