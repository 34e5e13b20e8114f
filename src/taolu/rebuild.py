"""A trained network rebuilt from what a checkpoint (or an export's metadata) describes,
for evaluate, predict and export alike: taolu's nets, torchvision and timm models and layer
lists by name; never code or files a checkpoint names (a user's own module is handed in)."""

from __future__ import annotations

from typing import Any

from torch import nn

from taolu import checkpoint as ckpt
from taolu.data.loaders import Preprocessing
from taolu.errors import CheckpointError, ConfigError
from taolu.models import build_model
from taolu.models.factory import is_factory_name
from taolu.models.spec import is_spec_path


def rebuild_network(state: dict[str, Any]) -> nn.Module:
    """A fresh network of the shape a checkpoint (or an export's metadata) describes: a built-in,
    torchvision or timm (`timm:NAME`) net by name, or a layer list from the list stored with it.
    Nothing named in the file is ever imported or read: a factory (package.module:factory) or
    the user's own nn.Module must be passed in by the caller, and a layer list stored only as a
    path (taolu before the list was stored) is refused."""
    name = state.get("model_name")
    if not name:
        raise CheckpointError(
            f"this checkpoint was trained with your own nn.Module ({state['model_class']}); "
            "create it in Python and pass it: taolu.predict(run, files, model=MyNet()), "
            "taolu.evaluate(run, model=MyNet()) or taolu.export(run, model=MyNet())"
        )
    if is_factory_name(name):
        raise CheckpointError(
            f"this checkpoint was trained with {name}; taolu does not import code named inside "
            "a checkpoint: build the model in Python and pass it with model=... (to "
            "taolu.predict, taolu.evaluate or taolu.export)"
        )
    layers = state.get("model_spec")
    if is_spec_path(name) and layers is None:
        raise CheckpointError(
            f"this checkpoint was trained with the layer list {name} but does not hold the "
            "list itself (an older taolu stored only the file's path), and taolu does not read "
            "files named inside a checkpoint: train again with this taolu, or build the network "
            "in Python (taolu.models.spec) and pass it with model=..."
        )
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    try:
        return build_model(
            name,
            preprocessing.channels,
            preprocessing.size,
            len(state["classes"]),
            weights=state["config"].get("weights"),
            layers=layers if is_spec_path(name) else None,
        )
    except ConfigError as error:
        raise CheckpointError(f"the network this file describes cannot be built: {error}") from None


def restore_model(state: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The checkpoint's network with its weights: rebuilt by `rebuild_network` for built-in nets,
    torchvision models and layer lists; a user's own nn.Module (or a factory's) must be handed
    in as `model` (taolu never imports it by itself)."""
    if model is None:
        model = rebuild_network(state)
    try:
        model.load_state_dict(ckpt.inference_weights(state))
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's weights do not fit the model: {error}") from None
    return model.eval()
