"""Config precedence (defaults < YAML < options < --set) and refusal of bad options."""

from __future__ import annotations

import pytest
import torch

import taolu
from taolu.config import FIELDS
from taolu.models import BUILTIN_MODELS
from taolu.train_options import build_train_config


def write_yaml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- precedence


def test_defaults_come_from_the_documented_fields():
    config = build_train_config(None, {})
    for name, spec in FIELDS.items():
        assert getattr(config, name) == spec.default, name


def test_precedence_defaults_file_options_set(tmp_path):
    config_file = write_yaml(
        tmp_path / "my.yaml",
        "epochs: 7\nbatch_size: 48\nlr: 0.031\nseed: 11\noptimizer: adamw\n",
    )
    options = {"epochs": 3, "lr": 0.042, "optimizer": "rmsprop"}
    set_options = {"lr": "0.053", "seed": "12"}
    config = build_train_config(config_file, options, set_options)
    assert config.batch_size == 48  # file beats default
    assert config.epochs == 3  # option beats file
    assert config.optimizer == "rmsprop"  # option beats file
    assert config.lr == pytest.approx(0.053)  # --set beats option and file
    assert config.seed == 12  # --set beats file
    assert config.momentum == FIELDS["momentum"].default  # untouched: default
    assert config.scheduler == FIELDS["scheduler"].default


def test_each_layer_alone_overrides_the_default(tmp_path):
    assert build_train_config(write_yaml(tmp_path / "a.yaml", "epochs: 4\n"), {}).epochs == 4
    assert build_train_config(None, {"epochs": 5}).epochs == 5
    assert build_train_config(None, {}, {"epochs": "6"}).epochs == 6


def test_set_strings_are_parsed_to_each_type():
    config = build_train_config(
        None,
        {},
        {
            "epochs": "9",
            "val_fraction": "0.25",
            "verbose": "false",
            "progress": "no",
            "model": "lenet5",
            "batch_size": " 32 ",
        },
    )
    assert config.epochs == 9 and isinstance(config.epochs, int)
    assert config.val_fraction == 0.25
    assert config.verbose is False and config.progress is False
    assert config.model == "lenet5"
    assert config.batch_size == 32


def test_empty_yaml_file_means_defaults(tmp_path):
    config = build_train_config(write_yaml(tmp_path / "empty.yaml", ""), {})
    assert config.epochs == FIELDS["epochs"].default


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("layer", "key", "value", "shown"),
    [
        ("options", "epochs", "abc", "abc"),
        ("options", "epochs", 2.5, "2.5"),
        ("options", "epochs", True, "True"),
        ("set", "epochs", "abc", "abc"),
        ("options", "epochs", -1, "-1"),
        ("options", "epochs", 0, "0"),
        ("set", "epochs", "-3", "-3"),
        ("options", "lr", 0, "0"),
        ("options", "lr", -0.1, "-0.1"),
        ("set", "lr", "0", "0"),
        ("set", "lr", "nan", "nan"),
        ("options", "lr", float("inf"), "inf"),
        ("options", "lr", "fast", "fast"),
        ("options", "batch_size", 0, "0"),
        ("options", "val_fraction", 1.0, "1.0"),
        ("options", "channels", 2, "2"),
        ("options", "optimizer", "lbfgs", "lbfgs"),
        ("options", "scheduler", "linear", "linear"),
        ("options", "precision", "fp8", "fp8"),
        ("options", "device", "gpu", "gpu"),
        ("options", "device", "cuda:x", "cuda:x"),
        ("set", "verbose", "maybe", "maybe"),
        ("options", "model", "resnet999", "resnet999"),
    ],
)
def test_bad_values_are_refused_naming_key_and_value(layer, key, value, shown):
    options, set_options = ({key: value}, {}) if layer == "options" else ({}, {key: value})
    with pytest.raises(taolu.ConfigError) as caught:
        build_train_config(None, options, set_options)
    message = str(caught.value)
    assert key in message
    assert shown in message


def test_bad_value_in_yaml_file_is_refused(tmp_path):
    config_file = write_yaml(tmp_path / "bad.yaml", "epochs: -2\n")
    with pytest.raises(taolu.ConfigError, match="epochs"):
        build_train_config(config_file, {})


@pytest.mark.parametrize("layer", ["file", "options", "set"])
def test_unknown_key_is_refused_naming_it(tmp_path, layer):
    config_file = write_yaml(tmp_path / "c.yaml", "epoch: 3\n") if layer == "file" else None
    options = {"epoch": 3} if layer == "options" else {}
    set_options = {"epoch": "3"} if layer == "set" else {}
    with pytest.raises(taolu.ConfigError) as caught:
        build_train_config(config_file, options, set_options)
    message = str(caught.value)
    assert "'epoch'" in message
    assert "epochs" in message  # the close match is suggested


def test_unknown_model_lists_the_known_models():
    with pytest.raises(taolu.ConfigError) as caught:
        build_train_config(None, {"model": "resnet999"})
    message = str(caught.value)
    assert "resnet999" in message and "model" in message
    for name in BUILTIN_MODELS:
        assert name in message


def test_unknown_data_name_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(taolu.TaoluError) as caught:
        build_train_config(None, {"data": "no_such_data"})
    message = str(caught.value)
    assert "data" in message and "no_such_data" in message
    assert "mnist5k" in message and "digits" in message  # what is allowed


def test_unknown_data_name_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(taolu.ConfigError):
        build_train_config(None, {"data": "no_such_data"})


def test_data_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / "data.txt"
    a_file.write_text("x")
    with pytest.raises(taolu.TaoluError, match="data"):
        build_train_config(None, {"data": str(a_file)})


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs/path"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(taolu.ConfigError, match="name"):
        build_train_config(None, {"name": name})


def test_config_file_problems_are_config_errors(tmp_path):
    with pytest.raises(taolu.ConfigError, match="not found"):
        build_train_config(tmp_path / "missing.yaml", {})
    with pytest.raises(taolu.ConfigError, match="mapping"):
        build_train_config(write_yaml(tmp_path / "list.yaml", "- 1\n- 2\n"), {})
    with pytest.raises(taolu.ConfigError, match="YAML"):
        build_train_config(write_yaml(tmp_path / "broken.yaml", "epochs: [1, 2\n"), {})


def test_set_item_without_equals_is_refused():
    from taolu.option_values import parse_set_items

    with pytest.raises(taolu.ConfigError, match="key=value"):
        parse_set_items(["epochs"])
    assert parse_set_items(["batch-size=8", "lr=0.1=x"]) == {"batch_size": "8", "lr": "0.1=x"}


def test_refused_train_creates_no_run_directory(tmp_path, quiet):
    out = tmp_path / "out"
    for bad in ({"epochs": 0}, {"lr": 0}, {"model": "nope"}, {"device": "gpu"}, {"bogus": 1}):
        with pytest.raises(taolu.ConfigError):
            taolu.train(data="digits", out=str(out), **bad, **quiet)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_is_refused_before_anything_is_written(tmp_path, quiet):
    out = tmp_path / "out"
    with pytest.raises(taolu.ConfigError, match="cuda"):
        taolu.train(data="digits", device="cuda", epochs=1, out=str(out), **quiet)
    with pytest.raises(taolu.ConfigError, match="fp16"):
        taolu.train(data="digits", device="cpu", precision="fp16", out=str(out), **quiet)
    assert not out.exists()


def test_seed_out_of_range_is_a_config_error(tmp_path, quiet):
    with pytest.raises(taolu.ConfigError, match="seed"):
        taolu.train(data="digits", seed=2**70, epochs=1, out=str(tmp_path), **quiet)
