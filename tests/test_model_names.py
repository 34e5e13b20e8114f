"""--model beyond the built-ins: layer lists, user factories, the ResNet-9 net, `taolu models`."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
from PIL import Image

import taolu
from taolu.cli import main
from taolu.models import build_model, model_kind

QUIET = dict(verbose=False, progress=False)

LAYERS = textwrap.dedent(
    """
    layers:
      - {Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}}
      - ReLU
      - {MaxPool2d: 2}
      - Flatten
      - {Linear: classes}
    """
)

FACTORY_MODULE = textwrap.dedent(
    """
    from torch import nn

    def make_net(channels, num_classes, image_size):
        return nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size * image_size, num_classes)
        )
    """
)


def test_a_layer_list_trains_and_its_run_predicts(tmp_path):
    spec = tmp_path / "mynet.yaml"
    spec.write_text(LAYERS)
    result = taolu.train(model=str(spec), data="digits", epochs=1, out=str(tmp_path), **QUIET)
    first_conv = result.model[0]
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == 1
    assert result.model[-1].out_features == 10
    digit = tmp_path / "digit.png"
    Image.new("L", (8, 8), 200).save(digit)
    [prediction] = taolu.predict(result.run_dir, [digit], topk=2)
    assert len(prediction["predictions"]) == 2


def test_a_users_factory_trains_but_is_never_imported_from_a_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = taolu.train(
        model="my_models:make_net", data="digits", epochs=1, out=str(tmp_path), **QUIET
    )
    assert isinstance(result.model[1], torch.nn.Linear)
    assert result.model[1].in_features == 64  # 1 x 8 x 8, passed to the factory
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    with pytest.raises(taolu.CheckpointError, match="model="):
        taolu.predict(result.run_dir, [image])
    from my_models import make_net

    [prediction] = taolu.predict(result.run_dir, [image], model=make_net(1, 10, 8))
    assert "predictions" in prediction


def test_model_kinds_and_refusals(tmp_path):
    assert model_kind("fastcnn") == "builtin"
    assert model_kind("resnet18") == "torchvision"
    assert model_kind("package.module:factory") == "factory"
    with pytest.raises(taolu.ConfigError, match="known models"):
        model_kind("no_such_net")
    with pytest.raises(taolu.ConfigError, match="not found"):
        model_kind(str(tmp_path / "missing.yaml"))


def test_resnet9_is_sized_for_cifar_shaped_data():
    model = build_model("resnet9", 3, (32, 32), 10)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_models_show_prints_layers_and_flops(capsys):
    assert main(["models", "show", "tudui", "--image-size", "32"]) == 0
    shown = capsys.readouterr().out
    assert "Conv2d" in shown and "(1, 64)" in shown  # the Linear 64 layer's output
    forward, step = re.search(
        r"FLOPs per image: forward ([\d.]+) MFLOPs, training step ([\d.]+) MFLOPs", shown
    ).groups()
    assert 0 < float(forward) < float(step)


def test_models_show_writes_flops_as_people_do(capsys):
    # resnet18 at 224 px: 1.81 G multiply-adds (torchvision's own figure) = 3.63 GFLOPs.
    assert main(["models", "show", "resnet18", "--classes", "1000"]) == 0
    shown = capsys.readouterr().out
    assert "FLOPs per image: forward 3.63 GFLOPs, training step " in shown
    assert "3,627,132,928" not in shown


def listed_counts(text: str) -> dict[str, int]:
    rows = re.findall(r"^(\w+)\s+(?:built-in|torchvision)\s+([\d,]+)\s", text, re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_models_lists_builtins_and_torchvision(capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in ("fastcnn", "tudui", "resnet9", "resnet18", "vgg16", "vit_b_16"):
        assert f"\n{name} " in listed


def test_models_marks_recommended_models_per_situation(capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    recommended = listed.split("recommended:")[1]
    for situation in ("tiny data", "photos + weights", "CPU speed"):
        line = re.search(rf"^  {re.escape(situation)}:\s+(.+)$", recommended, re.MULTILINE)
        assert line, situation
        names = re.findall(r"(\w+)(?: \(ImageNet top-1 [\d.]+%\))?(?:,|$)", line[1])
        assert names, line[0]
        for name in names:
            row = re.search(rf"^{name}\s.*$", listed, re.MULTILINE)
            assert row and situation in row[0], (situation, name)


def test_models_says_which_head_it_counts_and_show_agrees_or_says_why(capsys):
    assert main(["models"]) == 0
    listed_text = capsys.readouterr().out
    assert "1000-class ImageNet head" in listed_text and "10-class head" in listed_text
    listed = listed_counts(listed_text)
    # A built-in net at its own input and 10 classes: the same count in both.
    assert main(["models", "show", "fastcnn"]) == 0
    shown = capsys.readouterr().out
    assert f"parameters {listed['fastcnn']:,} with a 10-class head\n" in shown
    # A torchvision model for 10 classes: a different count, and the reason.
    assert main(["models", "show", "resnet18"]) == 0
    shown = capsys.readouterr().out
    count = int(re.search(r"parameters ([\d,]+) with a 10-class head", shown)[1].replace(",", ""))
    assert count != listed["resnet18"]
    assert f"`taolu models` lists {listed['resnet18']:,}: a 1000-class head" in shown
    # ... and with the 1000-class head, the count torchvision publishes.
    assert main(["models", "show", "resnet18", "--classes", "1000"]) == 0
    shown = capsys.readouterr().out
    assert f"parameters {listed['resnet18']:,} with a 1000-class head\n" in shown
