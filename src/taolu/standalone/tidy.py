"""The script's layout, as a formatter would leave it: lines within 100 characters (long
comments wrapped, trailing comments of long lines moved above them), one blank line at most,
two around top-level functions and classes."""

from __future__ import annotations

import textwrap

WIDTH = 100


def tidy(text: str) -> str:
    lines = [fitted for line in text.splitlines() for fitted in _fit(line)]
    lines = [line.rstrip() for line in lines]
    compact: list[str] = []
    for line in lines:
        if line or (compact and compact[-1]):
            compact.append(line)
    return "\n".join(_space_definitions(compact)).strip() + "\n"


def _fit(line: str) -> list[str]:
    """`line`, or the lines it becomes: a long comment wrapped, a long line's trailing comment
    moved onto its own line above."""
    if len(line) <= WIDTH:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    if stripped.startswith("#"):
        words = stripped.lstrip("#").strip()
        width = WIDTH - len(indent) - 2
        parts = textwrap.wrap(words, width, break_long_words=False, break_on_hyphens=False)
        return [f"{indent}# {part}" for part in parts]
    code, marker, comment = line.partition("  # ")
    if marker:
        return [*_fit(f"{indent}# {comment}"), code]
    if '"' in line:  # a long path or name in a string, which cannot be cut
        return [f"{line}  # noqa: E501"]
    return [line]


def _space_definitions(lines: list[str]) -> list[str]:
    """Two blank lines before each top-level def or class (and the comments right above it)
    and before whatever follows one."""
    wanted: set[int] = set()
    inside = False
    for index, line in enumerate(lines):
        top_level = bool(line) and not line[0].isspace() and not line.startswith((")", "]"))
        if not top_level:
            continue
        definition = line.startswith(("def ", "class "))
        if definition or inside:
            start = index
            while start > 0 and lines[start - 1].startswith("#"):
                start -= 1
            wanted.add(start)
        inside = definition
    spaced: list[str] = []
    for index, line in enumerate(lines):
        if index in wanted and spaced:
            while spaced and not spaced[-1]:
                spaced.pop()
            spaced += ["", ""]
        spaced.append(line)
    return spaced
