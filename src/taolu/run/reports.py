"""The run's closing documents: report/ with the best model's predictions on the first
validation images, and --lr-find's records, which train nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from taolu.engine.lr_find import LrSweep, sweep_lr, write_lr_sweep
from taolu.errors import ConfigError
from taolu.layout import RunDir, new_run_dir
from taolu.option_values import write_config
from taolu.run.lr_auto import range_and_band
from taolu.run.progress import TrainResult
from taolu.run.setup import Run
from taolu.track.runlog import write_json_atomic

logger = logging.getLogger("taolu")


@torch.no_grad()
def write_run_report(run: Run, run_dir: Path, count: int = 32) -> None:
    """report/: the best model's predictions on the first validation images and the maps of
    where it looked on its top losses (kept for `taolu report` to redraw), then the plots and
    report.html. A report that cannot be drawn is warned about; the run's results stand."""
    folder = RunDir(run_dir).report
    try:
        from safetensors.torch import save

        from taolu.atomic_file import write_atomic
        from taolu.run.top_loss_maps import write_top_loss_maps
        from taolu.track.pictures import to_uint8
        from taolu.track.report import SAMPLES_FILE, write_report

        images, labels = next(iter(run.data.val.iterate()))
        images, labels = images[:count], labels[:count]
        with run.compute.precision.autocast():
            probabilities = run.model.model(run.data.eval_transform(images)).float().softmax(1)
        confidence, predicted = probabilities.max(1)
        folder.mkdir(exist_ok=True)
        samples = {
            "images": to_uint8(images).contiguous().cpu(),
            "labels": labels.cpu(),
            "predicted": predicted.cpu(),
            "confidence": confidence.cpu(),
        }
        # safetensors' save_file makes its file 0600; bytes through write_atomic take the umask.
        write_atomic(folder / SAMPLES_FILE, save(samples))
        keep_mistake_pictures(run, run_dir)
        write_top_loss_maps(run, run_dir)
        write_report(run_dir)
    except Exception as error:  # plotting must never cost the user a finished run
        logger.warning("could not write the report in %s: %s", folder, error)


def keep_mistake_pictures(run: Run, run_dir: Path) -> None:
    """report/mistakes.safetensors: thumbnails of the validation images the report shows by
    name (the top losses, the confused pairs), picked from val_predictions.csv."""
    import numpy as np
    from safetensors.numpy import save

    from taolu.atomic_file import write_atomic
    from taolu.inspection import read_val_predictions
    from taolu.run.outcome import validation_images
    from taolu.track.pictures import to_uint8
    from taolu.track.report_mistakes import MISTAKES_FILE, pick_rows, thumbnail

    paths = RunDir(run_dir)
    if not paths.val_predictions.is_file():
        return
    wanted = pick_rows(read_val_predictions(run_dir))
    pictures = {
        row: thumbnail(np.ascontiguousarray(to_uint8(image).permute(1, 2, 0).numpy()))
        for row, image in validation_images(run, wanted).items()
    }
    if not pictures:
        return
    shapes = {picture.shape for picture in pictures.values()}
    if len(shapes) != 1:  # one tensor holds them all; mixed sizes cannot happen after fitting
        return
    rows = sorted(pictures)
    tensors = {
        "images": np.stack([pictures[row] for row in rows]),
        "rows": np.asarray(rows, dtype=np.int64),
    }
    write_atomic(paths.report / MISTAKES_FILE, save(tensors))


def report_lr_sweep(run: Run, sweep: LrSweep) -> TrainResult:
    """--lr-find's records: lr_find.csv and .png, summary.json and the suggested --lr."""
    config, network, recipe = run.config, run.model.network, run.recipe()
    layout = RunDir(new_run_dir(config.out, config.name))
    write_config(config, layout.config)
    csv_path, plot_path = write_lr_sweep(sweep, layout.root)
    suggested = sweep.suggested_lr  # the base lr, what --lr sets
    summary = {
        "lr_find": {
            "suggested_lr": suggested,
            "steps": len(sweep.lrs),
            "stopped_early": sweep.stopped_early,
            "plot": str(plot_path),
            "csv": str(csv_path),
        },
        "recipe": recipe,
        "run_dir": str(layout.root),
    }
    run.say(f"taolu: learning-rate finder; recipe: {recipe}; run {layout.root}")
    write_json_atomic(summary, layout.summary)
    run.say(
        f"taolu: suggested lr {suggested:.3g} (plot: {plot_path}); train with --lr {suggested:.3g}"
    )
    network.eval()
    return TrainResult(
        run_dir=layout.root,
        best_val_acc=float("nan"),
        final_val_acc=float("nan"),
        model=network,
        history=[],
        summary=summary,
        best_checkpoint=None,
        last_checkpoint=None,
        suggested_lr=suggested,
    )


def find_lr(run: Run) -> TrainResult:
    """--lr-find: the learning-rate range test, on the very step training would take."""
    if run.compute.cluster.active:
        raise ConfigError("--lr-find runs in one process; start it without torchrun")
    _, band = range_and_band(run.config.optimizer)
    sweep = sweep_lr(run.optim.stepper, run.data.train, run.generator, band=band)
    return report_lr_sweep(run, sweep)
