"""The default recipe on what users bring: its decisions, --lr auto's range test, NaN recovery,
lazy layers, slow BatchNorm statistics and small data. Tiny data; nothing is timed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import pytest
import torch
import yaml
from torch import nn

import taolu
from taolu.config import TrainConfig
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.engine.batchnorm import recalibrate_batchnorm, slow_batchnorm
from taolu.engine.optim import LrSchedule
from taolu.engine.precision import pick_precision
from taolu.run.recipe import Traits, choose_recipe

CLASSES = [str(digit) for digit in range(10)]

# --------------------------------------------------------------------------- decisions


def traits(**overrides) -> Traits:
    values = dict(train_images=4000, tuned=True, normalised=True, pretrained=False, kind="fastcnn")
    values.update(overrides)
    return Traits(**values)


def test_taolus_tuned_net_on_enough_data_keeps_the_measured_sgd_recipe():
    recipe = choose_recipe(TrainConfig(), set(), traits())
    config = recipe.config
    assert (config.optimizer, config.lr, config.batch_size) == ("sgd", 0.05, 64)
    assert not recipe.sweep_lr and recipe.notes == []


def test_a_users_net_without_normalisation_gets_adamw_and_a_range_test():
    recipe = choose_recipe(
        TrainConfig(), set(), traits(tuned=False, normalised=False, kind="your nn.Module")
    )
    assert recipe.config.optimizer == "adamw" and recipe.sweep_lr
    assert recipe.config.lr == "auto"  # until the range test has run
    assert "AdamW for your nn.Module (no normalisation layers)" in recipe.notes


def test_small_data_shrinks_the_batch_and_scales_a_tuned_lr_with_it():
    recipe = choose_recipe(TrainConfig(), set(), traits(train_images=300))
    assert recipe.config.batch_size == 32  # the largest power of two with >= 8 steps
    assert recipe.config.optimizer == "adamw" and recipe.sweep_lr  # few images: AdamW
    assert any("300 images give 10 steps an epoch" in note for note in recipe.notes)
    # The user keeps SGD: its tuned lr follows the batch down (0.05 x 32/64).
    sgd = choose_recipe(TrainConfig(optimizer="sgd"), {"optimizer"}, traits(train_images=300))
    assert sgd.config.lr == pytest.approx(0.025) and not sgd.sweep_lr
    assert any("lr 0.05 x 32/64" in note for note in sgd.notes)


def test_pretrained_weights_fine_tune_with_gentle_sgd():
    recipe = choose_recipe(
        TrainConfig(), set(), traits(tuned=False, pretrained=True, kind="resnet18")
    )
    assert (recipe.config.optimizer, recipe.config.lr) == ("sgd", 0.01)
    assert not recipe.sweep_lr


def test_the_recipe_line_on_a_handful_of_images_says_what_it_did():
    """17 images: two batches an epoch (a partial one counts), and the epochs stop at the
    automatic limit short of the aim, which the note says instead of a false '>= 300'."""
    recipe = choose_recipe(TrainConfig(), set(), traits(train_images=17))
    assert recipe.notes[0] == "batch 16: 17 images give 2 steps an epoch"
    assert recipe.config.epochs == 100
    assert (
        "100 epochs: few images, so 200 steps in all "
        "(short of 300: at most 100 epochs are chosen for you)"
    ) in recipe.notes
    assert not [note for note in recipe.notes if ">=" in note]


def test_the_fan_in_rule_is_on_for_adaptive_optimizers_and_said_where_it_bites():
    wide = choose_recipe(TrainConfig(), set(), traits(tuned=False, widest_dense=14400))
    assert wide.config.optimizer == "adamw" and wide.config.fan_in_lr == "on"
    assert "Linear layers past 1024 inputs (up to 14400) learn at lr x 1024/inputs" in wide.notes
    narrow = choose_recipe(TrainConfig(), set(), traits(tuned=False, widest_dense=784))
    assert narrow.config.fan_in_lr == "on" and not [n for n in narrow.notes if "Linear" in n]
    tuned = choose_recipe(TrainConfig(), set(), traits(widest_dense=4096))
    assert tuned.config.optimizer == "sgd" and tuned.config.fan_in_lr == "off"
    chosen = choose_recipe(
        TrainConfig(fan_in_lr="off"), {"fan_in_lr"}, traits(tuned=False, widest_dense=4096)
    )
    assert chosen.config.fan_in_lr == "off" and not [n for n in chosen.notes if "Linear" in n]


def test_what_the_user_chose_stands():
    config = TrainConfig(optimizer="adam", lr=0.003, batch_size=8, epochs=2)
    recipe = choose_recipe(
        config, {"optimizer", "lr", "batch_size", "epochs"}, traits(train_images=100)
    )
    # everything stands; the fan-in rule (auto) is resolved for Adam
    assert recipe.config == dataclasses.replace(config, fan_in_lr="on") and not recipe.sweep_lr
    # an explicit --lr auto always tests, even for a tuned net
    asked = choose_recipe(TrainConfig(lr="auto"), {"lr"}, traits())
    assert asked.sweep_lr and asked.config.optimizer == "sgd"
    # a user's SGD on their own net has no tuned lr: it is tested too
    mine = choose_recipe(TrainConfig(optimizer="sgd"), {"optimizer"}, traits(tuned=False))
    assert mine.sweep_lr and mine.config.optimizer == "sgd"


def test_few_images_get_more_epochs_when_epochs_were_not_given():
    recipe = choose_recipe(TrainConfig(), set(), traits(train_images=144))
    assert recipe.config.batch_size == 16
    assert recipe.config.epochs == 34  # 9 steps an epoch: >= 300 in all
    assert "34 epochs: few images, so 306 steps in all (at least 300)" in recipe.notes
    kept = choose_recipe(TrainConfig(epochs=5), {"epochs"}, traits(train_images=144))
    assert kept.config.epochs == 5


def test_lr_and_optimizer_accept_auto_everywhere(cli_main, tmp_path):
    assert TrainConfig().lr == "auto" and TrainConfig().optimizer == "auto"
    with pytest.raises(taolu.ConfigError, match="number or auto"):
        taolu.train(lr="fast", out=str(tmp_path))
    code, _, err = cli_main("train", "--lr", "-1", "--out", tmp_path)
    assert code == 2 and "must be > 0.0" in err


# --------------------------------------------------------------------------- --lr auto


class SmallMLP(nn.Module):
    """A user's net with no normalisation layer: the recipe has no tuned lr for it."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.layers(x)


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, digits_arrays, array_dataset, quiet):
    images, labels = digits_arrays
    out = tmp_path_factory.mktemp("auto")
    torch.manual_seed(0)
    result = taolu.train(
        model=SmallMLP(),
        data=array_dataset(images[:600], labels[:600]),
        val_data=array_dataset(images[600:800], labels[600:800]),
        classes=CLASSES,
        epochs=2,
        workers=0,
        out=str(out),
        name="auto",
        **quiet,
    )
    return result, out


