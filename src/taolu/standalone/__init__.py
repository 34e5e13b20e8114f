"""`taolu eject`: a run (or a configuration) written out as one standalone plain PyTorch +
torchvision script in the tutorial's order, which runs without taolu and ends by printing
`best_val_acc=...`. facts.py gathers what the run did; data_blocks.py, model_blocks.py and
script.py write it; layers.py writes a network layer by layer; tidy.py lays the text out."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from taolu.config import TrainConfig
from taolu.errors import ConfigError
from taolu.layout import RunDir
from taolu.standalone.facts import facts_of_config, facts_of_run
from taolu.standalone.script import render_script


def eject_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the script of the run in `run_dir` to `out` (default: RUN/eject.py, which a
    later eject replaces); returns its path."""
    run = RunDir(Path(run_dir))
    target = Path(out).expanduser() if out is not None else run.eject
    return _write(render_script(facts_of_run(run.root)), target, replace=out is None)


def eject_config(config: TrainConfig, chosen: Collection[str], out: str | Path) -> Path:
    """Write the script of `config` (the recipe filling in the options not in `chosen`) to
    `out`, without training; returns its path."""
    return _write(render_script(facts_of_config(config, chosen)), Path(out).expanduser())


def _write(text: str, target: Path, *, replace: bool = False) -> Path:
    """`text` into `target`; a file already there is refused (it may be the user's) unless it
    is the run directory's own eject.py."""
    if target.suffix != ".py":
        raise ConfigError(f"--out {target}: name a Python file (FILE.py)")
    if target.exists() and not replace:
        raise ConfigError(
            f"--out {target} already exists; taolu never overwrites a file: name another one"
        )
    if not target.parent.is_dir():
        raise ConfigError(f"--out {target}: the folder {target.parent} does not exist")
    target.write_text(text, encoding="utf-8")
    return target
