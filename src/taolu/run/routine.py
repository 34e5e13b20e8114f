"""The complete training routine, top to bottom, as the tutorial lays it out:

prepare the data -> build the model -> make the loss and the optimizer -> train -> test -> save.

Each phase is one call returning a small typed object (run/setup.py); the run directory, the
checkpoints and the summary are run/records.py's; the process group, the stop request and
--deterministic are `with` blocks (run/lifecycle.py), so no way out of a run leaks them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from taolu.config import TrainConfig
from taolu.data.pipeline import refuse_too_many_bad_files
from taolu.engine.batchnorm import recalibrate_batchnorm
from taolu.engine.distributed import buffers_from_main
from taolu.engine.loop import EpochResult, evaluate, train_one_epoch
from taolu.errors import ConfigError
from taolu.metric_names import column, improved
from taolu.run.lifecycle import StopRequest, computing, deterministic_algorithms
from taolu.run.lr_auto import LrChoice, choose_lr
from taolu.run.progress import Progress, TrainResult, resume_progress
from taolu.run.records import Records, open_records
from taolu.run.recovery import train_or_recover
from taolu.run.reports import find_lr, write_run_report
from taolu.run.setup import (
    Resume,
    Run,
    UserParts,
    build_network,
    make_data,
    make_model,
    make_optim,
    prepare_data,
    settle_recipe,
)
from taolu.run.tracking import log_outcome, open_tracking
from taolu.run.transfer import train_backbone
from taolu.track.progress import EpochProgress
from taolu.track.runlog import MISCLASSIFIED_SHOWN

logger = logging.getLogger("taolu")
# Asked after each saved epoch with its history row (metrics.csv's columns): True stops the run.
EpochCheck = Callable[[dict[str, Any]], bool]


def run_training(
    options: TrainConfig,
    parts: UserParts | None = None,
    *,
    resume: Resume | None = None,
    chosen: Collection[str] = (),
    stop_after_epoch: EpochCheck | None = None,
) -> TrainResult:
    """Train `options`: a fresh run, or `resume`'s run from its last checkpoint. `chosen` names
    the options the user set; the data's default recipe fills in the rest. `stop_after_epoch`
    sees each epoch's history row once its checkpoint is saved; True ends the run there, as
    --patience does (`taolu tune` prunes bad trials with it)."""
    wall_start = time.perf_counter()
    if resume is not None and resume.state.epoch >= options.epochs:
        raise ConfigError(
            f"nothing to do: the run in {resume.run_dir} already completed "
            f"{resume.state.epoch} epochs; pass a larger --epochs to train further"
        )
    with (
        deterministic_algorithms(options.deterministic),
        StopRequest().installed() as stop,
        computing(options.device, options.precision, options.sync_bn) as compute,
    ):
        parts = parts or UserParts()
        torch.manual_seed(options.seed)
        # One CPU generator drives shuffling and augmentation; its state is checkpointed.
        generator = torch.Generator().manual_seed(options.seed)

        # 1. Prepare the data set, and 2. build the network model; the recipe then settles,
        # from both, the config every later phase reads.
        users_model, resumed = parts.model is not None, resume is not None
        prepared = prepare_data(options, parts, resume)
        torch.manual_seed(options.seed)
        network = build_network(options, parts.model, prepared, resume)
        recipe = settle_recipe(
            options, chosen, prepared, network, users_model=users_model, resumed=resumed
        )
        config, notes = recipe.config, list(recipe.notes)
        data = make_data(config, prepared, compute, users_model=users_model)
        model = make_model(config, network, data, compute, users_model=users_model, resumed=resumed)
        if model.recalibrate_batchnorm:
            notes.append("BatchNorm statistics re-measured before each evaluation (slow momentum)")

        # 3. Make the loss function and the optimizer, at the lr a range test picks (--lr auto).
        lr_choice = None
        if recipe.sweep_lr and not config.lr_find:
            lr_choice = choose_lr(config, model, data, compute)
            config = dataclasses.replace(config, lr=lr_choice.lr)
            notes.append(f"lr {lr_choice.lr:.3g} from a range test on your model and data")
        optim = make_optim(config, model, data, compute)
        run = Run(config, notes, compute, data, model, optim, generator, stop, wall_start)
        if config.lr_find:  # instead of training: the learning-rate range test
            return find_lr(run)
        return train_and_test(run, resume, lr_choice, stop_after_epoch)


def train_and_test(
    run: Run,
    resume: Resume | None,
    lr_choice: LrChoice | None,
    stop_after_epoch: EpochCheck | None = None,
) -> TrainResult:
    """4. Train and 5. test, epoch by epoch; 6. save after each; 7. sum up."""
    config, progress = run.config, resume_progress(resume, run.optim, run.generator)
    is_main = run.compute.cluster.is_main
    # The tracker outlasts the records: the report and the export come after TensorBoard closes.
    with open_tracking(config, is_main) as tracker:
        with open_records(run, resume, progress, lr_choice, tracker) as records:
            progress.clock = time.perf_counter()
            for epoch in range(progress.epoch + 1, config.epochs + 1):
                trained = train_epoch(run, records, progress, epoch)
                tested = test_epoch(run)
                go_on = record_and_save(run, records, progress, epoch, trained, tested)
                if stop_after_epoch is not None and stop_after_epoch(records.log.history[-1]):
                    progress.stopped_early = progress.stopped_early or epoch < config.epochs
                    go_on = False
                if not go_on:
                    break
            result = records.finish(progress)
        if is_main:
            if config.report:
                write_run_report(run, result.run_dir)
            log_outcome(tracker, run, result)
            run.say(
                f"taolu: best val acc {result.best_val_acc:.4f} (epoch {progress.best_epoch}) "
                f"-> {result.best_checkpoint}; records in {result.run_dir}"
            )
    return result


def train_epoch(run: Run, records: Records, progress: Progress, epoch: int) -> EpochResult:
    """4. One epoch of training steps (the rest of a stopped one, on resume)."""
    config = run.config
    if run.stop():
        raise records.interrupted(f"before epoch {epoch}")
    if config.fine_tune:
        # The first --fine-tune epochs train the head alone; then the backbone joins in.
        trainable = epoch > config.fine_tune
        train_backbone(run.model.model, run.model.fine_tune_head, trainable, config.freeze)
    trained = train_or_recover(run, records, progress, epoch, train_steps)
    records.log.log_steps(
        progress.step + 1, trained.step_losses, trained.step_lrs, trained.step_grad_norms
    )
    progress.step += trained.steps - (progress.partial.steps if progress.partial else 0)
    progress.partial = None
    if trained.stopped is not None:  # SIGTERM or Ctrl-C: save where the epoch stands
        partial = trained.stopped.to_dict()
        records.save(records.state(progress, epoch - 1, progress.elapsed(), partial_epoch=partial))
        where = f"in epoch {epoch} after {trained.stopped.first_batch} of {len(run.data.train)}"
        raise records.interrupted(where + " batches")
    if histogram_epoch(config.histograms, epoch):
        records.log.log_histograms(run.model.model, epoch, gradients=False)
    return trained


def histogram_epoch(every: int, epoch: int) -> bool:
    """Whether this epoch logs weight and gradient histograms (--histograms N)."""
    return bool(every) and epoch % every == 0


def train_steps(run: Run, records: Records, progress: Progress, epoch: int) -> EpochResult:
    """The epoch's optimizer steps, with its progress bar."""
    config, optim = run.config, run.optim
    bar = EpochProgress(config.progress, len(run.data.train), f"epoch {epoch}")
    histograms = histogram_epoch(config.histograms, epoch)
    try:
        return train_one_epoch(
            optim.stepper,
            run.data.train,
            optim.schedule,
            run.generator,
            on_nan=config.on_nan,
            start=progress.partial,
            # Under torchrun the agent owns signals: a stop there is a restart from last.pt.
            should_stop=None if run.compute.cluster.active else run.stop,
            on_step=bar,
            inspect_gradients=records.gradient_histograms(epoch) if histograms else None,
        )
    finally:
        bar.close()


