"""Networks taolu can build: built-in nets, torchvision classifiers, layer lists, factories."""

from taolu.models.factory import build_model, check_model_name, model_kind
from taolu.models.nets import BUILTIN_MODELS

__all__ = ["BUILTIN_MODELS", "build_model", "check_model_name", "model_kind"]
