"""`taolu.tune`: a hyperparameter search with Optuna whose trials are ordinary taolu runs under
one study folder, kept in SQLite (STUDY_DIR/study.db) so a stopped study goes on when run
again, with trials side by side in worker processes (--jobs)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taolu.errors import ConfigError, TrainingError, TrainingInterrupted
from taolu.metric_names import lower_is_better
from taolu.option_values import coerce_option
from taolu.tuning.comparison import (
    COMMAND_FILE,
    PLOT_FILE,
    TABLE_FILE,
    best_trial,
    train_command,
    trial_rows,
    write_plot,
    write_table,
)
from taolu.tuning.space import SearchSpace, default_space, read_space
from taolu.tuning.trials import (
    INTERRUPTED,
    STUDY_FILE,
    STUDY_NAME,
    TRIAL_PREFIX,
    StudyPlan,
    build_pruner,
    require_optuna,
    run_trials,
    work,
)

DEFAULT_STUDY_DIR = "runs/tune"


@dataclass
class TuneResult:
    study_dir: Path
    best_value: float | None  # the monitored metric of the best complete trial
    best_options: dict[str, Any]  # the options it drew ({} when the default recipe won)
    best_run_dir: Path | None
    command: str  # `taolu train ...` for the best options ("" before any trial completed)
    table: Path  # trials.csv
    plot: Path  # trials.png
    trials: list[dict[str, Any]]  # trials.csv's rows


def tune(
    *,
    out: str | Path = DEFAULT_STUDY_DIR,
    trials: int = 20,
    timeout: float | None = None,
    jobs: int = 1,
    space: str | Path | Mapping[str, Any] | None = None,
    pruner: Any = "median",
    baseline: bool = True,
    config: str | Path | None = None,
    set_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> TuneResult:
    """Search for better training options: up to `trials` trials in all (counting those a
    study in `out` already holds), each an ordinary run in OUT/trial-NNN.

    `options` (and `config`, a YAML file beneath them; `set_options`, --set above them) are
    `taolu.train`'s, fixed for every trial. `space` is a YAML file or a mapping of option ->
    list of choices or {low, high, log}; None searches the default space (minus the options
    fixed here). `pruner`: median, hyperband, none, or an Optuna pruner. `baseline`: trial 0
    runs the default recipe. `timeout` (seconds): no trial starts after it. `jobs`: trials
    side by side in as many processes, torch's threads shared out among them.
    """
    optuna = require_optuna()
    _check_counts(trials, timeout, jobs)
    folder = Path(out).expanduser().resolve()
    set_options = dict(set_options or {})
    plan = _plan(folder, config, dict(options), set_options, space, trials, timeout, pruner)
    plan = _with_baseline_and_threads(plan, baseline, jobs)
    study = _open_study(optuna, plan)
    done = len(study.get_trials(deepcopy=False))
    if done >= trials:
        print(f"taolu tune: {folder} already holds {done} trials; raise --trials to run more")
    else:
        searched = ", ".join(plan.space.options)
        print(
            f"taolu tune: trials {done + 1}-{trials} into {folder} "
            f"({jobs} at a time; searching {searched} from {plan.space.source})",
            flush=True,
        )
        _run_workers(plan, min(jobs, trials - done))
    return _sum_up(study, plan)


def _check_counts(trials: int, timeout: float | None, jobs: int) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r}: give a whole number of at least 1")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout {timeout!r}: give a number of seconds above 0")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs {jobs!r}: give a whole number of at least 1")


def _plan(
    folder: Path,
    config_file: str | Path | None,
    options: dict[str, Any],
    set_options: dict[str, Any],
    space: str | Path | Mapping[str, Any] | None,
    trials: int,
    timeout: float | None,
    pruner: Any,
) -> StudyPlan:
    """The options checked as `taolu train` checks them (before anything trains) and the
    space read against them."""
    from taolu.option_values import read_config_file
    from taolu.train_options import build_train_config

    fixed = {
        **(read_config_file(config_file) if config_file else {}),
        **options,
        **set_options,
    }
    fixed = {str(key).replace("-", "_"): value for key, value in fixed.items()}
    refused = sorted({"out", "name", "lr_find", "resume"} & set(fixed))
    if refused:
        raise ConfigError(
            f"option '{refused[0]}' does not go with tune: each trial is a fresh run named "
            "trial-NNN in the study folder (give that folder as --out)"
        )
    resolved = build_train_config(config_file, {**options, "out": str(folder)}, set_options)
    chosen: SearchSpace = default_space(fixed) if space is None else read_space(space, fixed)
    return StudyPlan(
        folder=folder,
        config_file=str(config_file) if config_file else None,
        options=options,
        set_options=set_options,
        space=chosen,
        trials=trials,
        deadline=time.time() + timeout if timeout else None,
        pruner=pruner,
        monitor=resolved.monitor,
        seed=resolved.seed,
        baseline=True,
        fixed=fixed,
    )


def _with_baseline_and_threads(plan: StudyPlan, baseline: bool, jobs: int) -> StudyPlan:
    from dataclasses import replace

    threads = 0
    if jobs > 1:  # one process a trial: share the cores out, or J x cores threads fight
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = max(1, (cores or os.cpu_count() or 1) // jobs)
    return replace(plan, baseline=baseline, threads=threads)


def _open_study(optuna: Any, plan: StudyPlan) -> Any:
    """The study in STUDY_DIR/study.db: made, or found and checked to be the same search
    (same fixed options, space and metric), its trials left running by a stop marked failed."""
    from optuna.trial import TrialState

    folder = plan.folder
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"option 'out': {folder} is a file; --out names the study folder")
    database = folder / STUDY_FILE
    if not database.exists() and folder.is_dir():
        strays = sorted(path.name for path in folder.glob(TRIAL_PREFIX + "*"))
        if strays:
            raise ConfigError(
                f"{folder} holds {strays[0]} but no {STUDY_FILE} to go on from; give tune a "
                "new --out folder"
            )
    folder.mkdir(parents=True, exist_ok=True)
    direction = "minimize" if lower_is_better(plan.monitor) else "maximize"
    storage = optuna.storages.RDBStorage(plan.storage)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction=direction,
        load_if_exists=True,
        pruner=build_pruner(plan.pruner, optuna),
    )
    search = _search_identity(plan)
    if not study.user_attrs:
        for key, value in search.items():
            study.set_user_attr(key, value)
    else:
        _check_same_search(study.user_attrs, search, folder)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Left running by a study that was stopped: its run directory stays as it was.
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return study


def _search_identity(plan: StudyPlan) -> dict[str, Any]:
    """What makes two sessions the same search: the trials must be comparable."""
    return {
        "config_file": plan.config_file or "",
        "fixed": {key: _plain(coerce_option(key, value)) for key, value in plan.fixed.items()},
        "space": plan.space.describe(),
        "monitor": plan.monitor,
        "baseline": plan.baseline,
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, list, dict)) else str(value)


def _check_same_search(saved: Mapping[str, Any], search: Mapping[str, Any], folder: Path) -> None:
    differing = [key for key, value in search.items() if saved.get(key) != value]
    if not differing:
        return
    what = differing[0]
    if what == "fixed":
        before, now = saved.get("fixed", {}), search["fixed"]
        changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
        what = f"options ({', '.join(changed)})"
    raise ConfigError(
        f"the study in {folder} was run with other {what}; give the same ones to go on with "
        "it, or a new --out folder for a new search"
    )


def _run_workers(plan: StudyPlan, workers: int) -> None:
    """The trials: in this process for one job; else in `workers` spawned processes."""
    if workers == 1:
        run_trials(plan, 0)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
    lock = context.Lock()
    processes = [
        context.Process(target=work, args=(plan, index, lock), name=f"taolu-tune-{index}")
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them save and stop
        for process in processes:
            process.join()
        raise TrainingInterrupted(
            f"taolu tune stopped; run the same command again to go on with the study in "
            f"{plan.folder}",
            130,
        ) from None
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise TrainingError(
            f"{len(failed)} of {workers} trial processes ended with an error (shown above); "
            f"the trials done are in {plan.folder / STUDY_FILE}"
        )


def _sum_up(study: Any, plan: StudyPlan) -> TuneResult:
    """trials.csv, trials.png and best_command.txt, and the best trial said."""
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials, plan.space.options)
    table, plot = plan.folder / TABLE_FILE, plan.folder / PLOT_FILE
    write_table(rows, table)
    if trials:
        write_plot(trials, plan.monitor, plot)
    best = best_trial(trials, plan.monitor)
    counts = {state: sum(row["state"] == state for row in rows) for state in ("complete", "pruned")}
    failed = len(rows) - sum(counts.values())
    summary = f"{len(rows)} trials ({counts['complete']} complete, {counts['pruned']} pruned"
    summary += f", {failed} failed or interrupted)" if failed else ")"
    if best is None:
        print(f"taolu tune: {summary}; none completed, so no best yet. Table: {table}")
        return TuneResult(plan.folder, None, {}, None, "", table, plot, rows)
    drawn = best.user_attrs.get("options", {})
    command = train_command(plan.config_file, {**plan.options, **plan.set_options}, drawn)
    from taolu.atomic_file import write_atomic

    write_atomic(plan.folder / COMMAND_FILE, (command + "\n").encode("utf-8"))
    run_dir = Path(best.user_attrs.get("run_dir", plan.folder))
    recipe = " (the default recipe)" if best.user_attrs.get("baseline") else ""
    print(
        f"taolu tune: {summary}; best {plan.monitor} {best.value:.4f} in {run_dir}{recipe}\n"
        f"taolu tune: table {table}, plot {plot}\n"
        f"taolu tune: the best options as a command:\n  {command}",
        flush=True,
    )
    return TuneResult(plan.folder, best.value, dict(drawn), run_dir, command, table, plot, rows)