def test_lr_auto_records_the_lr_it_used_and_its_curve(auto_run):
    result, _ = auto_run
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert isinstance(config["lr"], float) and config["optimizer"] == "adamw"
    assert 1e-3 <= config["lr"] <= 1e-2  # the band for adaptive optimizers
    chosen = result.summary["lr_auto"]
    assert chosen["lr"] == config["lr"] and 10 <= chosen["steps"] <= 50
    assert (result.run_dir / "lr_find.csv").is_file()
    assert (result.run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert result.best_val_acc > 0.3  # 18 steps of a plain MLP; chance is 0.1


def test_lr_auto_leaves_the_runs_start_as_it_was(auto_run, digits_arrays, array_dataset, quiet):
    """The range test runs on a copy with its own random stream: training with the lr it
    chose, given by hand, gives bit-identical weights."""
    result, out = auto_run
    images, labels = digits_arrays
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    torch.manual_seed(0)
    again = taolu.train(
        model=SmallMLP(),
        data=array_dataset(images[:600], labels[:600]),
        val_data=array_dataset(images[600:800], labels[600:800]),
        classes=CLASSES,
        epochs=2,
        workers=0,
        lr=config["lr"],
        optimizer="adamw",
        out=str(out),
        name="by_hand",
        **quiet,
    )
    assert again.summary["lr_auto"] is None
    ours = torch.load(result.run_dir / "weights" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(again.run_dir / "weights" / "last.pt", weights_only=True)["model"]
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


# --------------------------------------------------------------------------- NaN recovery


class NanAt(nn.Module):
    """A small CNN whose training forward returns NaN logits at the listed calls (counted
    over training-mode calls of this instance), as a net blowing up would."""

    def __init__(self, nan_calls=()):
        super().__init__()
        self.nan_calls = set(nan_calls)
        self.calls = 0
        self.layers = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)
        )

    def forward(self, x):
        logits = self.layers(x)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_calls:
                return logits * float("nan")
        return logits


def nan_run(tmp_path, digits_arrays, array_dataset, quiet, model, name, **options):
    images, labels = digits_arrays
    common = dict(classes=CLASSES, epochs=3, batch_size=50, workers=0, lr=0.01)
    common.update(options)
    return taolu.train(
        model=model,
        data=array_dataset(images[:400], labels[:400]),
        val_data=array_dataset(images[400:600], labels[400:600]),
        out=str(tmp_path),
        name=name,
        **common,
        **quiet,
    )


