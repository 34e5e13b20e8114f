"""taolu (套路, "the routine"): the complete PyTorch training routine for image classifiers.

import taolu
result = taolu.train(epochs=5)
taolu.evaluate(result.run_dir)
taolu.predict(result.run_dir, ["digit.png"], topk=3)
"""

from taolu.api import evaluate, predict, train
from taolu.config import TrainConfig
from taolu.engine.routine import TrainResult
from taolu.errors import CheckpointError, ConfigError, DataError, TaoluError, TrainingError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "TaoluError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "predict",
    "train",
]
