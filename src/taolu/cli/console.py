"""What the command prints on stderr besides its output: errors and taolu's warnings."""

from __future__ import annotations

import logging
import sys


def plain_message(error: BaseException) -> str:
    # Errors re-raised from DataLoader workers carry the worker's traceback text; the user
    # needs its last line, which names the file or sample.
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted, not as it was when the handler
    was made: whoever calls main() in-process (tests, notebooks) may swap it in between."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def show_warnings_plainly() -> None:
    """taolu's warnings (skipped files, ignored links) as 'taolu: warning: ...' on stderr."""
    logger = logging.getLogger("taolu")
    # Whatever handlers an earlier caller in this process left (a notebook's, a test's), the
    # command's warnings go to stderr, once.
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("taolu: warning: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