def test_a_nan_goes_back_to_the_epochs_start_with_a_quarter_of_the_lr(
    tmp_path, digits_arrays, array_dataset, quiet, caplog
):
    # 8 steps an epoch: call 12 is the 4th batch of epoch 2
    result = nan_run(tmp_path, digits_arrays, array_dataset, quiet, NanAt({12}), "nan")
    recoveries = result.summary["nan_recoveries"]
    assert len(recoveries) == 1
    recovery = recoveries[0]
    assert recovery["epoch"] == 2 and recovery["step"] == 8 + 4
    assert recovery["new_lr"] == pytest.approx(recovery["old_lr"] / 4)
    assert recovery["old_lr"] == pytest.approx(0.01)
    assert result.history[-1]["epoch"] == 3 and math.isfinite(result.history[-1]["train_loss"])
    assert any("lowered the lr from 0.01 to 0.0025" in r.getMessage() for r in caplog.records)
    assert "nan" in [finding["kind"] for finding in result.summary["verdict"]]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir)).Reload()
    counted = events.Scalars("train/nan_recoveries")
    assert [(event.step, event.value) for event in counted] == [(12, 1.0)]
    # after the recovery every step runs at a quarter of the lr the schedule would give
    saved = torch.load(result.run_dir / "weights" / "last.pt", weights_only=True)
    assert saved["scheduler"]["lr_scale"] == pytest.approx(0.25)


def test_the_fourth_nan_stops_the_run_naming_what_was_tried(
    tmp_path, digits_arrays, array_dataset, quiet
):
    # every try of epoch 1 meets a NaN: 3 recoveries, then the stop
    with pytest.raises(taolu.TrainingError, match="again after 3 recoveries") as stopped:
        nan_run(tmp_path, digits_arrays, array_dataset, quiet, NanAt({3, 11, 19, 27}), "four")
    assert "0.01 -> 0.0025 -> 0.000625 -> 0.000156" in str(stopped.value)
    assert "--on-nan skip" in str(stopped.value)


def test_stop_and_skip_still_do_what_they_did(tmp_path, digits_arrays, array_dataset, quiet):
    with pytest.raises(taolu.TrainingError, match="the loss became nan"):
        nan_run(tmp_path, digits_arrays, array_dataset, quiet, NanAt({12}), "stop", on_nan="stop")
    skipped = nan_run(
        tmp_path, digits_arrays, array_dataset, quiet, NanAt({12}), "skip", on_nan="skip"
    )
    assert skipped.summary["skipped_batches"] == 1 and skipped.summary["nan_recoveries"] == []


