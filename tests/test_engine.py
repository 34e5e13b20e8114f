"""The training engine's knobs end to end on tiny data: optimizers, schedules, gradient
accumulation and clipping, EMA, mixup/cutmix, imbalance handling, the NaN guard,
determinism, per-class metrics, the lr finder and the data's default recipe."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import taolu
from taolu.checkpoint import load_checkpoint
from taolu.data.bundle import ImageTensors
from taolu.data.loaders import Batches, BatchTransform, Preprocessing, balanced_sample_weights
from taolu.engine.loop import train_one_epoch
from taolu.engine.optim import (
    LrSchedule,
    balanced_class_weights,
    base_lr,
    build_optimizer,
    lr_shares,
)
from taolu.engine.precision import Precision
from taolu.engine.step import Stepper, build_mix

CLASSES = [str(d) for d in range(10)]


def digits(tmp_path, quiet, **options):
    options = {"data": "digits", "epochs": 1, "out": str(tmp_path), "device": "cpu", **options}
    return taolu.train(**quiet, **options)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class LinearNet(nn.Module):
    """No BatchNorm, so a batch split in two gives the same gradient as the whole batch."""

    def __init__(self, inputs=64, classes=10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x):
        return self.fc(self.flatten(x))


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "nadam", "Adagrad"])
def test_every_named_torch_optimizer_trains(tmp_path, quiet, name):
    result = digits(tmp_path, quiet, optimizer=name, lr=0.01)
    assert math.isfinite(result.history[-1]["train_loss"])
    saved = load_checkpoint(result.last_checkpoint)
    assert saved["optimizer"]["param_groups"], "optimizer state is checkpointed"


def test_an_unknown_or_unfit_optimizer_is_refused_with_the_list(tmp_path, quiet):
    for name in ("lion", "lbfgs"):
        with pytest.raises(taolu.ConfigError, match="optimizer") as caught:
            digits(tmp_path, quiet, optimizer=name)
        assert "nadam" in str(caught.value)


def test_weight_decay_skips_biases_and_norms_and_nesterov_is_a_switch():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    optimizer = build_optimizer(
        model, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=False
    )
    for group in optimizer.param_groups:
        shapes = {parameter.ndim for parameter in group["params"]}
        assert group["weight_decay"] == (1e-3 if shapes != {1} else 0.0)
        assert group["nesterov"] is False
    assert build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=0).param_groups[0][
        "nesterov"
    ]


def test_a_wide_linear_layer_learns_at_its_fan_in_share_of_the_lr():
    wide, narrow = nn.Linear(4096, 8), nn.Linear(8, 3)
    conv = nn.Conv2d(512, 4, 3)  # 4,608 inputs, but a convolution: left alone
    model = nn.Sequential(conv, nn.Flatten(), wide, nn.ReLU(), narrow)
    optimizer = build_optimizer(
        model, "adamw", lr=0.01, momentum=0.9, weight_decay=1e-3, dense_fan_in_rule=True
    )
    lr_of = {
        id(parameter): group["lr"]
        for group in optimizer.param_groups
        for parameter in group["params"]
    }
    assert lr_of[id(wide.weight)] == pytest.approx(0.01 * 1024 / 4096)
    assert lr_of[id(wide.bias)] == lr_of[id(narrow.weight)] == lr_of[id(conv.weight)] == 0.01
    # the base lr (what --lr sets, what records show) reads through the shares
    assert lr_shares(optimizer)[0] in (1.0, 0.25) and base_lr(optimizer) == pytest.approx(0.01)
    for group in optimizer.param_groups:
        group["lr"] *= 0.5  # as a schedule moves every group alike
    assert base_lr(optimizer) == pytest.approx(0.005)
    plain = build_optimizer(model, "adamw", lr=0.01, momentum=0.9, weight_decay=1e-3)
    assert {group["lr"] for group in plain.param_groups} == {0.01}


# --------------------------------------------------------------------------- schedules


def lr_trace(name, steps=40, per_epoch=10, feed=None, **options):
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = LrSchedule(optimizer, name, total_steps=steps, steps_per_epoch=per_epoch, **options)
    lrs = []
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        if (step + 1) % per_epoch == 0:
            schedule.end_epoch(feed[(step + 1) // per_epoch - 1] if feed else 0.0)
    return lrs


def test_cosine_with_warmup_rises_linearly_then_anneals_to_zero():
    lrs = lr_trace("cosine", warmup_epochs=1)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[:10] == sorted(lrs[:10])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[10:] == sorted(lrs[10:], reverse=True)
    assert lrs[-1] < 0.01


def test_step_schedule_multiplies_by_gamma_every_step_epochs():
    lrs = lr_trace("step", step_epochs=1, gamma=0.5)
    assert [lrs[i] for i in (0, 9, 10, 20, 30)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])


def test_plateau_cuts_the_lr_only_after_patience_epochs_without_progress():
    lrs = lr_trace("plateau", plateau_patience=1, gamma=0.1, feed=[0.5, 0.6, 0.6, 0.6])
    # improving at epoch 2, flat at 3 (patience 1 is used up), flat at 4: cut
    assert lrs[:30] == [1.0] * 30
    assert lrs[-1] == pytest.approx(1.0)  # the cut lands after the fourth epoch
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = LrSchedule(optimizer, "plateau", total_steps=9, steps_per_epoch=3)
    schedule.plateau.patience = 0
    for value in (0.5, 0.4, 0.3):
        schedule.end_epoch(value)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_constant_schedule_holds_the_lr():
    assert set(lr_trace("constant")) == {1.0}


def test_step_and_plateau_schedules_run_end_to_end(tmp_path, quiet):
    stepped = digits(tmp_path, quiet, scheduler="step", step_epochs=1, lr_gamma=0.5, epochs=3)
    assert [row["lr"] for row in stepped.history] == pytest.approx([0.025, 0.0125, 0.00625])
    plateau = digits(tmp_path, quiet, scheduler="plateau", epochs=2, monitor="val/loss")
    assert plateau.history[0]["lr"] == pytest.approx(0.05)


# --------------------------------------------------------------------------- one epoch, unit


def tiny_batches(count=64, batch_size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 10
    batches = Batches(ImageTensors(images, labels), batch_size, torch.device("cpu"), shuffle=True)
    preprocessing = Preprocessing(1, (8, 8), "squash", mean=(0.5,), std=(0.25,))
    return batches, BatchTransform(preprocessing, torch.device("cpu"))


def one_epoch(model, batches, transform, lr=1.0, **step_options):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = LrSchedule(optimizer, "constant", total_steps=len(batches), steps_per_epoch=1)
    stepper = Stepper(
        model, nn.CrossEntropyLoss(), optimizer, Precision("fp32", "cpu"), transform, **step_options
    )
    return train_one_epoch(stepper, batches, schedule, torch.Generator().manual_seed(0))


def test_gradient_clipping_bounds_the_step_and_the_norm_is_reported():
    batches, transform = tiny_batches()
    torch.manual_seed(0)
    model = LinearNet()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    result = one_epoch(model, batches, transform, clip_grad=1e-3)
    change = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert change.norm() <= 1e-3 * 1.0001  # lr 1, no momentum: the step is the gradient
    assert result.grad_norm > 1e-3  # reported before clipping


def test_accumulated_gradients_equal_one_big_batch(tmp_path, quiet, digits_arrays, array_dataset):
    images, labels = digits_arrays
    common = dict(
        data=array_dataset(images[:256], labels[:256]),
        val_data=array_dataset(images[256:320], labels[256:320]),
        classes=CLASSES,
        epochs=2,
        out=str(tmp_path),
        device="cpu",
        precision="fp32",
        augment="none",
        scheduler="constant",
        momentum=0.0,
        normalize="none",
        **quiet,
    )
    torch.manual_seed(0)
    whole = taolu.train(model=LinearNet(), batch_size=64, name="whole", **common)
    torch.manual_seed(0)
    split = taolu.train(model=LinearNet(), batch_size=32, accumulate=2, name="split", **common)
    first = load_checkpoint(whole.last_checkpoint)
    second = load_checkpoint(split.last_checkpoint)
    assert first["step"] == second["step"] == 8  # optimizer steps, not batches
    for key in first["model"]:
        assert torch.allclose(first["model"][key], second["model"][key], atol=1e-6), key


# --------------------------------------------------------------------------- EMA


def test_ema_weights_are_evaluated_checkpointed_and_delivered(tmp_path, quiet):
    result = digits(tmp_path, quiet, ema=0.9, epochs=2)
    state = load_checkpoint(result.best_checkpoint)
    assert state["ema_updates"] == state["step"]
    assert any(
        not torch.equal(state["model"][key], state["ema_model"][key]) for key in state["model"]
    )
    delivered = {key: value.cpu() for key, value in result.model.state_dict().items()}
    for key, value in state["ema_model"].items():
        assert torch.equal(delivered[key], value), key
    # the logged val acc is the averaged model's: taolu eval (EMA weights) reproduces it
    evaluated = taolu.evaluate(result.run_dir)
    assert evaluated["acc"] == pytest.approx(result.best_val_acc, abs=1e-9)


# --------------------------------------------------------------------------- regularisation


def test_mixup_and_cutmix_give_soft_targets_and_train(tmp_path, quiet):
    mix = build_mix(0.4, 1.0, 10)
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8)
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert build_mix(0.0, 0.0, 10) is None
    result = digits(tmp_path, quiet, mixup=0.2, cutmix=1.0, epochs=2)
    assert math.isfinite(result.history[-1]["train_loss"])


def test_class_weights_are_the_inverse_class_shares():
    labels = torch.tensor([0] * 8 + [1] * 2)
    weights = balanced_class_weights(labels, 3)
    assert weights.tolist() == pytest.approx([10 / (3 * 8), 10 / (3 * 2), 0.0])


def test_balanced_sampler_draws_every_class_about_equally():
    labels = torch.tensor([0] * 90 + [1] * 10)
    images = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    batches = Batches(
        ImageTensors(images, labels),
        100,
        torch.device("cpu"),
        shuffle=True,
        sample_weights=balanced_sample_weights(labels),
    )
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([labels[batches.order(generator)] for _ in range(50)])
    share = (drawn == 1).float().mean().item()
    assert 0.45 < share < 0.55


def test_imbalance_options_train_end_to_end_on_a_folder(
    tmp_path, quiet, make_class_folder, tree_snapshot
):
    root = tmp_path / "skewed"
    make_class_folder(root / "common", 0, 40, seed=1)
    make_class_folder(root / "rare", 1, 8, seed=2)
    before = tree_snapshot(root)
    result = taolu.train(
        data=str(root),
        epochs=2,
        out=str(tmp_path / "runs"),
        class_weights="auto",
        sampler="balanced",
        **quiet,
    )
    assert math.isfinite(result.history[-1]["train_loss"])
    assert set(result.summary["per_class"]) == {"common", "rare"}
    assert tree_snapshot(root) == before


# --------------------------------------------------------------------------- NaN guard


class NanAfter(nn.Module):
    """A small net whose training forward pass number `bad` returns NaN logits."""

    def __init__(self, bad: int):
        super().__init__()
        self.net = LinearNet()
        self.bad, self.calls = bad, 0

    def forward(self, x):
        logits = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                return logits * float("nan")
        return logits


def nan_run(tmp_path, quiet, bad, **options):
    return taolu.train(
        model=NanAfter(bad),
        data="digits",
        epochs=3,
        batch_size=128,
        out=str(tmp_path),
        device="cpu",
        **quiet,
        **options,
    )


def test_nan_stops_within_one_step_and_keeps_the_best_checkpoint(tmp_path, quiet):
    # 1438 training digits at batch 128: 12 batches an epoch; the bad one is in epoch 3.
    with pytest.raises(taolu.TrainingError, match=r"epoch 3, batch 3: the loss became nan") as e:
        nan_run(tmp_path, quiet, bad=27, name="stop", on_nan="stop")
    run_dir = tmp_path / "stop"
    assert str(run_dir / "weights" / "best.pt") in str(e.value)
    assert "--on-nan recover" in str(e.value)
    last = load_checkpoint(run_dir / "weights" / "last.pt")
    best = load_checkpoint(run_dir / "weights" / "best.pt")
    assert last["epoch"] == 2 and best["epoch"] <= 2
    for state in (last, best):
        assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_nan_skip_leaves_the_batch_out_and_counts_it(tmp_path, quiet, caplog):
    result = nan_run(tmp_path, quiet, bad=5, on_nan="skip", name="skip")
    assert result.summary["skipped_batches"] == 1
    assert [row["skipped_batches"] for row in result.history] == [1, 0, 0]
    weights = load_checkpoint(result.last_checkpoint)["model"]
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert "skipped 1 batches" in caplog.text


# --------------------------------------------------------------------------- determinism


def test_deterministic_runs_are_bitwise_identical_and_the_switch_is_restored(tmp_path, quiet):
    options = dict(deterministic=True, epochs=2, ema=0.9, mixup=0.2)
    first = digits(tmp_path, quiet, name="one", **options)
    second = digits(tmp_path, quiet, name="two", **options)
    assert not torch.are_deterministic_algorithms_enabled()
    for which in ("model", "ema_model", "optimizer"):
        a = load_checkpoint(first.last_checkpoint)[which]
        b = load_checkpoint(second.last_checkpoint)[which]
        if which == "optimizer":
            a, b = a["state"], b["state"]
            for key in a:
                for name in a[key]:
                    assert torch.equal(torch.as_tensor(a[key][name]), torch.as_tensor(b[key][name]))
            continue
        for key in a:
            assert torch.equal(a[key], b[key]), f"{which}.{key}"
    assert [row["train_loss"] for row in first.history] == [
        row["train_loss"] for row in second.history
    ]


# --------------------------------------------------------------------------- metrics


def test_per_class_metrics_land_in_summary_csv_and_tensorboard(digits_run):
    summary = json.loads((digits_run.run_dir / "summary.json").read_text())
    matrix = torch.tensor(summary["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert int(matrix.sum()) == summary["val_samples"]
    assert matrix.trace().item() / matrix.sum().item() == pytest.approx(summary["best_val_acc"])
    per_class = summary["per_class"]
    assert list(per_class) == summary["classes"]
    assert sum(scores["support"] for scores in per_class.values()) == summary["val_samples"]
    recalls = [scores["recall"] for scores in per_class.values()]
    best = summary["best_metrics"]
    assert best["val_balanced_acc"] == pytest.approx(sum(recalls) / 10, abs=1e-6)
    f1s = [scores["f1"] for scores in per_class.values()]
    assert best["val_macro_f1"] == pytest.approx(sum(f1s) / 10, abs=1e-6)
    assert best["val_top5_acc"] >= best["val_acc"]

    rows = read_csv(digits_run.run_dir / "metrics.csv")
    for column in ("val_top5_acc", "val_macro_f1", "val_balanced_acc", "grad_norm"):
        assert all(row[column] != "" for row in rows), column
    class_rows = read_csv(digits_run.run_dir / "per_class.csv")
    assert len(class_rows) == len(rows) * 10
    assert set(class_rows[0]) == {"epoch", "class", "precision", "recall", "f1", "support"}

    accumulator = EventAccumulator(str(digits_run.run_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"val/top5_acc", "val/macro_f1", "val/balanced_acc", "train/grad_norm"} <= tags
    assert "val_per_class/f1/3" in tags


@pytest.mark.parametrize("absent_class", [False, True])
def test_class_metrics_agree_with_scikit_learn(absent_class):
    """Per-class precision/recall/F1 (0 where undefined), macro-F1 and balanced accuracy over
    the classes that occur or are predicted, top-5: scikit-learn's figures, batch by batch."""
    from sklearn import metrics as reference

    from taolu.engine.metrics import ClassMetrics

    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (300,), generator=generator)
    if absent_class:  # class 6 never occurs and is never predicted; class 5 is only predicted
        labels[labels >= 5] = 0
    logits = torch.randn(300, 7, generator=generator) + 2.0 * nn.functional.one_hot(labels, 7)
    if absent_class:
        logits[:, 6] = -100.0
        logits[:10, 5] = 100.0
    names = [f"c{index}" for index in range(7)]
    metrics = ClassMetrics(names, torch.device("cpu"))
    for start in range(0, 300, 64):
        metrics.update(logits[start : start + 64], labels[start : start + 64])
    report = metrics.report()

    predicted = logits.argmax(1).numpy()
    truth = labels.numpy()
    precision, recall, f1, support = reference.precision_recall_fscore_support(
        truth, predicted, labels=range(7), zero_division=0
    )
    for index, name in enumerate(names):
        scores = report.per_class[name]
        assert scores["precision"] == pytest.approx(precision[index])
        assert scores["recall"] == pytest.approx(recall[index])
        assert scores["f1"] == pytest.approx(f1[index])
        assert scores["support"] == support[index]
    # Without `labels`, scikit-learn averages over the classes that occur or are predicted.
    expected_f1 = reference.f1_score(truth, predicted, average="macro", zero_division=0)
    assert report.scalars["macro_f1"] == pytest.approx(expected_f1)
    expected_recall = reference.recall_score(truth, predicted, average="macro", zero_division=0)
    assert report.scalars["balanced_acc"] == pytest.approx(expected_recall)
    expected_top5 = reference.top_k_accuracy_score(truth, logits.numpy(), k=5, labels=range(7))
    assert report.scalars["top5_acc"] == pytest.approx(expected_top5)
    assert (
        report.confusion_matrix
        == reference.confusion_matrix(truth, predicted, labels=range(7)).tolist()
    )


