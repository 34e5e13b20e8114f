"""The built-in networks: they build for any input shape, give (B, classes), and learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taolu
from taolu.models import BUILTIN_MODELS, build_model

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_net_forward_and_one_step(name, shape):
    torch.manual_seed(0)
    channels, height, width = shape
    classes = 7
    model = build_model(name, channels, (height, width), classes)
    assert isinstance(model, nn.Sequential)
    images = torch.randn(4, channels, height, width)
    labels = torch.tensor([0, 3, 6, 2])
    logits = model(images)
    assert logits.shape == (4, classes)
    assert torch.isfinite(logits).all()

    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    for key, parameter in model.named_parameters():
        assert not torch.equal(parameter.detach(), before[key]), f"{key} did not change"


def test_unknown_model_name_is_refused():
    with pytest.raises(taolu.ConfigError, match="known models"):
        build_model("vgg", 1, (28, 28), 10)


def test_tudui_has_the_tutorials_layers():
    model = build_model("tudui", 3, (32, 32), 10)
    kinds = [type(layer) for layer in model]
    assert kinds == [
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Linear,
        nn.Linear,
    ]
    convs = [layer for layer in model if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64)]
    for conv in convs:
        assert conv.kernel_size == (5, 5)
        assert conv.padding == (2, 2)
        assert conv.stride == (1, 1)
    for pool in (layer for layer in model if isinstance(layer, nn.MaxPool2d)):
        assert pool.kernel_size == 2
    first, second = (layer for layer in model if isinstance(layer, nn.Linear))
    assert (first.in_features, first.out_features) == (64 * 4 * 4, 64)  # 1024 -> 64
    assert (second.in_features, second.out_features) == (64, 10)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_each_builtin_net_trains_by_name(name, tmp_path, quiet):
    result = taolu.train(data="digits", model=name, epochs=1, out=str(tmp_path), **quiet)
    assert result.summary["model"] == name
    assert len(result.history) == 1
    assert result.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
