"""The script's steps 2 to 4: the network (written out, built by torchvision, or the user's
factory), pretrained weights and freezing, the weight average, the loss, the optimizer and
the lr schedule, each block written for the run's options only."""

from __future__ import annotations

import re

from taolu.engine.optim import DENSE_FAN_IN
from taolu.models import model_kind
from taolu.models.anatomy import widest_dense_layer
from taolu.models.zoo import _builder_options as builder_options
from taolu.models.zoo import first_conv_path
from taolu.standalone.facts import RunFacts
from taolu.standalone.layers import layer_call, write_network


def attribute_path(dotted: str) -> str:
    """ "classifier.6" -> "classifier[6]": how Python reaches a submodule by its dotted name."""
    return re.sub(r"\.(\d+)", r"[\1]", "." + dotted).removeprefix(".")


def model_block(facts: RunFacts) -> str:
    """Step 2: the network, on the device; with --weights and --freeze applied."""
    config = facts.config
    kind = "own" if facts.own_model else model_kind(config.model)
    if kind == "own":
        text = (
            f"# your own nn.Module, {facts.own_model}, which taolu cannot write out: paste its "
            "class above and build it here, as you did for taolu.train(model=...)\n"
            "model = None  # <- paste: model = YourNet(...)\n"
            "if model is None:\n"
            '    raise SystemExit("paste your nn.Module where step 2 says so")\n'
        )
    elif kind == "torchvision":
        text = _torchvision(facts)
    elif kind == "timm":
        text = _timm(facts)
    elif kind == "factory":
        module, function = config.model.split(":")
        text = (
            f"# Your factory, imported from your own code (--model {config.model})\n"
            f"from {module} import {function}  # noqa: E402\n\n"
            f"model = {function}(channels={facts.channels}, image_size={facts.size[0]}, "
            f"classes={len(facts.classes)})\n"
        )
    else:
        written = write_network(facts.network)
        what = f"taolu's {config.model}" if kind == "builtin" else "your layer list"
        classes = "".join(f"\n\n{source}" for source in written.classes)
        if written.expression is None:
            missing = ", ".join(sorted(set(written.unwritten)))
            text = (
                f"# {what} uses taolu's own {missing}, which has no short plain-PyTorch form: "
                f"paste your nn.Module here (--model {config.model})\n"
                "model = None  # <- paste: model = YourNet(...)\n"
                "if model is None:\n"
                '    raise SystemExit("paste your nn.Module where step 2 says so")\n'
            )
        else:
            text = (f"{classes.strip()}\n\n\n" if classes else "") + (
                f"# {what}, layer by layer (--model {config.model})\n"
                f"model = {written.expression}.to(device)\n"
            )
    text = re.sub(r"^# ", "# 2. Build the network model: ", text, count=1, flags=re.M)
    text = text + _freeze(facts)
    return text if ".to(device)" in text else text + "model = model.to(device)\n"


def _torchvision(facts: RunFacts) -> str:
    config = facts.config
    network, name, head = facts.network, config.model, facts.head
    named = bool(config.weights) and not config.weights.endswith((".pt", ".pth", ".safetensors"))
    weights = f'"{config.weights}"' if named else "None"
    # what makes the net fit its weight files (googlenet's transform_input, a ViT's size)
    options = "".join(
        f", {key}={value!r}"
        for key, value in builder_options(name, config.weights if named else None).items()
    )
    arguments = f"weights={weights}{options}"
    if len(arguments) > 60:
        arguments = f"\n    {arguments}\n"
    text = (
        f"# torchvision's {name}, its head replaced for {len(facts.classes)} classes "
        f"(--model {name})\n"
        f"model = torchvision.models.{name}({arguments})"
        + ("  # from the torch hub cache (--weights)\n" if named else "\n")
        + f"model.{attribute_path(head)} = {layer_call(network.get_submodule(head))}\n"
    )
    if facts.channels == 1:
        conv = first_conv_path(network)
        text += (
            f"model.{attribute_path(conv)} = {layer_call(network.get_submodule(conv))}"
            "  # gray images: one input channel\n"
        )
    if config.weights and not named:
        text += _weights_file(facts, config.weights)
    return text