def test_top5_is_left_out_below_five_classes_and_cannot_be_monitored(tmp_path, quiet, image_folder):
    result = taolu.train(data=str(image_folder), epochs=1, out=str(tmp_path), **quiet)
    assert "val_top5_acc" not in result.summary["best_metrics"]
    assert read_csv(result.run_dir / "metrics.csv")[0]["val_top5_acc"] == ""
    with pytest.raises(taolu.ConfigError, match="top5"):
        taolu.train(
            data=str(image_folder), epochs=1, out=str(tmp_path), monitor="val/top5_acc", **quiet
        )


def test_monitor_macro_f1_picks_its_best_epoch(tmp_path, quiet):
    result = digits(tmp_path, quiet, epochs=3, monitor="val/macro_f1")
    values = [row["val_macro_f1"] for row in result.history]
    assert load_checkpoint(result.best_checkpoint)["epoch"] == values.index(max(values)) + 1


def test_eval_reports_the_class_metrics(digits_run, cli_main):
    code, out, _ = cli_main("eval", digits_run.run_dir, "--json")
    assert code == 0
    result = json.loads(out)
    assert {"top5_acc", "macro_f1", "balanced_acc", "per_class", "confusion_matrix"} <= set(result)
    code, out, _ = cli_main("eval", digits_run.run_dir)
    assert "macro-F1" in out and "precision" in out


