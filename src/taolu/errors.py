"""The errors taolu raises for bad input: each message names the thing at fault and the fix."""

import difflib
from collections.abc import Iterable


class TaoluError(Exception):
    """Base of every error that is the input's fault; the CLI prints it without a traceback."""


class ConfigError(TaoluError, ValueError):
    """An option is unknown, of the wrong type, or out of range."""


class DataError(TaoluError):
    """Data that cannot be found, read or used for training."""


class CheckpointError(TaoluError):
    """A file that is not a loadable taolu checkpoint."""


class TrainingError(TaoluError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


class ExportError(TaoluError):
    """An export that failed or whose file does not reproduce the PyTorch model."""


class TrainingInterrupted(TaoluError):
    """Training stopped on SIGTERM or Ctrl-C after saving a `last` checkpoint to resume from."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def shown(value: object) -> str:
    """`value` as a message shows it: its repr cut short (a few levels, items and characters
    deep), so a crafted value that nests or repeats itself cannot make the message huge, or
    slow to write."""
    import reprlib

    brief = reprlib.Repr()
    brief.maxlevel, brief.maxlist, brief.maxdict, brief.maxtuple = 3, 6, 6, 6
    brief.maxstring, brief.maxother, brief.maxlong = 80, 60, 40
    return brief.repr(value)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'did you mean X?' for the known word that `word` most likely misspells ('resnet-18':
    resnet18), or '' when none is close."""
    close = difflib.get_close_matches(word, [str(name) for name in known], n=1)
    return f"did you mean {close[0]}?" if close else ""
