"""The Python API: `train`, `evaluate`, `predict` and `eject`, taking the same options as the
CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.data import Dataset

from taolu.checkpoint import find_checkpoint, read_state
from taolu.classifier import load_classifier
from taolu.data.loaders import Batches, BatchTransform, Preprocessing
from taolu.data.pipeline import TransformedSplit, stored_eval_pipeline
from taolu.data.sources import load_data
from taolu.data.user_data import NamedSamples
from taolu.engine.loop import evaluate as evaluate_batches
from taolu.engine.optim import build_loss
from taolu.engine.precision import pick_device, pick_precision
from taolu.engine.tta import ViewAveraged
from taolu.errors import ConfigError, DataError
from taolu.inference import classify_with, expand_inputs
from taolu.layout import LAST_NAME, RunDir, check_run_place
from taolu.option_values import read_config_file
from taolu.rebuild import restore_model
from taolu.run.progress import TrainResult
from taolu.run.routine import EpochCheck, run_training
from taolu.run.setup import Resume, UserParts
from taolu.train_options import (
    build_train_config,
    check_data_option,
    check_users_parts,
    elastic_resume_dir,
    refuse_model_named_by_checkpoint,
)
from taolu.train_state import TrainState

if TYPE_CHECKING:
    from taolu.label_search import LabelSearch


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


def train_from_options(
    config_file: str | Path | None,
    options: Mapping[str, Any],
    set_options: Mapping[str, Any],
    *,
    parts: UserParts | None = None,
    resume: str | Path | None = None,
    stop_after_epoch: EpochCheck | None = None,
) -> TrainResult:
    """The one way into training for the CLI, `train` and `taolu tune`'s trials: resolve the
    layers (on top of the run's saved config when resuming), then run the routine
    (`stop_after_epoch`: run_training's)."""
    if resume is None:
        resume = elastic_resume_dir(config_file, options, set_options, parts)
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
    return run_training(
        resolved, parts, resume=continued, chosen=set(named), stop_after_epoch=stop_after_epoch
    )


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
        check_data_option(spec)
        # The run's own split, as recorded when it was trained: files added since stay out.
        manifest = RunDir(path.parent.parent).manifest if data is None else None
        bundle = load_data(
            spec,
            manifest=manifest,
            data_root=saved.get("data_root", ""),
            image_column=saved.get("image_column", ""),
            label_column=saved.get("label_column", ""),
            val_shards=saved.get("val_shards", ""),
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
    check_users_parts(saved, data, model)
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
    explain: str | Path | None = None,
    explain_layer: str | None = None,
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
    probabilities over the flips and shifts the run trained with (one forward pass each).
    `explain` (a folder, made if missing) gets one PNG per classified input: the image with
    a LayerCAM map of where the model looks for its top class, named after the input (never
    over an existing file); each result's "explanation" is its path. The map is taken at
    `explain_layer` (a dotted module name), by default the last convolutional block. It
    needs the torch network: a checkpoint or a .safetensors export, not ONNX/TorchScript."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    classifier = load_classifier(
        run_or_checkpoint,
        checkpoint=checkpoint,
        model=model,
        device=pick_device(device),
        trust_code=trust_code,
    )
    if explain_layer is not None and explain is None:
        raise ConfigError("option 'explain_layer' needs 'explain', the folder for the overlays")
    if explain is not None:
        from taolu.explanations import explainable_network

        explainable_network(classifier)  # ONNX refused before anything is classified
    items: list[Any] = []
    for item in inputs:
        items += expand_inputs([item]) if isinstance(item, (str, Path)) else [item]
    results = classify_with(
        classifier,
        items,
        topk=topk,
        batch_size=batch_size,
        progress=progress,
        reject_below=reject_below,
        tta=tta,
    )
    if explain is not None:
        from taolu.explanations import write_overlays

        write_overlays(
            classifier, items, results, explain, layer=explain_layer, batch_size=batch_size
        )
    return results


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


def find_label_issues(
    run: str | Path,
    *,
    folds: int = 4,
    epochs: int | None = None,
    data: Dataset | None = None,
    val_data: Dataset | None = None,
    model: nn.Module | None = None,
    device: str | None = None,
    verbose: bool = True,
) -> LabelSearch:
    """Likely mislabelled images among a run's training and validation images, most suspect
    first: `folds` models trained with the run's own options (`epochs` to shorten them) on
    all but one fold each, every image scored by the model that never saw it, and confident
    learning's per-class thresholds applied. Writes RUN/label_issues.csv (path, given,
    suggested, score: the given label's out-of-sample probability) and returns a
    `LabelSearch` (.issues: those rows as dicts; .path; .fold_accuracy). Nothing is moved or
    relabelled. A run on your own Dataset(s) or nn.Module needs them passed again (the module
    untrained: each fold trains a copy of it)."""
    from taolu.label_search import find_label_issues_in_run

    return find_label_issues_in_run(
        run,
        folds=folds,
        epochs=epochs,
        data=data,
        val_data=val_data,
        model=model,
        device=device,
        say=print if verbose else (lambda line: None),
    )
