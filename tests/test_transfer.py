"""Transfer learning through `taolu.train`: weights from a file, the head replaced, the
backbone frozen or fine-tuned, and the weights' own preprocessing applied."""

from __future__ import annotations

import pytest
import torch
import torchvision
import yaml
from conftest import write_colour_folder

import taolu
from taolu.checkpoint import load_checkpoint
from taolu.cli import main

QUIET = dict(verbose=False, progress=False, batch_size=8, image_size=32, epochs=2)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("colours"), classes=3, size=40)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 state dict with random weights and its 1000-class head."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def backbone_changes(state, saved) -> list[str]:
    """Names of the non-head tensors in the state dict `state` that differ from `saved`."""
    return [
        key
        for key in state
        if not key.startswith("fc.") and not torch.equal(state[key], saved[key])
    ]


def test_frozen_backbone_stays_bit_identical(three_classes, resnet18_file, tmp_path):
    result = taolu.train(
        data=str(three_classes),
        model="resnet18",
        weights=str(resnet18_file),
        freeze="backbone",
        out=str(tmp_path),
        **QUIET,
    )
    saved = torch.load(resnet18_file, weights_only=True)
    assert backbone_changes(result.model.state_dict(), saved) == []
    assert result.model.fc.out_features == 3
    assert not torch.equal(result.model.fc.weight, torch.zeros_like(result.model.fc.weight))
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    # The weights' own preprocessing, where the user chose nothing else.
    assert (config["channels"], config["normalize"], config["resize_mode"]) == (
        3,
        "imagenet",
        "crop",
    )
    assert config["image_size"] == 32  # chosen by the user, so kept
    mean = load_checkpoint(result.best_checkpoint)["preprocessing"]["mean"]
    assert mean == pytest.approx([0.485, 0.456, 0.406])


def test_fine_tune_trains_the_head_first_then_the_backbone_slower(
    three_classes, resnet18_file, tmp_path
):
    saved = torch.load(resnet18_file, weights_only=True)
    head_only = taolu.train(
        data=str(three_classes),
        model="resnet18",
        weights=str(resnet18_file),
        fine_tune=2,
        out=str(tmp_path),
        name="head",
        **QUIET,
    )
    assert backbone_changes(head_only.model.state_dict(), saved) == []
    both = taolu.train(
        data=str(three_classes),
        model="resnet18",
        weights=str(resnet18_file),
        fine_tune=1,
        backbone_lr_scale=0.1,
        lr=0.05,  # the recipe would pick 0.01 for pretrained weights
        out=str(tmp_path),
        name="both",
        **QUIET,
    )
    last = load_checkpoint(both.last_checkpoint)
    assert backbone_changes(last["model"], saved) != []
    groups = last["optimizer"]["param_groups"]
    peaks = sorted({round(group["max_lr"], 8) for group in groups})
    assert peaks == [pytest.approx(0.005), pytest.approx(0.05)]


def test_default_weights_missing_from_the_hub_cache_fail_fast_offline(
    three_classes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("taolu tried to reach the network")

    monkeypatch.setattr("socket.socket.connect", no_network)
    monkeypatch.setattr("socket.create_connection", no_network)
    code = main(
        [
            "train",
            "--data",
            str(three_classes),
            "--model",
            "resnet18",
            "--weights",
            "DEFAULT",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert "resnet18-f37072fd.pth" in error and str(tmp_path / "empty-hub") in error
    assert "Traceback" not in error