def _weights_file(facts: RunFacts, path: str) -> str:
    """Loading the --weights file at `path` into the model, all but the head."""
    head, network = facts.head, facts.network
    loader = (
        "load_file(WEIGHTS)"
        if path.endswith(".safetensors")
        else 'torch.load(WEIGHTS, map_location="cpu", weights_only=True)'
    )
    text = (
        "# Pretrained weights from a file, all but the head (--weights)\n"
        f'WEIGHTS = "{path}"\n'
        f"state = {loader}\n"
        'for wrapper in ("state_dict", "model"):  # files often wrap the weights\n'
        "    state = state.get(wrapper, state) if isinstance(state.get(wrapper), dict) "
        "else state\n"
        f'state = {{k: v for k, v in state.items() if not k.startswith("{head}.")}}\n'
    )
    if facts.channels == 1:  # the RGB kernels summed: a gray image answers as before
        conv = first_conv_path(network) + ".weight"
        text += f'state["{conv}"] = state["{conv}"].sum(dim=1, keepdim=True)\n'
    return text + "model.load_state_dict(state, strict=False)\n"


def _timm(facts: RunFacts) -> str:
    """timm's model, built as taolu builds it (timm_zoo.build_timm), and its weights file
    (DEFAULT: the file in the local Hugging Face cache)."""
    from taolu.models.timm_zoo import architecture, build_options, weights_file

    config = facts.config
    options = build_options(config.model, facts.channels, facts.size)
    arguments = "".join(f", {key}={value!r}" for key, value in options.items())
    text = (
        f"# timm's {architecture(config.model)}, untrained, its head reset by timm for "
        f"{len(facts.classes)} classes (--model {config.model})\n"
        f'model = timm.create_model("{architecture(config.model)}", pretrained=False'
        f"{arguments})\n"
        f"model.reset_classifier({len(facts.classes)})\n"
    )
    if config.weights:
        text += _weights_file(facts, str(weights_file(config.model, config.weights)))
    return text


def _freeze(facts: RunFacts) -> str:
    config = facts.config
    if config.freeze == "none":
        return ""
    if config.freeze == "backbone" and facts.head is None:
        return "# (--freeze backbone: freeze every parameter but your net's head's here)\n"
    if config.freeze == "backbone":
        head = facts.head
        return (
            f"# The backbone frozen: only the head, {head}, learns (--freeze backbone)\n"
            "for name, parameter in model.named_parameters():\n"
            f'    parameter.requires_grad_(name.startswith("{head}."))\n'
        )
    return (
        f"# The first {config.freeze} parameter tensors frozen (--freeze {config.freeze})\n"
        f"for parameter in list(model.parameters())[:{config.freeze}]:\n"
        "    parameter.requires_grad_(False)\n"
    )


FROZEN_BATCHNORM = '''
def frozen_batchnorm_eval(model):
    """BatchNorm layers whose weights are frozen keep their pretrained statistics."""
    for module in model.modules():
        frozen = not any(parameter.requires_grad for parameter in module.parameters())
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()
'''


def ema_block(facts: RunFacts) -> str:
    decay = facts.config.ema
    if not decay:
        return ""
    return (
        "\n# Tested and saved: a moving average of the weights, its decay warming up "
        f"(--ema {decay:g})\n"
        "def ema_average(averaged, current, updates):\n"
        f"    weight = 1.0 - min({decay:g}, (1 + int(updates)) / (10 + int(updates)))\n"
        "    for mean, value in zip(averaged, current, strict=True):  # counters are copied\n"
        "        mean.lerp_(value, weight) if mean.is_floating_point() else mean.copy_(value)\n"
        "\n\n"
        "ema = AveragedModel(model, multi_avg_fn=ema_average, use_buffers=True)\n"
    )


def loss_block(facts: RunFacts) -> str:
    """Step 3: cross-entropy, with label smoothing and class weights as the run had them."""
    config = facts.config
    smoothing = f"label_smoothing={config.label_smoothing:g}" if config.label_smoothing else ""
    text = "\n# 3. Make the loss function: cross-entropy"
    text += f" (--label-smoothing {config.label_smoothing:g})\n" if smoothing else "\n"
    if config.class_weights == "auto":
        classes = len(facts.classes)
        weights = ", ".join(filter(None, ["weight=class_weights", smoothing]))
        return text + (
            "# Each class weighted by the inverse of its share of the training images "
            "(--class-weights auto)\n"
            f"counts = torch.bincount(train_labels, minlength={classes}).float()\n"
            f"class_weights = len(train_labels) / ({classes} * counts.clamp(min=1))\n"
            f"loss_fn = nn.CrossEntropyLoss({weights}).to(device)\n"
            f"test_loss_fn = nn.CrossEntropyLoss({smoothing}).to(device)  # unweighted\n"
        )
    return text + f"loss_fn = nn.CrossEntropyLoss({smoothing}).to(device)\n"


