"""`taolu eject` and `taolu train --eject`: the run written out as one plain PyTorch script.
The scripts are rendered for every kind of model and data and the main options, compiled and
linted; short ones run, where `import taolu` fails, and reach the run's accuracy."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from test_disk_sets import write_cifar10_root, write_mnist_root

import taolu
from taolu.api import eject_from_options
from taolu.models.nets import BUILTIN_MODELS
from taolu.models.spec import build_from_spec
from taolu.option_values import resolve_config
from taolu.standalone.facts import facts_of_config
from taolu.standalone.layers import write_network
from taolu.standalone.script import render_script

# The names the tutorial uses, which the script keeps.
TUTORIAL_NAMES = (
    "train_data",
    "test_dataloader",
    "loss_fn",
    "optimizer",
    "total_train_step",
    "writer",
)
QUICK = {"verbose": False, "progress": False, "report": False}
RUFF = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))


def without_taolu(tmp_path: Path) -> dict[str, str]:
    """An environment where `import taolu` fails: a `taolu` package that raises ImportError
    comes first on PYTHONPATH, ahead of the editable install's path entry (a .pth line)."""
    blocker = tmp_path / "blocked" / "taolu"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("taolu is hidden from this script")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = str(blocker.parent)
    return env


def run_script(
    script: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def best_of(output: str) -> float:
    last = output.strip().splitlines()[-1]
    match = re.fullmatch(r"best_val_acc=(\d\.\d{4})", last)
    assert match, f"the script's last line is {last!r}"
    return float(match.group(1))


def lint(*scripts: Path) -> None:
    """`ruff check` with the project's rules, when ruff is installed."""
    if not Path(RUFF).is_file():
        pytest.skip("ruff is not installed")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    done = subprocess.run(
        [RUFF, "check", "--no-cache", "--config", str(pyproject), *map(str, scripts)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ejected_run_reaches_its_accuracy_without_taolu(tmp_path):
    result = taolu.train(data="digits", epochs=4, out=str(tmp_path / "runs"), **QUICK)
    (tmp_path / "work").mkdir()
    script = taolu.eject(result.run_dir, tmp_path / "work" / "routine.py")
    text = script.read_text()
    assert "taolu" not in "".join(line for line in text.splitlines() if "import" in line)
    assert str(result.run_dir) in text  # the header names the run
    env = without_taolu(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", "import taolu"], env=env, capture_output=True)
    assert hidden.returncode != 0
    done = run_script(script, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert abs(best_of(done.stdout) - result.best_val_acc) <= 0.01, done.stdout
    assert (script.parent / "best.pt").is_file()
    assert any((script.parent / "logs").iterdir())  # TensorBoard's event file


def test_default_run_script_is_short_and_reads_like_the_tutorial(tmp_path):
    script = eject_from_options(None, {}, {}, tmp_path / "default.py")
    text = script.read_text()
    assert len(text.splitlines()) <= 150
    compile(text, str(script), "exec")
    lint(script)
    for name in TUTORIAL_NAMES:
        assert re.search(rf"\b{name}\b", text), name
    for step in (
        "# 1. Prepare the data set",
        "# 2. Build the network model",
        "# 3. Make the loss",
        "# 4. Make the optimizer",
        "# 5. Train",
        "# 6. Test",
        "# 7. Save",
    ):
        assert step in text
    assert "nn.Sequential(" in text and ".to(device)" in text and "torch.save(" in text
    assert text.rstrip().endswith('print(f"best_val_acc={best_val_acc:.4f}")')
    assert f"taolu {taolu.__version__}" in text
    # the recipe's resolved values, each with the option it came from
    assert "torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)" in text
    assert "OneCycleLR" in text and "--scheduler onecycle" in text
    assert "AveragedModel" in text and "--ema 0.99" in text


def test_only_the_options_used_appear(tmp_path):
    text = eject_from_options(
        None,
        {"data": "digits", "ema": 0.0, "label_smoothing": 0.0, "scheduler": "constant"},
        {},
        tmp_path / "plain.py",
    ).read_text()
    for absent in (
        "AveragedModel",
        "label_smoothing",
        "MixUp",
        "class_weights",
        "OneCycleLR",
        "WeightedRandomSampler",
        "clip_grad",
        "Residual",
    ):
        assert absent not in text, absent


def write_layer_list(path: Path) -> Path:
    layers = [
        {"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}},
        "ReLU",
        {"MaxPool2d": 2},
        "Flatten",
        {"Linear": {"out_features": "classes"}},
    ]
    path.write_text(yaml.safe_dump(layers))
    return path


def write_csv_list(folder: Path, make_class_folder) -> Path:
    for label, name in enumerate(("ant", "bee")):
        make_class_folder(folder / name, label, 6, seed=label)
    rows = ["path,label"] + [
        f"{p.relative_to(folder)},{p.parent.name}" for p in sorted(folder.rglob("*.png"))
    ]
    (folder / "list.csv").write_text("\n".join(rows) + "\n")
    return folder / "list.csv"


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A plain state dict file for --weights, as torch.save writes one."""
    weights = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    return weights


def variants(
    tmp_path: Path, image_folder: Path, make_class_folder, weights: Path
) -> dict[str, dict]:
    """Options for each kind of model and data and the main options, on tiny data."""
    write_mnist_root(tmp_path / "sets", "MNIST")
    write_cifar10_root(tmp_path / "sets")
    return {
        **{name: {"model": name} for name in ("fastcnn", "tudui", "lenet5", "resnet9")},
        "layer-list": {"model": str(write_layer_list(tmp_path / "net.yaml"))},
        "folder": {"data": str(image_folder), "image_size": 16},
        "csv": {"data": str(write_csv_list(tmp_path / "csvdata", make_class_folder))},
        "mnist-on-disk": {"data": "mnist", "data_root": str(tmp_path / "sets")},
        "pad-histograms": {
            "data": str(image_folder),
            "resize_mode": "pad",
            "image_size": 16,
            "histograms": 1,
            "deterministic": True,
            "monitor": "val/macro_f1",
        },
        "cifar10-on-disk": {"data": "cifar10", "data_root": str(tmp_path / "sets")},
        "mixup-cutmix": {"mixup": 0.2, "cutmix": 1.0},
        "no-ema": {"ema": 0.0},
        "cosine": {"scheduler": "cosine", "warmup_epochs": 1},
        "step": {"scheduler": "step", "step_epochs": 1},
        "plateau": {"scheduler": "plateau", "monitor": "val/loss", "patience": 2},
        "constant": {"scheduler": "constant", "optimizer": "adamw", "lr": 0.001},
        "class-weights": {"class_weights": "auto", "sampler": "balanced"},
        "accumulate-clip": {"accumulate": 2, "clip_grad": 1.0, "precision": "fp32"},
        "transforms": {"transforms": "digits"},
        "frozen-weights": {
            "model": "resnet18",
            "weights": str(weights),
            "freeze": "backbone",
            "image_size": 32,
            "channels": 3,
        },
        "fine-tune": {
            "model": "resnet18",
            "weights": str(weights),
            "fine_tune": 1,
            "image_size": 32,
        },
    }


def test_every_model_source_and_option_renders_compiles_and_lints(
    tmp_path, image_folder, make_class_folder, resnet18_weights
):
    scripts = {}
    for name, options in variants(
        tmp_path, image_folder, make_class_folder, resnet18_weights
    ).items():
        chosen = {"data": "digits", "epochs": 1, **options}
        script = eject_from_options(None, chosen, {}, tmp_path / f"{name.replace('-', '_')}.py")
        text = script.read_text()
        compile(text, str(script), "exec")
        assert "import taolu" not in text and "from taolu" not in text, name
        scripts[name] = text
    lint(*tmp_path.glob("*.py"))
    assert "class Residual(nn.Module)" in scripts["resnet9"]
    assert "nn.Conv2d(1, 8, 3, padding=1)" in scripts["layer-list"]
    assert "ImageFiles(" in scripts["folder"] and "csv.DictReader" in scripts["csv"]
    assert "torchvision.datasets.MNIST(DATA_ROOT, train=True" in scripts["mnist-on-disk"]
    assert "v2.RandomHorizontalFlip()" in scripts["cifar10-on-disk"]
    pad = scripts["pad-histograms"]  # options without a short plain form are named
    assert "--resize-mode pad" in pad and "writer.add_histogram(" in pad
    assert "torch.use_deterministic_algorithms(True)" in pad and "--monitor val/macro_f1:" in pad
    assert "v2.RandomChoice([v2.MixUp(alpha=0.2" in scripts["mixup-cutmix"]
    assert "AveragedModel" not in scripts["no-ema"]
    assert "math.cos" in scripts["cosine"] and "step_every = 1 *" in scripts["step"]
    assert (
        "ReduceLROnPlateau" in scripts["plateau"]
        and "scheduler.step(test_loss)" in (scripts["plateau"])
    )
    assert "torch.optim.AdamW(groups, lr=0.001)" in scripts["constant"]
    assert "weight=class_weights" in scripts["class-weights"]
    assert "WeightedRandomSampler(" in scripts["class-weights"]
    assert "(loss / 2).backward()" in scripts["accumulate-clip"]
    assert "autocast" not in scripts["accumulate-clip"]
    assert "v2.RandomAffine(" in scripts["transforms"]
    frozen = scripts["frozen-weights"]
    assert "torchvision.models.resnet18(weights=None)" in frozen
    assert "model.fc = nn.Linear(512, 10)" in frozen
    assert "weights_only=True" in frozen and 'parameter.requires_grad_(name.startswith("fc."))' in (
        frozen
    )
    assert "frozen_batchnorm_eval(model)" in scripts["fine-tune"]


@pytest.mark.parametrize("name", ["folder", "csv", "mnist-on-disk", "layer-list", "frozen-weights"])
def test_ejected_scripts_of_other_sources_run(
    tmp_path, image_folder, make_class_folder, resnet18_weights, name
):
    chosen = variants(tmp_path, image_folder, make_class_folder, resnet18_weights)[name]
    options = {"data": "digits", "epochs": 1, **chosen}
    (tmp_path / "work").mkdir()
    script = eject_from_options(None, options, {}, tmp_path / "work" / "run.py")
    done = run_script(script, without_taolu(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert 0.0 <= best_of(done.stdout) <= 1.0


def test_a_wide_linear_layer_keeps_its_fan_in_share_in_the_script(tmp_path):
    layers = [
        {"Conv2d": {"out_channels": 32, "kernel_size": 3, "padding": 1}},
        "ReLU",
        "Flatten",  # 32 x 8 x 8 = 2,048 inputs
        {"Linear": {"out_features": "classes"}},
    ]
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(layers))
    (tmp_path / "work").mkdir()
    options = {"data": "digits", "epochs": 1, "model": str(tmp_path / "wide.yaml")}
    script = eject_from_options(None, options, {}, tmp_path / "work" / "run.py")
    text = script.read_text()
    assert "--fan-in-lr on" in text and "1024 / m.in_features" in text
    assert 'max_lr = [group["lr"] for group in optimizer.param_groups]' in text
    lint(script)
    done = run_script(script, without_taolu(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert 0.0 <= best_of(done.stdout) <= 1.0


def test_cli_eject_writes_the_run_script_and_refuses_to_overwrite(digits_run, cli_main, tmp_path):
    out = tmp_path / "mine.py"
    code, stdout, _ = cli_main("eject", str(digits_run.run_dir), "--out", str(out))
    assert code == 0 and str(out) in stdout and out.is_file()
    code, _, stderr = cli_main("eject", str(digits_run.run_dir), "--out", str(out))
    assert code == 2 and "already exists" in stderr
    code, stdout, _ = cli_main("eject", str(digits_run.run_dir))
    assert code == 0 and (Path(digits_run.run_dir) / "eject.py").is_file()


def test_train_eject_writes_without_training(cli_main, tmp_path):
    out = tmp_path / "start.py"
    code, stdout, _ = cli_main(
        "train",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--eject",
        str(out),
    )
    assert code == 0 and out.is_file()
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory
    assert "epochs = 2  # --epochs" in out.read_text()


def test_own_module_and_dataset_get_marked_places_to_paste(tmp_path, array_dataset, easy_images):
    images, labels = easy_images(32, seed=0, size=8)
    own_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    result = taolu.train(
        model=own_net,
        data=array_dataset(images[:24], labels[:24]),
        val_data=array_dataset(images[24:], labels[24:]),
        classes=["ant", "bee"],
        epochs=1,
        freeze="backbone",
        out=str(tmp_path / "runs"),
        **QUICK,
    )
    text = taolu.eject(result.run_dir).read_text()
    compile(text, "eject.py", "exec")
    lint(Path(result.run_dir) / "eject.py")
    assert "your own nn.Module, Sequential" in text and "model = None  # <- paste" in text
    assert "your own Dataset, ArrayDataset" in text and "train_data = None  # <- paste" in text
    assert "--freeze backbone" in text  # said, though not written for a net taolu cannot see


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_written_networks_rebuild_layer_for_layer(name, tmp_path):
    """The written expression builds the same layers, with the same shapes, as taolu built."""
    nets = [BUILTIN_MODELS[name](3, (32, 32), 10)]
    if name == "fastcnn":  # and a layer list of other torch.nn layers
        layers = [
            {"Conv2d": {"out_channels": 8, "kernel_size": 5, "stride": 2}},
            {"BatchNorm2d": {"momentum": 0.01}},
            {"LeakyReLU": 0.2},
            {"AvgPool2d": 2},
            {"Dropout": 0.3},
            "Flatten",
            {"Linear": {"out_features": 32, "bias": False}},
            "GELU",
            {"Linear": {"out_features": "classes"}},
        ]
        nets.append(build_from_spec(layers, 3, (32, 32), 10))
    for net in nets:
        written = write_network(net)
        scope = {"nn": torch.nn, "torch": torch}
        for source in written.classes:
            exec(source, scope)
        rebuilt = eval(written.expression, scope)
        assert str(rebuilt) == str(torch.nn.Sequential(*net))
        shapes = [tuple(t.shape) for t in net.state_dict().values()]
        assert [tuple(t.shape) for t in rebuilt.state_dict().values()] == shapes


def test_fp16_runs_get_a_grad_scaler(tmp_path):
    """A run that computed in fp16 (on a GPU) is written with a GradScaler around backward()."""
    config = resolve_config({"data": "digits", "accumulate": 2, "clip_grad": 1.0})
    facts = dataclasses.replace(facts_of_config(config, set()), precision="fp16")
    script = tmp_path / "fp16.py"
    script.write_text(render_script(facts))
    lint(script)
    text = script.read_text()
    assert "scaler = torch.amp.GradScaler()" in text
    assert "scaler.scale(loss / 2).backward()" in text and "scaler.unscale_(optimizer)" in text
    assert "dtype=torch.float16" in text
