"""`taolu tune`'s trials: each one an ordinary taolu run in STUDY_DIR/trial-NNN, its epochs
reported to Optuna's pruner, and the loop one worker process runs (many share the study's
SQLite file under --jobs)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taolu.errors import ConfigError, TaoluError, TrainingInterrupted
from taolu.metric_names import column
from taolu.tuning.space import SearchSpace

STUDY_NAME = "taolu"
STUDY_FILE = "study.db"
TRIAL_PREFIX = "trial-"
PRUNERS = ("median", "hyperband", "none")
INTERRUPTED = "interrupted"  # a failed trial's error when a stop, not its options, ended it
# Under the user's own options: trials run side by side, so no bars, per-epoch lines or
# report pages unless asked for (the study's own lines say how each trial went).
TRIAL_DEFAULTS = {"verbose": False, "progress": False, "report": False}


def require_optuna() -> Any:
    """The optuna module, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "taolu tune needs Optuna, which is not installed: pip install 'taolu[tune]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # taolu prints its own line a trial
    return optuna


def trial_name(number: int) -> str:
    return f"{TRIAL_PREFIX}{number:03d}"


@dataclass(frozen=True)
class StudyPlan:
    """What every worker needs to run trials: picklable, for worker processes."""

    folder: Path  # STUDY_DIR, absolute
    config_file: str | None
    options: dict[str, Any]  # the user's fixed options (flags or keywords)
    set_options: dict[str, Any]  # --set, beating everything
    space: SearchSpace
    trials: int  # the study's total, counting trials from earlier sessions
    deadline: float | None  # time.time() after which no trial starts
    pruner: Any  # a name in PRUNERS, or an Optuna pruner
    monitor: str
    seed: int
    baseline: bool  # trial 0 runs the default recipe: nothing drawn
    threads: int = 0  # torch threads per worker process; 0 leaves torch's own
    fixed: dict[str, Any] = field(default_factory=dict)  # every fixed option, for the space

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.folder / STUDY_FILE}"


def build_pruner(pruner: Any, optuna: Any) -> Any:
    """median: a trial stops after an epoch whose value is worse than the median of the
    finished trials' at that epoch (once 3 have finished); hyperband: successive halving
    over epochs; none: every trial runs all its epochs."""
    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")


class EpochReporter:
    """run_training's stop_after_epoch: each epoch's monitored value to the trial, and True
    (stop) when the pruner judges the trial worse than the others at that epoch."""

    def __init__(self, trial: Any, monitor: str):
        self.trial, self.key = trial, column(monitor)
        self.pruned_at = 0  # the epoch the pruner stopped the trial after; 0 = it did not

    def __call__(self, row: dict[str, Any]) -> bool:
        value = row.get(self.key)
        if value is None or not math.isfinite(value):
            return False
        self.trial.report(float(value), int(row["epoch"]))
        if self.trial.should_prune():
            self.pruned_at = int(row["epoch"])
        return bool(self.pruned_at)


