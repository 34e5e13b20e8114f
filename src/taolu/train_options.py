"""A training run's options, resolved and checked before anything is loaded: the layers
(defaults < YAML file < flags/keywords < --set, on a resumed run's saved config), the user's
own model and Datasets named in config.yaml, --weights' defaults, the checks beyond each
field's own rules, and what a resume may not do (change the run, import what a checkpoint
names)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from taolu.config import FIELDS, RESUMABLE_OPTIONS, TrainConfig
from taolu.data.pipeline import check_transforms_option
from taolu.data.sources import data_kind, is_named_set
from taolu.engine.optim import check_optimizer_name
from taolu.engine.precision import check_device_name
from taolu.errors import ConfigError
from taolu.layout import RunDir
from taolu.models import check_model_name
from taolu.models.factory import is_factory_name
from taolu.models.spec import is_spec_path
from taolu.option_values import coerce_option, read_config_file, resolve_config
from taolu.run.setup import UserParts
from taolu.track.mlflow_tracker import check_track_option
from taolu.train_state import TrainState

USER_PREFIX = "user:"


def _validators(parts: UserParts) -> dict:
    """Checks for values that need outside knowledge; skipped where the caller's own object
    stands in for the name."""
    checks = {
        "device": check_device_name,
        "transforms": check_transforms_option,
        "freeze": _check_freeze,
        "optimizer": check_optimizer_name,
        "track": check_track_option,
    }
    if parts.train_data is None:
        checks["data"] = check_data_option
    if parts.model is None:
        checks["model"] = _check_model
    return checks


def _refuse_user_object(value: str, what: str, keyword: str) -> None:
    """A saved 'user:Name' stands for an object only the caller can hand back."""
    if value.startswith(USER_PREFIX):
        raise ConfigError(
            f"this run used your own {what} ({value[len(USER_PREFIX) :]}); "
            f"pass it again from Python with {keyword}=..."
        )


def check_users_parts(saved: dict[str, Any], data: Any, model: nn.Module | None) -> None:
    """A run trained on the user's own Dataset and/or nn.Module needs them handed back; one
    message names every part that is missing, so the user is not sent round one at a time."""
    wanted = []
    if data is None and str(saved.get("data", "")).startswith(USER_PREFIX):
        wanted.append(f"data=... (your Dataset, {saved['data'][len(USER_PREFIX) :]})")
    if model is None and str(saved.get("model", "")).startswith(USER_PREFIX):
        wanted.append(f"model=... (your nn.Module, {saved['model'][len(USER_PREFIX) :]})")
    if wanted:
        raise ConfigError(
            "this run was trained on your own objects, which only you can hand back: pass "
            + " and ".join(wanted)
            + ", e.g. taolu.evaluate(run, data=MyDataset(...), model=MyNet())"
        )


def check_data_option(spec: str) -> None:
    _refuse_user_object(spec, "Dataset", "data")
    data_kind(spec)


def _check_freeze(value: str) -> None:
    if value not in ("none", "backbone") and not value.isdigit():
        raise ConfigError(
            f"option 'freeze': {value!r} is not allowed; use none, backbone, or a number N "
            "(the first N parameter tensors)"
        )


def _weights_defaults(config: TrainConfig, given: set[str]) -> TrainConfig:
    """Pretrained torchvision or timm weights bring their own preprocessing: the size they
    were trained at, their mean and std (ImageNet's for torchvision; timm's pretrained_cfg),
    three channels, resize-then-crop. Applied where the user did not choose otherwise, before
    the config is frozen, so config.yaml shows it."""
    from taolu.models import model_kind

    if not config.weights:
        return config
    kind = model_kind(config.model)
    if kind == "torchvision":
        from taolu.models.zoo import weights_preprocessing  # torchvision: only when it is used

        size = (weights_preprocessing(config.model, config.weights) or {}).get("size")
        normalize = "imagenet"
    elif kind == "timm":
        size, normalize = _timm_preprocessing(config.model)
    else:
        return config
    defaults = {"image_size": size, "channels": 3, "normalize": normalize, "resize_mode": "crop"}
    chosen = {key: value for key, value in defaults.items() if key not in given and value}
    return dataclasses.replace(config, **chosen)


def _timm_preprocessing(name: str) -> tuple[int, str]:
    """(input side, --normalize name) from timm's pretrained_cfg for `name`; mean/std that no
    name gives (9 of timm's 1,826 configurations) fall back to ImageNet's, with a warning."""
    import logging

    from taolu.data.transforms import normalize_name
    from taolu.models.timm_zoo import weights_preprocessing

    preprocessing = weights_preprocessing(name)
    normalize = normalize_name(preprocessing["mean"], preprocessing["std"])
    if normalize is None:
        logging.getLogger("taolu").warning(
            "%s's weights were trained with mean %s and std %s, which no --normalize name "
            "gives; using ImageNet's",
            name,
            preprocessing["mean"],
            preprocessing["std"],
        )
    return preprocessing["size"], normalize or "imagenet"


def _check_model(name: str) -> None:
    _refuse_user_object(name, "nn.Module", "model")
    check_model_name(name)


def build_train_config(
    config_file: str | Path | None,
    options: Mapping[str, Any],
    set_options: Mapping[str, Any] | None = None,
    *,
    parts: UserParts | None = None,
    resume_state: TrainState | None = None,
) -> TrainConfig:
    """Resolve the config in taolu's one order: defaults < config file < options < --set.

    When resuming, the saved config is the base and only RESUMABLE_OPTIONS may change.
    """
    parts = parts or UserParts()
    file_layer = read_config_file(config_file) if config_file else {}
    layers = [file_layer, dict(options), dict(set_options or {})]
    if resume_state is not None:
        saved = resume_state.config
        for layer in layers:
            for key, value in layer.items():
                if key in FIELDS and key not in RESUMABLE_OPTIONS and key in saved:
                    if coerce_option(key, value) != saved[key]:
                        allowed = ", ".join(sorted(RESUMABLE_OPTIONS))
                        raise ConfigError(
                            f"option '{key}': cannot change from {saved[key]!r} to {value!r} "
                            f"when resuming; only these may change: {allowed}"
                        )
        layers.insert(0, {k: v for k, v in saved.items() if k in FIELDS})
    validators = _validators(parts)
    if resume_state is not None and resume_state.model_spec is not None:
        validators.pop("model", None)  # rebuilt from the stored list; its file is never read
    config = resolve_config(*layers, validators=validators)
    if resume_state is None and parts.model is None:
        config = _weights_defaults(config, {key for layer in layers for key in layer})
    if not is_named_set(config.data) and not config.data.startswith(USER_PREFIX):
        # Stored absolute, so eval and resume find the folder from any working directory.
        config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()))
    if config.val_shards:  # a pattern, like --data, stored absolute
        absolute = str(Path(config.val_shards).expanduser().resolve())
        config = dataclasses.replace(config, val_shards=absolute)
    for key in ("weights", "model"):  # files named relative to here are stored absolute
        value = getattr(config, key)
        is_file_option = key == "weights" or value.endswith((".yaml", ".yml", ".json"))
        if value and is_file_option and Path(value).expanduser().is_file():
            config = dataclasses.replace(config, **{key: str(Path(value).expanduser().resolve())})
    if parts.train_data is not None:
        config = dataclasses.replace(config, data=USER_PREFIX + type(parts.train_data).__qualname__)
    if parts.model is not None:
        config = dataclasses.replace(config, model=USER_PREFIX + type(parts.model).__qualname__)
    return config


def elastic_resume_dir(
    config_file: str | Path | None,
    options: Mapping[str, Any],
    set_options: Mapping[str, Any],
    parts: UserParts | None,
) -> Path | None:
    """Under `torchrun --max-restarts`, a restarted worker continues the run it was part of:
    OUT/NAME's last checkpoint (which needs --name; without one a restart starts afresh)."""
    import logging
    import os

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    config = build_train_config(config_file, options, set_options, parts=parts)
    run_dir = Path(config.out).expanduser() / config.name
    if not config.name:
        logging.getLogger("taolu").warning(
            "restarted by torchrun, but without --name the run cannot be found; starting afresh"
        )
        return None
    if RunDir(run_dir).last.is_file():
        print(f"taolu: restarted by torchrun: resuming {run_dir}", flush=True)
        return run_dir
    return None


def refuse_model_named_by_checkpoint(
    state: TrainState, named: Any, parts: UserParts | None
) -> None:
    """Resuming must not import code, or read a file, because a checkpoint names it: a run
    trained with `package.module:factory` (importing runs the module's code, and a module
    placed in the run directory may be importable) or with a layer list the checkpoint does
    not hold (older taolu stored only the file's path) continues only when the user names
    the same model again (--model, or model= from Python)."""
    saved = state.config.get("model", "")
    if (parts is not None and parts.model is not None) or str(named or "") == saved:
        return
    if is_factory_name(saved):
        what = f"the factory {saved}, which resuming would import and call"
    elif is_spec_path(saved) and state.model_spec is None:
        what = f"the layer list {saved}, which this checkpoint names but does not hold"
    else:
        return
    raise ConfigError(
        f"this run was trained with {what}; taolu does not run code or read files because a "
        f"checkpoint names them. If you trust it, name it yourself: taolu train --resume RUN "
        f"--model {saved} (Python: model=... with your own module)"
    )
