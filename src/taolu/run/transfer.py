"""Transfer learning's choices about the network: its classifier head, --weights, --freeze and
the --fine-tune switch of the backbone."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from taolu.errors import ConfigError

logger = logging.getLogger("taolu")

# models.zoo is imported inside each function: it imports torchvision (~2 s, with
# torch._dynamo), which only transfer learning needs, not a run of taolu's own nets.


def head_name(model: nn.Module) -> str:
    """The classifier head's dotted name: timm's own, torchvision's per family, else the last
    Linear."""
    from taolu.models.timm_zoo import timm_head
    from taolu.models.zoo import head_path

    if (head := timm_head(model)) is not None:
        return head
    try:
        return head_path(model)
    except (ValueError, KeyError, AttributeError):
        linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ConfigError(
                "cannot tell this model's classifier head (no Linear layer)"
            ) from None
        return linears[-1]


def freeze_parameters(model: nn.Module, mode: str) -> Callable[[nn.Module], None]:
    """Freeze per --freeze; returns what keeps frozen BatchNorm layers in eval mode (their
    running statistics belong to the pretrained weights) each time training mode is set."""
    from taolu.models.zoo import freeze, set_frozen_batchnorm_eval

    frozen = freeze(model, mode, head_name(model))
    logger.debug("froze %d parameter tensors (--freeze %s)", len(frozen), mode)
    return set_frozen_batchnorm_eval


def prepare_transfer(
    model: nn.Module,
    *,
    weights: str,
    model_name: str,
    freeze_mode: str,
    fine_tune: int,
    resumed: bool,
    verbose: bool,
) -> tuple[Callable[[nn.Module], None] | None, str | None]:
    """Load --weights (strict, but for the replaced head; a resumed run's weights come from
    its checkpoint instead) and apply --freeze. Returns (what to call after each switch to
    training mode, the head's name when --fine-tune trains it alone first)."""
    after_train_mode = None
    if not resumed and weights:
        from taolu.models.timm_zoo import is_timm_name, weights_file
        from taolu.models.zoo import load_weights, load_weights_file

        if is_timm_name(model_name):  # a file, or DEFAULT from the local hub cache
            path = weights_file(model_name, weights)
            report = load_weights_file(model, path, model_name, head=head_name(model))
        else:
            report = load_weights(model, weights, model_name, head=head_name(model))
        if verbose:
            print(report.render(), flush=True)
    if freeze_mode != "none":
        after_train_mode = freeze_parameters(model, freeze_mode)
    if not fine_tune:
        return after_train_mode, None
    from taolu.models.zoo import set_frozen_batchnorm_eval

    return set_frozen_batchnorm_eval, head_name(model)


def train_backbone(model: nn.Module, head: str, trainable: bool, freeze_mode: str) -> None:
    """Switch the backbone's parameters on or off, leaving those --freeze keeps frozen."""
    for name, parameter in model.named_parameters():
        if not (name == head or name.startswith(head + ".")):
            parameter.requires_grad_(trainable)
    if freeze_mode != "none":
        from taolu.models.zoo import freeze

        freeze(model, freeze_mode, head)