def optimizer_block(facts: RunFacts) -> str:
    """Step 4: the optimizer (no weight decay on biases and norms) and the lr schedule."""
    config = facts.config
    name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
    optimizer_class = name.get(config.optimizer, _torch_name(config.optimizer))
    lr = _lr(facts)
    shown_lr = config.lr if isinstance(config.lr, str) else f"{lr:.4g}"
    note = ""
    if facts.lr_measured:
        note = "\n# (taolu measured this lr with a range test: --lr auto)"
        if isinstance(config.lr, str):
            note = (
                "\n# (--lr auto: taolu's range test picks the lr when it trains; 1e-3 is a start)"
            )
    extra = ""
    if config.optimizer in ("sgd", "rmsprop") and config.momentum:
        extra = f", momentum={config.momentum:g}"
        if config.optimizer == "sgd" and config.nesterov:
            extra += ", nesterov=True"
    decay = f"{config.weight_decay:g}"
    text = (
        f"\n# 4. Make the optimizer (--optimizer {config.optimizer} --lr {shown_lr} --weight-decay "
        f"{decay}; no decay on biases, norms){note}\n"
    )
    if config.fine_tune and facts.head is None:
        text += "# (--fine-tune: your net's head alone first, then all of it: not written out)\n"
    if config.fine_tune and config.fan_in_lr == "on" and _has_wide_dense_layer(facts):
        text += "# (--fan-in-lr on: wide Linear layers at a share of lr: not written out)\n"
    if config.fine_tune and facts.head is not None:
        head = facts.head
        text += (
            f"# The backbone learns at {config.backbone_lr_scale:g} x lr once it joins "
            "(--fine-tune, --backbone-lr-scale)\n"
            f'named = [(n.startswith("{head}."), p.ndim > 1, p) '
            "for n, p in model.named_parameters() if p.requires_grad]\n"
            "groups = [\n"
            "    {\n"
            '        "params": [p for h, d, p in named if (h, d) == (in_head, decays)],\n'
            f'        "lr": {lr:.4g} if in_head else {lr * config.backbone_lr_scale:.4g},\n'
            f'        "weight_decay": {decay} if decays else 0.0,\n'
            "    }\n"
            "    for in_head in (False, True)\n"
            "    for decays in (False, True)\n"
            "]\n"
        )
    elif _fan_in_rule_bites(facts):
        text += (
            f"# A Linear layer reading more than {DENSE_FAN_IN} inputs learns at lr x "
            f"{DENSE_FAN_IN} / inputs (--fan-in-lr on)\n"
            f"share = {{id(m.weight): {DENSE_FAN_IN} / m.in_features for m in model.modules()\n"
            f"         if isinstance(m, nn.Linear) and m.in_features > {DENSE_FAN_IN}}}\n"
            "trained = [p for p in model.parameters() if p.requires_grad]\n"
            "groups = [\n"
            f'    {{"params": [p], "lr": {lr:.4g} * share.get(id(p), 1.0),\n'
            f'     "weight_decay": {decay} if p.ndim > 1 else 0.0}}\n'
            "    for p in trained\n"
            "]\n"
        )
    else:
        text += (
            "decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]\n"
            "rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]\n"
            f'groups = [{{"params": decay, "weight_decay": {decay}}}, '
            '{"params": rest, "weight_decay": 0.0}]\n'
        )
    text += f"optimizer = torch.optim.{optimizer_class}(groups, lr={lr:.4g}{extra})\n"
    return text + _schedule(facts)


def _fan_in_rule_bites(facts: RunFacts) -> bool:
    """--fan-in-lr on where the script writes it out (not under --fine-tune) and it changes
    something."""
    config = facts.config
    return config.fan_in_lr == "on" and not config.fine_tune and _has_wide_dense_layer(facts)


def _has_wide_dense_layer(facts: RunFacts) -> bool:
    """A Linear layer past DENSE_FAN_IN inputs, or the caller's own module (the script does
    not see it)."""
    return facts.network is None or widest_dense_layer(facts.network) > DENSE_FAN_IN