def test_a_resume_after_a_recovery_replays_exactly(tmp_path, digits_arrays, array_dataset, quiet):
    """A NaN in epoch 1 is recovered; SIGTERM in epoch 3; the resumed run ends on the
    uninterrupted run's weights, lr scale and recovery record."""
    images, labels = digits_arrays

    class TermAt(type(array_dataset(images[:2], labels[:2]))):
        def __getitem__(self, index):
            self.fetched = getattr(self, "fetched", 0) + 1
            if self.fetched == 400 + 3 * 400 + 130:  # stats + epoch 1 twice + epoch 2, then 3
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__getitem__(index)

    whole = nan_run(tmp_path, digits_arrays, array_dataset, quiet, NanAt({5}), "whole")
    model = NanAt({5})
    with pytest.raises(taolu.TrainingInterrupted):
        taolu.train(
            model=model,
            data=TermAt(images[:400], labels[:400]),
            val_data=array_dataset(images[400:600], labels[400:600]),
            classes=CLASSES,
            epochs=3,
            batch_size=50,
            workers=0,
            lr=0.01,
            out=str(tmp_path),
            name="cut",
            **quiet,
        )
    cut = tmp_path / "cut"
    saved = torch.load(cut / "weights" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and len(saved["recoveries"]) == 1
    resumed = taolu.train(
        resume=cut,
        model=model,
        data=array_dataset(images[:400], labels[:400]),
        val_data=array_dataset(images[400:600], labels[400:600]),
        classes=CLASSES,
        workers=0,
        **quiet,
    )
    ours = torch.load(cut / "weights" / "last.pt", weights_only=True)
    theirs = torch.load(whole.run_dir / "weights" / "last.pt", weights_only=True)
    for name, value in theirs["model"].items():
        assert torch.allclose(ours["model"][name], value, atol=1e-6), name
    assert ours["scheduler"]["lr_scale"] == theirs["scheduler"]["lr_scale"] == 0.25
    assert resumed.summary["nan_recoveries"] == whole.summary["nan_recoveries"]


# --------------------------------------------------------------------------- lazy layers


class LazyNet(nn.Module):
    """Keras-style: sizes inferred on the first call (nn.LazyConv2d, nn.LazyLinear)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.LazyConv2d(8, 3, padding=1),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.LazyLinear(10),
        )

    def forward(self, x):
        return self.net(x)


def test_a_module_with_lazy_layers_trains_and_has_its_graph_and_ema(tmp_path, quiet):
    result = taolu.train(model=LazyNet(), data="digits", epochs=2, out=str(tmp_path), **quiet)
    assert result.best_val_acc > 0.5
    saved = torch.load(result.run_dir / "weights" / "last.pt", weights_only=True)
    assert saved["ema_model"]["net.0.weight"].shape == (8, 1, 3, 3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir)).Reload()
    assert events.Graph() is not None


def test_a_wide_lazy_linear_layer_gets_the_fan_in_rule_and_config_records_it(tmp_path, capsys):
    net = nn.Sequential(
        nn.LazyConv2d(32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )  # 32 x 8 x 8 = 2,048 inputs to the Linear layer
    result = taolu.train(
        model=net, data="digits", epochs=1, out=str(tmp_path), progress=False, report=False
    )
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert recorded["optimizer"] == "adamw" and recorded["fan_in_lr"] == "on"
    assert isinstance(recorded["lr"], float)  # the range test's answer, the base lr
    assert "Linear layers past 1024 inputs (up to 2048)" in capsys.readouterr().out
    saved = torch.load(result.run_dir / "weights" / "last.pt", weights_only=True)
    shares = sorted(group["lr_share"] for group in saved["optimizer"]["param_groups"])
    assert shares[0] == pytest.approx(0.5) and shares[-1] == 1.0


# --------------------------------------------------------------------------- BatchNorm


def test_slow_batchnorm_is_found_and_measured_afresh():
    from torchvision.models import mobilenet_v3_small

    assert slow_batchnorm(mobilenet_v3_small(num_classes=3))
    assert not slow_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2, momentum=0.01))
    images = (torch.rand(64, 1, 4, 4) * 255).to(torch.uint8)
    from taolu.data.bundle import ImageTensors

    split = ImageTensors(images, torch.zeros(64, dtype=torch.long))
    batches = Batches(split, 64, torch.device("cpu"), shuffle=True)
    preprocessing = Preprocessing(1, (4, 4), "squash", (0.5,), (0.25,))
    transform = BatchTransform(preprocessing, torch.device("cpu"))
    random_state = torch.get_rng_state()
    recalibrate_batchnorm(net, batches, transform, pick_precision("fp32", torch.device("cpu")))
    assert torch.equal(torch.get_rng_state(), random_state)  # no random draw
    with torch.no_grad():
        features = net[0](transform(images))  # (64, 2, 4, 4)
    norm = net[1]
    assert torch.allclose(norm.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, features.var((0, 2, 3)), rtol=1e-3)
    assert norm.momentum == 0.01 and norm.training  # put back as it was


# --------------------------------------------------------------------------- small data


def test_a_tiny_folder_warns_about_its_validation_split_and_says_what_it_chose(
    tmp_path, make_class_folder, cli_main
):
    root = tmp_path / "photos"
    for label, name in enumerate(("ant", "bee")):
        make_class_folder(root / name, label, 20, seed=label)
    code, out, err = cli_main("train", "--data", root, "--out", tmp_path, "--no-progress")
    assert code == 0, err
    assert "the validation split holds 8 images for 2 classes" in err
    assert "--val-fraction" in err
    assert "batch 16: 32 images give 2 steps an epoch" in out
    assert "AdamW for few images" in out and "from a range test" in out
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert "small_val" in [finding["kind"] for finding in summary["verdict"]]
    assert summary["epochs_completed"] == 100  # 2 steps an epoch: 300 steps would need 150


# --------------------------------------------------------------------------- schedule


def test_a_scaled_schedule_keeps_its_scale_across_a_resume_of_another_length():
    def schedule_for(total: int) -> tuple[torch.optim.Optimizer, LrSchedule]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return optimizer, LrSchedule(optimizer, "cosine", total_steps=total, steps_per_epoch=5)

    optimizer, schedule = schedule_for(20)
    for _ in range(7):
        optimizer.step()
        schedule.step()
    schedule.scale(0.25)
    longer_optimizer, longer = schedule_for(40)
    longer_optimizer.load_state_dict(optimizer.state_dict())
    longer.resume(schedule.state_dict(), steps_taken=7, same_length=False)
    fresh_optimizer, fresh = schedule_for(40)
    for _ in range(7):
        fresh_optimizer.step()
        fresh.step()
    assert longer.lr_scale == 0.25
    assert longer_optimizer.param_groups[0]["lr"] == pytest.approx(
        fresh_optimizer.param_groups[0]["lr"] * 0.25
    )
