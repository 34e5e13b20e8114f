"""taolu (套路, "the routine"): the complete PyTorch training routine for image classifiers.

import taolu
result = taolu.train(epochs=5)
taolu.evaluate(result.run_dir)
taolu.predict(result.run_dir, ["digit.png"], topk=3)
taolu.export(result.run_dir, format="onnx")
taolu.serve(result.run_dir, port=8000)
taolu.eject(result.run_dir)  # the run as a plain PyTorch script
taolu.inspect(result.run_dir)  # its worst mistakes and the classes it confuses
taolu.find_label_issues(result.run_dir)  # images whose label looks wrong (label_issues.csv)
taolu.tune(data="digits", epochs=3, trials=20, out="runs/tune")  # search (pip install taolu[tune])
"""

import importlib

from taolu.config import TrainConfig
from taolu.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    TaoluError,
    TrainingError,
    TrainingInterrupted,
)

__version__ = "0.1.0"

# The API needs torch, which takes seconds to import; it is loaded on first use (PEP 562) so
# that `taolu --help` and a bad option answer at once.
_LAZY = {
    "train": "taolu.api",
    "evaluate": "taolu.api",
    "predict": "taolu.api",
    "eject": "taolu.api",
    "inspect": "taolu.api",
    "find_label_issues": "taolu.api",
    "export": "taolu.model_export",
    "serve": "taolu.serving",
    "TrainResult": "taolu.run.records",
    "tune": "taolu.tuning.study",
    "TuneResult": "taolu.tuning.study",
}


# Subpackages reachable as taolu.NAME without importing them first.
_LAZY_MODULES = ("serving",)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"taolu.{name}")
    raise AttributeError(f"module 'taolu' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "TaoluError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "TuneResult",
    "eject",
    "evaluate",
    "export",
    "find_label_issues",
    "inspect",
    "predict",
    "serve",
    "train",
    "tune",
]