def test_epoch(run: Run) -> EpochResult:
    """5. Every validation sample once, through the EMA's weights when kept."""
    if run.model.recalibrate_batchnorm:
        recalibrate_batchnorm(
            run.model.evaluated,
            run.data.train,
            run.data.eval_transform,
            run.compute.precision,
            run.compute.cluster,
        )
    else:
        buffers_from_main(run.compute.cluster, run.model.evaluated)
    return evaluate(
        run.model.evaluated,
        run.data.val,
        run.data.eval_transform,
        run.optim.eval_loss_fn,
        run.compute.precision,
        classes=run.data.bundle.classes,
        keep_outputs=MISCLASSIFIED_SHOWN,
        cluster=run.compute.cluster,
    )


def record_and_save(
    run: Run,
    records: Records,
    progress: Progress,
    epoch: int,
    trained: EpochResult,
    tested: EpochResult,
) -> bool:
    """6. Record the epoch, save last.pt (and best.pt when the monitored metric improved);
    False when the run ends here early (--patience)."""
    config, data = run.config, run.data
    if data.bundle.listing is not None or data.bundle.streamed:
        # files decoded per epoch (or streamed shards) may only now prove unreadable
        refuse_too_many_bad_files(
            data.bundle, data.prepared.skips, config.max_bad_fraction, config.data
        )
    row = records.record_epoch(epoch, progress.elapsed(), trained, tested)
    history = records.log.history
    better = progress.best_epoch == 0 or improved(
        row, history[progress.best_epoch - 1], config.monitor
    )
    if better:
        progress.best_val_acc, progress.best_epoch = tested.acc, epoch
        records.keep_best_outputs(tested)
    run.optim.schedule.end_epoch(row[column(config.monitor)])
    state = records.state(
        progress, epoch, row["elapsed_seconds"], confusion_matrix=tested.report.confusion_matrix
    )
    records.save(state, improved=better)
    if run.stop() and epoch < config.epochs:  # asked to stop while this epoch was evaluated
        raise records.interrupted(f"after epoch {epoch}")
    run.say(
        f"epoch {epoch:>3}/{config.epochs}  train loss {trained.loss:.4f} acc "
        f"{trained.acc:.4f}  val loss {tested.loss:.4f} acc {tested.acc:.4f}  "
        f"{trained.images_per_second:,.0f} img/s  {row['elapsed_seconds']:.1f}s"
    )
    if config.patience and epoch - progress.best_epoch >= config.patience:
        if epoch < config.epochs:
            progress.stopped_early = True
            run.say(
                f"taolu: stopping early: no better {config.monitor} for "
                f"{config.patience} epochs (best at epoch {progress.best_epoch})"
            )
            return False
    return True
