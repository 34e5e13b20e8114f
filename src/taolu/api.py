"""The Python API: `train`, `evaluate`, `predict` and `eject`, taking the same options as the
CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from taolu.checkpoint import find_checkpoint, read_state
from taolu.classifier import load_classifier
from taolu.config import FIELDS, RESUMABLE_OPTIONS, TrainConfig
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.data.pipeline import TransformedSplit, check_transforms_option, stored_eval_pipeline
from taolu.data.sources import data_kind, is_named_set, load_data
from taolu.data.user_data import NamedSamples
from taolu.engine.loop import evaluate as evaluate_batches
from taolu.engine.optim import build_loss, check_optimizer_name
from taolu.engine.precision import check_device_name, pick_device, pick_precision
from taolu.engine.tta import ViewAveraged
from taolu.errors import ConfigError, DataError
from taolu.inference import classify_with, expand_inputs
from taolu.layout import LAST_NAME, RunDir, check_run_place
from taolu.models import check_model_name
from taolu.models.factory import FACTORY_PATTERN
from taolu.models.spec import is_spec_path
from taolu.option_values import coerce_option, read_config_file, resolve_config
from taolu.rebuild import restore_model
from taolu.run.records import TrainResult
from taolu.run.routine import run_training
from taolu.run.setup import Resume, UserParts
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
    }
    if parts.train_data is None:
        checks["data"] = _check_data
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


def _check_users_parts(saved: dict[str, Any], data: Any, model: nn.Module | None) -> None:
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


def _check_data(spec: str) -> None:
    _refuse_user_object(spec, "Dataset", "data")
    data_kind(spec)


def _check_freeze(value: str) -> None:
    if value not in ("none", "backbone") and not value.isdigit():
        raise ConfigError(
            f"option 'freeze': {value!r} is not allowed; use none, backbone, or a number N "
            "(the first N parameter tensors)"
        )


def _weights_defaults(config: TrainConfig, given: set[str]) -> TrainConfig:
    """Pretrained torchvision weights bring their own preprocessing: the size they were
    trained at, ImageNet's mean and std, three channels, resize-then-crop. Applied where the
    user did not choose otherwise, before the config is frozen, so config.yaml shows it."""
    from taolu.models import model_kind

    if not config.weights or model_kind(config.model) != "torchvision":
        return config
    from taolu.models.zoo import weights_preprocessing  # torchvision: only when it is used

    preprocessing = weights_preprocessing(config.model, config.weights) or {}
    defaults = {
        "image_size": preprocessing.get("size"),
        "channels": 3,
        "normalize": "imagenet",
        "resize_mode": "crop",
    }
    chosen = {key: value for key, value in defaults.items() if key not in given and value}
    return dataclasses.replace(config, **chosen)


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


def train(
    *,
    model: str | nn.Module | None = None,
    data: str | Path | Dataset | None = None,
    val_data: Dataset | None = None,
    classes: Sequence[str] | None = None,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> TrainResult:
    """Run the complete training routine and return a `TrainResult`.

    `model` is a built-in name or any `nn.Module`; `data` an embedded name, an image folder,
    or any map-style Dataset yielding (image, label) with the image a tensor, a PIL image or
    a numpy array. `options` are the CLI's options as keywords (`epochs=5, lr=0.1`, see
    `taolu train --help`); `config` a YAML file beneath them; `resume` a run directory to
    continue from its last checkpoint.
    """
    parts = UserParts(
        model=model if isinstance(model, nn.Module) else None,
        train_data=data if isinstance(data, Dataset) else None,
        val_data=val_data,
        classes=list(classes) if classes is not None else None,
    )
    if val_data is not None and parts.train_data is None:
        raise ConfigError("val_data is for your own Dataset; pass the training Dataset as data=")
    if isinstance(model, str):
        options["model"] = model
    if isinstance(data, (str, Path)):
        options["data"] = str(data)
    return train_from_options(config, options, {}, parts=parts, resume=resume)


def _elastic_resume_dir(
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
    if FACTORY_PATTERN.fullmatch(saved):
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


def train_from_options(
    config_file: str | Path | None,
    options: Mapping[str, Any],
    set_options: Mapping[str, Any],
    *,
    parts: UserParts | None = None,
    resume: str | Path | None = None,
) -> TrainResult:
    """The one way into training for the CLI and `train`: resolve the layers (on top of the
    run's saved config when resuming), then run the routine."""
    if resume is None:
        resume = _elastic_resume_dir(config_file, options, set_options, parts)
    named = {**(read_config_file(config_file) if config_file else {}), **options}
    named.update(set_options or {})
    continued = None
    if resume is not None:
        state = read_state(find_checkpoint(resume, LAST_NAME), resuming=True)
        refuse_model_named_by_checkpoint(state, named.get("model"), parts)
        continued = Resume(Path(resume), state)
    resolved = build_train_config(
        config_file,
        options,
        set_options,
        parts=parts,
        resume_state=continued.state if continued else None,
    )
    if continued is None:
        # Refused now, not once the data has loaded. Under torchrun every process checks before
        # rank 0 makes the folder, which it does only after all have joined the process group.
        check_run_place(resolved.out, resolved.name)
    return run_training(resolved, parts, resume=continued, chosen=set(named))


def _split_to_evaluate(
    state: TrainState, path: Path, data: str | Path | Dataset | None
) -> tuple[Dataset, str]:
    """The images `evaluate` measures, and how to describe them: the caller's Dataset, or the
    validation split of `data` (default: the run's own, as split.json recorded it), checked
    against the checkpoint's image size and classes."""
    preprocessing = Preprocessing.from_dict(state.preprocessing)
    saved = state.config
    if isinstance(data, Dataset):
        split = NamedSamples(
            data, preprocessing.channels, preprocessing.size, preprocessing.resize_mode
        )
        described = f"{type(data).__qualname__} (your Dataset)"
    else:
        spec = str(data) if data is not None else saved["data"]
        _check_data(spec)
        # The run's own split, as recorded when it was trained: files added since stay out.
        manifest = RunDir(path.parent.parent).manifest if data is None else None
        bundle = load_data(
            spec,
            manifest=manifest,
            data_root=saved.get("data_root", ""),
            val_fraction=saved["val_fraction"],
            image_size=preprocessing.size[0]
            if preprocessing.size[0] == preprocessing.size[1]
            else 0,
            resize_mode=preprocessing.resize_mode,
            channels=preprocessing.channels,
        )
        if bundle.size != preprocessing.size:
            raise DataError(
                f"{spec}: images come out {bundle.size}, the model needs {preprocessing.size}"
            )
        if list(bundle.classes) != list(state.classes):
            raise DataError(
                f"{spec}: its classes {bundle.classes} are not the ones the model was trained "
                f"on {state.classes}"
            )
        split = bundle.val
        described = f"{bundle.description}, validation split"
    return split, described


def evaluate(
    run_or_checkpoint: str | Path,
    *,
    data: str | Path | Dataset | None = None,
    model: nn.Module | None = None,
    device: str = "auto",
    batch_size: int = 256,
    checkpoint: str = "best",
    tta: bool = False,
) -> dict[str, Any]:
    """Loss and accuracy of a run's checkpoint (`best` or `last`) on the run's validation
    split, or on `data`; with `tta`, each image's probabilities averaged over the flips and
    shifts the run trained with. Writes nothing."""
    path = find_checkpoint(run_or_checkpoint, f"{checkpoint}.pt")
    state = read_state(path)
    preprocessing = Preprocessing.from_dict(state.preprocessing)
    saved = state.config
    _check_users_parts(saved, data, model)
    torch_device = pick_device(device)
    split, described = _split_to_evaluate(state, path, data)
    pipeline = stored_eval_pipeline(preprocessing)
    if pipeline is not None and pipeline.has_steps:
        split = TransformedSplit(split, pipeline)
    # rebuild.restore_model still reads the checkpoint as a dict
    restored = restore_model(state.to_dict(), model).to(torch_device)
    if tta:
        seen = state.augmentation
        restored = ViewAveraged(restored, seen.get("flip", False), seen.get("shift", 0))
    precision = pick_precision(saved["precision"], torch_device)
    batches = Batches(split, batch_size, torch_device, shuffle=False)
    result = evaluate_batches(
        restored,
        batches,
        BatchTransform(preprocessing, torch_device),
        build_loss(saved["label_smoothing"]).to(torch_device),
        precision,
        classes=list(state.classes),
    )
    report = result.report
    return {
        "checkpoint": str(path),
        "data": described,
        "samples": result.images,
        "loss": result.loss,
        "acc": result.acc,
        **(report.scalars if report is not None else {}),
        "epoch": state.epoch,
        "tta": tta,
        "per_class": report.per_class if report is not None else {},
        "confusion_matrix": report.confusion_matrix if report is not None else [],
    }


def predict(
    run_or_checkpoint: str | Path,
    inputs: Sequence[Any],
    *,
    topk: int = 5,
    model: nn.Module | None = None,
    device: str = "auto",
    batch_size: int = 64,
    checkpoint: str = "best",
    progress: bool = False,
    trust_code: bool = False,
    reject_below: float | str | None = None,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """Top-k classes for each input: image files, folders (searched recursively), or
    in-memory images (PIL, numpy, tensor). A file that cannot be read gets {"path", "error"}
    and the rest still get {"path", "predictions": [{"class", "probability"}, ...]}.

    `run_or_checkpoint` is a run directory (its `checkpoint`, best or last), a checkpoint
    file, or a file `taolu export` wrote: .onnx, .safetensors (rebuilt from the model it
    records, or pass `model`) or .torchscript.pt, which holds code and is loaded only with
    `trust_code=True` (for files you trust). `progress` shows a bar on a terminal when there
    is more than a batch. `reject_below` (a probability, or "auto": the threshold the run
    chose on its validation split for 95% precision) adds "answer" to each result: the top
    class, or "unknown" when the model is less sure than that. Probabilities are calibrated
    by the temperature the run fitted on its validation split. `tta` averages each image's
    probabilities over the flips and shifts the run trained with (one forward pass each)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    classifier = load_classifier(
        run_or_checkpoint,
        checkpoint=checkpoint,
        model=model,
        device=pick_device(device),
        trust_code=trust_code,
    )
    items: list[Any] = []
    for item in inputs:
        items += expand_inputs([item]) if isinstance(item, (str, Path)) else [item]
    return classify_with(
        classifier,
        items,
        topk=topk,
        batch_size=batch_size,
        progress=progress,
        reject_below=reject_below,
        tta=tta,
    )


def eject(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the run in `run` as one standalone plain PyTorch + torchvision script (to `out`,
    default RUN/eject.py) that runs without taolu; returns the script's path."""
    from taolu.standalone import eject_run

    return eject_run(run, out)


def eject_from_options(
    config_file: str | Path | None,
    options: Mapping[str, Any],
    set_options: Mapping[str, Any],
    out: str | Path,
) -> Path:
    """`taolu train --eject FILE.py`: the options resolved as for training, written out as the
    script instead of trained; returns its path."""
    from taolu.standalone import eject_config

    named = {**(read_config_file(config_file) if config_file else {}), **options}
    named.update(set_options or {})
    resolved = build_train_config(config_file, options, set_options)
    return eject_config(resolved, set(named), out)


def inspect(run: str | Path, top: int = 20) -> dict[str, Any]:
    """What a run's best model gets wrong on its validation split, from the run's
    val_predictions.csv: {"images", "wrong", "top_losses": the `top` images with the highest
    loss (path, true, predicted, probability, true_probability, loss), "confused_pairs": each
    (true, predicted) pair with its count and paths, the most frequent first}."""
    from taolu.inspection import inspect_run

    return inspect_run(run, top)
