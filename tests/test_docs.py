"""The README's Quick start is what CI runs: two command lines, train then test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"


def quick_start_lines() -> list[str]:
    if not README.is_file():
        pytest.skip(f"{README} is missing (it is written before commit)")
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "README has no '## Quick start' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "the Quick start section has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands_train_then_test():
    lines = quick_start_lines()
    assert len(lines) == 2, lines
    train, test = lines
    assert "taolu train" in train
    assert "pytest" in test
    assert "taolu train" not in test


def test_ci_entry_point_exists_and_runs_the_readme_command():
    if not CI_RUN.is_file():
        pytest.skip(f"{CI_RUN} is missing (it is written before commit)")
    assert os.access(CI_RUN, os.X_OK), ".ci/run is not executable"
    script = CI_RUN.read_text(encoding="utf-8")
    assert "README.md" in script and "Quick start" in script


def test_ci_runs_exactly_the_readmes_second_command(tmp_path):
    """Copy README and .ci/run, put a harmless command on the test line, run .ci/run."""
    if not CI_RUN.is_file() or not README.is_file():
        pytest.skip("README.md or .ci/run is missing (they are written before commit)")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    lines = quick_start_lines()
    text = README.read_text(encoding="utf-8")
    assert text.count(lines[1]) >= 1
    (tmp_path / ".ci").mkdir()
    shutil.copy2(CI_RUN, tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(
        text.replace(lines[1], "echo ci-ran-the-readme-line", 1), encoding="utf-8"
    )
    result = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ci-ran-the-readme-line" in result.stdout


def test_every_training_option_is_in_the_readme_table():
    """The README's option table lists every config field as its flag, with its default."""
    from taolu.config import FIELDS

    text = README.read_text(encoding="utf-8")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        rows = [line for line in text.splitlines() if line.startswith(f"| `{flag}`")]
        assert rows, f"{flag} is missing from the README's option table"
        if field.type in ("int", "float") and not isinstance(field.default, bool):
            assert f"`{field.default:g}`" in rows[0], f"{flag}: default {field.default}"


def test_the_readme_groups_the_options_as_train_help_does():
    """Each option sits under its group's heading (config.OPTION_GROUPS), in that order."""
    from taolu.config import FIELDS, OPTION_GROUPS

    text = README.read_text(encoding="utf-8")
    headings = {
        group: text.find(f"**{group.capitalize()}**: {description}.")
        for group, description in OPTION_GROUPS.items()
    }
    assert all(place >= 0 for place in headings.values()), headings
    assert list(headings.values()) == sorted(headings.values())
    last_table = text.find("| option", list(headings.values())[-1])
    ends = [*list(headings.values())[1:], text.find("\n\n", last_table)]
    spans = dict(zip(headings, zip(headings.values(), ends, strict=True), strict=True))
    for name, spec in FIELDS.items():
        start, end = spans[spec.metadata["group"]]
        row = f"| `--{name.replace('_', '-')}`"
        assert row in text[start:end], f"{row} is not under {spec.metadata['group']}"
