"""Layer-list models: every layer kind builds with its sizes inferred, trains, and every
mistake in a spec is refused with a ConfigError that names the layer."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from torch import nn

from taolu.errors import ConfigError
from taolu.models.nets import build_tudui
from taolu.models.spec import (
    LAYERS,
    RowsRecurrent,
    TokenTransformer,
    build_from_spec,
    is_spec_path,
    load_layer_spec,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]

# Each spec is YAML text, as a user would write it; together they use every layer name.
LAYER_SPECS = {
    "conv2d_pools": """
        - {Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}}
        - BatchNorm2d
        - ReLU
        - {MaxPool2d: 2}
        - {Conv2d: [8, 3]}
        - {LeakyReLU: 0.1}
        - {AvgPool2d: 2}
        - {Dropout2d: 0.1}
        - {AdaptiveAvgPool2d: 2}
        - Flatten
        - {Linear: classes}
    """,
    "norms_activations": """
        - {Conv2d: {out_channels: 8, kernel_size: 3}}
        - {GroupNorm: 2}
        - GELU
        - {AdaptiveMaxPool2d: 1}
        - Flatten
        - {Linear: 16}
        - BatchNorm1d
        - SiLU
        - LayerNorm
        - Tanh
        - {Dropout: 0.2}
        - Sigmoid
        - Linear
    """,
    "one_dimensional": """
        - {Flatten: {start_dim: 2}}     # (B, C, H*W): a 1-D signal per channel
        - {Conv1d: [8, 3]}
        - {MaxPool1d: 2}
        - {AvgPool1d: 2}
        - BatchNorm1d
        - {AdaptiveAvgPool1d: 4}
        - {LayerNorm: all}
        - Flatten
        - Linear
    """,
    "lstm": """
        - {LSTM: {hidden_size: 16}}
        - {Linear: classes}
    """,
    "gru_bidirectional": """
        - {GRU: {hidden_size: 8, num_layers: 2, bidirectional: true}}
        - Linear
    """,
    "transformer": """
        - {AvgPool2d: 4}
        - {TransformerEncoder: {d_model: 16, nhead: 2, num_layers: 2}}
        - Linear
    """,
    "transformer_sequence": """
        - {Conv2d: [16, 4, 4]}          # 4x4 patches
        - {Flatten: {start_dim: 2}}     # (B, 16, L)
        - {TransformerEncoder: {d_model: 16, nhead: 4}}
        - {Linear: classes}
    """,
}

TUDUI_YAML = """
# The tutorial's CIFAR-10 network, with no input sizes written down.
layers:
  - {Conv2d: {out_channels: 32, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - {Conv2d: {out_channels: 32, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - {Conv2d: {out_channels: 64, kernel_size: 5, padding: 2}}
  - {MaxPool2d: 2}
  - Flatten
  - {Linear: 64}
  - {Linear: classes}
"""


def spec_of(text: str) -> list:
    return yaml.safe_load(text)


def one_training_step(model: nn.Module, images: torch.Tensor, classes: int) -> None:
    """One SGD step; asserts the logits' shape and that every parameter learned."""
    labels = torch.arange(len(images)) % classes
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(images)
    assert logits.shape == (len(images), classes)
    loss = nn.functional.cross_entropy(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert not torch.equal(parameter.detach(), before[name]), f"{name} did not change"


def test_the_specs_use_every_layer_name():
    used = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for text in LAYER_SPECS.values()
        for entry in spec_of(text)
    }
    assert used == set(LAYERS)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("name", sorted(LAYER_SPECS))
def test_every_layer_kind_builds_and_trains(name, shape):
    torch.manual_seed(0)
    channels, height, width = shape
    model = build_from_spec(spec_of(LAYER_SPECS[name]), channels, (height, width), classes=5)
    assert isinstance(model, nn.Sequential)
    one_training_step(model, torch.randn(2, channels, height, width), classes=5)


def test_tudui_from_yaml_infers_the_1024_inputs(tmp_path):
    path = tmp_path / "tudui.yaml"
    path.write_text(TUDUI_YAML)
    model = build_from_spec(load_layer_spec(path), 3, (32, 32), 10, source=str(path))
    linears = [layer for layer in model if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(1024, 64), (64, 10)]
    # The same network as the hand-written built-in, layer for layer.
    expected = [parameter.shape for parameter in build_tudui(3, (32, 32), 10).parameters()]
    assert [parameter.shape for parameter in model.parameters()] == expected
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "block",
    [
        {"LSTM": {"hidden_size": 16}},
        {"GRU": {"hidden_size": 16, "bidirectional": True}},
        {"TransformerEncoder": {"d_model": 16, "nhead": 4, "num_layers": 2}},
    ],
    ids=lambda block: next(iter(block)),
)
def test_sequence_blocks_train_one_step(block):
    torch.manual_seed(0)
    spec = [{"AvgPool2d": 4}, block, {"Linear": "classes"}]
    model = build_from_spec(spec, 1, (28, 28), 10)
    one_training_step(model, torch.randn(4, 1, 28, 28), classes=10)


def test_recurrent_block_reads_rows_and_outputs_the_last_step():
    torch.manual_seed(0)
    block = RowsRecurrent(input_size=2 * 6, hidden_size=5)
    images = torch.randn(3, 2, 4, 6)  # (B, C, H, W)
    rows = images.permute(0, 2, 1, 3).reshape(3, 4, 12)  # (B, H, C*W)
    outputs, _ = block.recurrent(rows)
    torch.testing.assert_close(block(images), outputs[:, -1])


def test_bidirectional_recurrent_block_doubles_the_width():
    model = build_from_spec(
        [{"GRU": {"hidden_size": 8, "bidirectional": True}}, "Linear"], 1, (28, 28), 10
    )
    assert model[0].recurrent.input_size == 28
    assert model[1].in_features == 16


def test_transformer_projects_only_when_channels_differ_from_d_model():
    spec = [{"TransformerEncoder": {"d_model": 8, "nhead": 2}}, "Linear"]
    projected = build_from_spec(spec, 3, (8, 8), 4)[0]
    as_is = build_from_spec([{"Conv2d": [8, 1]}, *spec], 3, (8, 8), 4)[1]
    assert isinstance(projected, TokenTransformer)
    assert isinstance(projected.project, nn.Linear) and projected.project.in_features == 3
    assert isinstance(as_is.project, nn.Identity)
    assert projected.position.shape == (1, 64, 8)  # one position per pixel


def test_json_file_and_bare_yaml_list_load(tmp_path):
    layers = [{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "ReLU", "Flatten", "Linear"]
    json_path = tmp_path / "mynet.json"
    json_path.write_text(json.dumps({"layers": layers}))
    yaml_path = tmp_path / "mynet.yml"
    yaml_path.write_text(yaml.safe_dump(layers))
    for path in (json_path, yaml_path):
        assert load_layer_spec(path) == layers
        assert load_layer_spec(str(path)) == layers
        model = build_from_spec(load_layer_spec(path), 1, (8, 8), 3)
        assert model[3].in_features == 4 * 6 * 6
    assert load_layer_spec(layers) is layers


def test_scalar_and_positional_arguments_skip_the_inferred_size():
    spec = [{"Conv2d": [6, 3, 1, 1]}, {"GroupNorm": 3}, {"LayerNorm": 8}, "Flatten", "Linear"]
    model = build_from_spec(spec, 2, (8, 8), 3)
    convolution, groups, norm = model[0], model[1], model[2]
    assert (convolution.in_channels, convolution.out_channels) == (2, 6)
    assert (convolution.kernel_size, convolution.stride, convolution.padding) == (
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert (groups.num_groups, groups.num_channels) == (3, 6)
    assert norm.normalized_shape == (8,)


def test_is_spec_path():
    assert is_spec_path("mynet.yaml") and is_spec_path("a/b.YML") and is_spec_path("n.json")
    assert not is_spec_path("resnet18") and not is_spec_path("pkg.mod:factory")


@pytest.mark.parametrize(
    "spec, where, detail",
    [
        (["Flatten", "Lineer"], "layer 1 (Lineer)", "did you mean Linear.*known layers"),
        (["Flatten", {"Embedding": 4}], "layer 1 (Embedding)", "known layers: Conv1d"),
        ([{"Conv2d": {"out_channels": 8, "kernal_size": 3}}], "layer 0 (Conv2d)", "bad arg"),
        (["Flatten", {"Dropout": 1.5}], "layer 1 (Dropout)", "bad arguments.*probability"),
        ([{"ReLU": [True, 1, 2]}], "layer 0 (ReLU)", "3 positional arguments"),
        ([{"Conv2d": [4, 3]}, "ReLU", {"Linear": 10}], "layer 2 (Linear)", "add Flatten"),
        (["Flatten", "Linear", "Linear"], "layer 1 (Linear)", "needs an output size"),
        ([{"Linear": 10}], "layer 0 (Linear)", r"shape \(1, 1, 28, 28\)"),
        ([{"MaxPool2d": 2}] * 6, "layer 4 (MaxPool2d)", r"input of shape \(1, 1, 1, 1\)"),
        ([{"MaxPool2d": 8}, {"Conv2d": [4, 5]}], "layer 1 (Conv2d)", r"shape \(1, 1, 3, 3\)"),
        (["Flatten", "BatchNorm2d"], "layer 1 (BatchNorm2d)", "4-D input"),
        (
            [{"TransformerEncoder": {"d_model": 10, "nhead": 3}}],
            "layer 0 (TransformerEncoder)",
            "bad arguments",
        ),
    ],
)
def test_bad_layer_is_refused_naming_it(spec, where, detail):
    with pytest.raises(ConfigError, match=rf"mynet\.yaml {re.escape(where)}: .*{detail}"):
        build_from_spec(spec, 1, (28, 28), 10, source="mynet.yaml")


def test_malformed_entry_is_refused_naming_its_index():
    with pytest.raises(ConfigError, match=r"mynet\.yaml layer 1: expected a layer name"):
        build_from_spec(
            ["Flatten", {"Linear": 10, "ReLU": None}], 1, (4, 4), 10, source="mynet.yaml"
        )


def test_wrong_output_width_names_the_spec_and_the_class_count():
    with pytest.raises(ConfigError, match=r"mynet\.yaml: .*\(1, 64\).*10 classes"):
        build_from_spec(["Flatten", {"Linear": 64}], 1, (28, 28), 10, source="mynet.yaml")
    with pytest.raises(ConfigError, match=r"\(1, 8, 28, 28\)"):
        build_from_spec([{"Conv2d": [8, 3, 1, 1]}], 1, (28, 28), 10)


def test_errors_from_a_file_name_the_file_and_layer(tmp_path):
    path = tmp_path / "mynet.yaml"
    path.write_text(
        "layers:\n  - {Conv2d: [8, 3]}\n  - ReLU\n  - {MaxPool2d: 2}\n  - {Linear: 64}\n"
    )
    with pytest.raises(ConfigError, match=r"mynet\.yaml layer 3 \(Linear\): .*add Flatten"):
        build_from_spec(load_layer_spec(path), 1, (28, 28), 10, source=str(path))


@pytest.mark.parametrize(
    "text, detail",
    [
        (None, "cannot read"),
        ("layers: [ReLU\n", "not valid YAML"),
        ("layers: [ReLU]\noptimizer: sgd\n", "only the key 'layers'"),
        ("layers: []\n", "non-empty list"),
        ("just a string\n", "non-empty list"),
    ],
)
def test_unreadable_spec_file_is_refused_naming_it(tmp_path, text, detail):
    path = tmp_path / "mynet.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=rf"mynet\.yaml.*{detail}"):
        load_layer_spec(path)


@pytest.mark.parametrize(
    "entry",
    ["!!python/object/apply:os.system [{command}]", "!!python/object:torch.nn.ReLU {{}}"],
    ids=["apply", "object"],
)
def test_python_tags_are_refused_without_running(tmp_path, entry):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"layers:\n  - {entry.format(command=json.dumps(f'touch {marker}'))}\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml is not valid YAML.*python/object"):
        load_layer_spec(path)
    assert not marker.exists()