# --------------------------------------------------------------------------- lr finder


def test_lr_find_sweeps_plots_and_suggests_without_training(tmp_path, cli_main):
    code, out, _ = cli_main(
        "train", "--data", "digits", "--lr-find", "--out", tmp_path, "--name", "sweep"
    )
    assert code == 0
    run_dir = tmp_path / "sweep"
    assert (run_dir / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    rows = read_csv(run_dir / "lr_find.csv")
    assert len(rows) > 10
    summary = json.loads((run_dir / "summary.json").read_text())
    suggested = summary["lr_find"]["suggested_lr"]
    assert float(rows[0]["lr"]) <= suggested <= float(rows[-1]["lr"])
    assert f"--lr {suggested:.3g}" in out
    assert not (run_dir / "weights").exists()


# --------------------------------------------------------------------------- recipe


def test_the_recipe_is_printed_and_small_data_gets_a_smaller_batch(
    tmp_path, image_folder, cli_main
):
    code, out, _ = cli_main("train", "--data", image_folder, "--epochs", "1", "--out", tmp_path)
    assert code == 0
    # 16 images: too few for the tuned SGD, so AdamW at a range-tested lr
    assert "taolu: recipe: fastcnn, adamw lr" in out and "from a range test" in out
    assert "batch 16: 16 images give 1 step an epoch" in out
    config = yaml.safe_load((tmp_path / "train" / "config.yaml").read_text())
    assert config["batch_size"] == 16
    code, out, _ = cli_main(
        "train", "--data", image_folder, "--epochs", "1", "--out", tmp_path, "--batch-size", "4"
    )
    assert "batch 4," in out
    assert yaml.safe_load((tmp_path / "train2" / "config.yaml").read_text())["batch_size"] == 4


# --------------------------------------------------------------------------- speed knobs


def test_channels_last_and_compile_switches(tmp_path, quiet):
    plain = digits(tmp_path, quiet, channels_last="off", name="plain")
    assert math.isfinite(plain.history[-1]["train_loss"])
    user = taolu.train(
        model=LinearNet(),
        data="digits",
        epochs=1,
        out=str(tmp_path),
        channels_last="on",
        name="user",
        **quiet,
    )
    assert math.isfinite(user.history[-1]["train_loss"])


@pytest.mark.slow
def test_compile_trains_and_saves_plain_weights(tmp_path, quiet):
    result = digits(tmp_path, quiet, compile=True, model="lenet5", name="compiled")
    weights = load_checkpoint(result.last_checkpoint)["model"]
    assert not any(key.startswith("_orig_mod") for key in weights)
    assert taolu.evaluate(result.run_dir)["acc"] == pytest.approx(result.best_val_acc, abs=1e-6)
