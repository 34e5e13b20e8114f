"""Networks taolu can build by name."""

from taolu.models.nets import BUILTIN_MODELS, build_model, check_model_name

__all__ = ["BUILTIN_MODELS", "build_model", "check_model_name"]