def work(plan: StudyPlan, worker: int, lock: Any) -> None:
    """A worker process's entry (--jobs): errors as one line, as the taolu command shows them."""
    try:
        run_trials(plan, worker, lock)
    except (TrainingInterrupted, KeyboardInterrupt):
        sys.exit(130)
    except TaoluError as error:
        print(f"taolu tune: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_trials(plan: StudyPlan, worker: int, lock: Any = None) -> None:
    """Ask the study for trials and run them until it holds plan.trials or the deadline
    passes. `lock` (shared by the workers) makes counting and asking one step, so the study
    never overshoots its total."""
    optuna = require_optuna()
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    study = optuna.load_study(study_name=STUDY_NAME, storage=plan.storage)
    # Seeded per worker and per session: a resumed study does not redraw its first trials.
    seed = plan.seed + 1000 * worker + len(study.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=STUDY_NAME,
        storage=plan.storage,
        # constant_liar: trials running in other processes count as bad guesses meanwhile, so
        # side-by-side workers do not all draw the same promising point.
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=build_pruner(plan.pruner, optuna),
    )
    while True:
        with lock if lock is not None else contextlib.nullcontext():
            if plan.deadline is not None and time.time() >= plan.deadline:
                return
            trials = study.get_trials(deepcopy=False)
            if len(trials) >= plan.trials:
                return
            trial = study.ask()
            # The first trial asked trains the default recipe, and again if a stop failed it.
            baseline = plan.baseline and not any(_holds_baseline(other) for other in trials)
            trial.set_user_attr("baseline", baseline)
        run_trial(study, trial, plan, baseline)


def _holds_baseline(trial: Any) -> bool:
    """Whether `trial` trained (or is training) the default recipe: one a stop interrupted
    does not count; one that failed on its own would fail again."""
    interrupted = trial.state.name == "FAIL" and trial.user_attrs.get("error") == INTERRUPTED
    return bool(trial.user_attrs.get("baseline")) and not interrupted


def run_trial(study: Any, trial: Any, plan: StudyPlan, baseline: bool) -> None:
    """One trial: its options drawn (none for the baseline), trained as a taolu run in
    STUDY_DIR/trial-NNN, and its outcome told to the study."""
    from optuna.trial import TrialState

    from taolu.api import train_from_options

    drawn = {} if baseline else plan.space.draw(trial, plan.fixed)
    name = trial_name(trial.number)
    trial.set_user_attr("options", drawn)
    trial.set_user_attr("run_dir", str(plan.folder / name))
    reporter = EpochReporter(trial, plan.monitor)
    options = {**TRIAL_DEFAULTS, **plan.options, **drawn, "out": str(plan.folder), "name": name}
    started = time.perf_counter()
    try:
        result = train_from_options(
            plan.config_file, options, plan.set_options, stop_after_epoch=reporter
        )
    except TrainingInterrupted as stopped:
        trial.set_user_attr("error", INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        raise TrainingInterrupted(
            f"taolu tune stopped during {name}; run the same command again to go on with the "
            f"study in {plan.folder}",
            stopped.exit_code,
        ) from None
    except TaoluError as error:  # a bad combination of options, or a run that diverged
        trial.set_user_attr("error", str(error))
        study.tell(trial, state=TrialState.FAIL)
        say_trial(name, drawn, baseline, f"failed: {error}")
        return
    value = best_value(result.history, plan.monitor)
    trial.set_user_attr("epochs", int(result.history[-1]["epoch"]))
    # Judged bad only after its last epoch, the trial has run in full: its value stands.
    if reporter.pruned_at and result.summary.get("stopped_early"):
        study.tell(trial, state=TrialState.PRUNED)
        outcome = f"pruned after epoch {reporter.pruned_at} ({plan.monitor} {value:.4f})"
    elif value is None:
        trial.set_user_attr("error", f"no {plan.monitor} was measured")
        study.tell(trial, state=TrialState.FAIL)
        outcome = f"failed: no {plan.monitor} was measured"
    else:
        study.tell(trial, value)
        outcome = f"{plan.monitor} {value:.4f}"
    say_trial(name, drawn, baseline, f"{outcome} in {time.perf_counter() - started:.0f} s")


def best_value(history: list[dict[str, Any]], monitor: str) -> float | None:
    """The run's best value of the monitored metric (the epoch best.pt holds)."""
    from taolu.metric_names import lower_is_better

    values = [row.get(column(monitor)) for row in history]
    finite = [float(value) for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return None
    return min(finite) if lower_is_better(monitor) else max(finite)


def say_trial(name: str, drawn: dict[str, Any], baseline: bool, outcome: str) -> None:
    shown = (
        "the default recipe"
        if baseline
        else ", ".join(f"{key} {shown_value(value)}" for key, value in drawn.items())
    )
    print(f"taolu tune: {name}: {outcome}  [{shown}]", flush=True)


def shown_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