def _lr(facts: RunFacts) -> float:
    """The run's lr; before training, where a range test would pick it, AdamW's usual 1e-3."""
    return facts.config.lr if not isinstance(facts.config.lr, str) else 1e-3


def _torch_name(name: str) -> str:
    import torch

    return next(key for key in vars(torch.optim) if key.lower() == name.lower())


def _schedule(facts: RunFacts) -> str:
    config = facts.config
    epochs = f"epochs = {config.epochs}  # --epochs\n"
    steps = "len(train_dataloader)"
    if config.accumulate > 1:
        steps = f"math.ceil(len(train_dataloader) / {config.accumulate})"
    batches = -(-facts.train_images // config.batch_size)
    total = config.epochs * -(-batches // config.accumulate)
    if config.scheduler == "onecycle" and total >= 2:
        epochs += f"total_steps = epochs * {steps}\n"
        max_lr = f"{_lr(facts):.4g}"
        if config.fine_tune or _fan_in_rule_bites(facts):  # each group's own peak lr
            epochs += 'max_lr = [group["lr"] for group in optimizer.param_groups]\n'
            max_lr = "max_lr"
        return epochs + (
            "# One-cycle lr: up from lr/5 for a quarter of the steps, then down (--scheduler "
            "onecycle)\n"
            "scheduler = torch.optim.lr_scheduler.OneCycleLR(\n"
            f"    optimizer, {max_lr}, total_steps, pct_start={max(0.25, 1.5 / total):.4g}, "
            "div_factor=5.0, cycle_momentum=False\n"
            ")\n"
        )
    if config.scheduler == "onecycle":  # a single step has no cycle to follow
        return epochs + (
            "# The lr stays as it is: one step is too few for --scheduler onecycle\n"
            "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)\n"
        )
    epochs += f"steps_per_epoch = {steps}\ntotal_steps = epochs * steps_per_epoch\n"
    if config.scheduler == "plateau":
        mode = "min" if config.monitor.endswith("loss") else "max"
        note = ""
        if config.warmup_epochs:
            note = f"# (taolu warms up for {config.warmup_epochs:g} epochs first: not written)\n"
        return (
            epochs
            + note
            + (
                f"# The lr x {config.lr_gamma:g} when the monitored value stalls for "
                f"{config.plateau_patience} epochs (--scheduler plateau)\n"
                "scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(\n"
                f'    optimizer, mode="{mode}", factor={config.lr_gamma:g}, '
                f"patience={config.plateau_patience}\n)\n"
            )
        )
    return epochs + _lambda_schedule(facts)


def _lambda_schedule(facts: RunFacts) -> str:
    """A linear warm-up, then cosine, step or constant, as one LambdaLR factor per step."""
    config = facts.config
    text = f"warmup_steps = round({config.warmup_epochs:g} * steps_per_epoch)\n"
    if config.scheduler == "step":
        every = config.step_epochs or "max(1, math.ceil(epochs / 3))"
        text += f"step_every = {every} * steps_per_epoch\n"
    rule = {
        "cosine": "progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)\n"
        "    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))\n",
        "step": f"return {config.lr_gamma:g} ** ((step - warmup_steps) // step_every)\n",
        "constant": "return 1.0\n",
    }[config.scheduler]
    return text + (
        f"\n\n# The lr per step: a linear warm-up from lr/100 (--warmup-epochs), then "
        f"{config.scheduler} (--scheduler {config.scheduler})\n"
        "def lr_factor(step):\n"
        "    if step < warmup_steps:\n"
        "        return 0.01 + 0.99 * step / warmup_steps\n"
        f"    {rule}\n\n"
        "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)\n"
    )


def mix_block(facts: RunFacts) -> str:
    config = facts.config
    classes = len(facts.classes)
    chosen = []
    if config.mixup:
        chosen.append(f"v2.MixUp(alpha={config.mixup:g}, num_classes={classes})")
    if config.cutmix:
        chosen.append(f"v2.CutMix(alpha={config.cutmix:g}, num_classes={classes})")
    if not chosen:
        return ""
    mix = chosen[0] if len(chosen) == 1 else f"v2.RandomChoice([{', '.join(chosen)}])"
    return (
        "# Batches mixed: images and their labels blended in pairs (--mixup, --cutmix)\n"
        f"mix = {mix}\n"
    )
