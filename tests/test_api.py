"""The Python API with the user's own pieces: a tutorial-style Dataset, an nn.Sequential,
val_data and classes; evaluate and predict; user files left untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import taolu


def small_net() -> nn.Sequential:
    """A tutorial-style network for 3x16x16 images and two classes."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 2),
    )


@pytest.fixture
def ant_bee(array_dataset, easy_images):
    """make(kind, **kwargs) -> (train Dataset, val Dataset): 'ant' dark, 'bee' bright."""
    train_images, train_labels = easy_images(64, seed=0)
    val_images, val_labels = easy_images(32, seed=1)

    def make(kind="numpy", **kwargs):
        return (
            array_dataset(train_images, train_labels, kind=kind, **kwargs),
            array_dataset(val_images, val_labels, kind=kind),
        )

    return make


def train_on_ant_bee(train_data, val_data, out, quiet) -> taolu.TrainResult:
    """A small nn.Sequential on the user's two-class Datasets, 3 epochs, seeded."""
    torch.manual_seed(0)
    return taolu.train(
        model=small_net(),
        data=train_data,
        val_data=val_data,
        classes=["ant", "bee"],
        epochs=3,
        batch_size=16,
        workers=0,
        out=str(out),
        **quiet,
    )


@pytest.mark.parametrize("kind", ["numpy", "pil", "tensor"])
def test_users_dataset_and_sequential_learn_an_easy_task(tmp_path, ant_bee, kind, quiet):
    result = train_on_ant_bee(*ant_bee(kind), tmp_path, quiet)
    assert result.run_dir.is_dir() and result.run_dir.parent == tmp_path
    assert len(result.history) == 3
    assert result.best_val_acc > 0.9
    assert result.summary["classes"] == ["ant", "bee"]
    assert (result.summary["train_samples"], result.summary["val_samples"]) == (64, 32)
    # the returned model is the user's architecture with the best (EMA) weights, in eval mode
    assert isinstance(result.model, nn.Sequential) and not result.model.training
    best = torch.load(result.best_checkpoint, weights_only=True)
    for key, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), best["ema_model"][key])


def test_users_dataset_without_val_data_is_split(tmp_path, array_dataset, easy_images, quiet):
    images, labels = easy_images(50, seed=2)
    result = taolu.train(
        model=small_net(),
        data=array_dataset(images, labels),
        classes=["ant", "bee"],
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(tmp_path),
        **quiet,
    )
    assert result.summary["train_samples"] + result.summary["val_samples"] == 50
    assert result.summary["val_samples"] == 10


def test_class_names_default_to_label_numbers(tmp_path, ant_bee, quiet):
    train_data, val_data = ant_bee()
    result = taolu.train(
        model=small_net(),
        data=train_data,
        val_data=val_data,
        epochs=1,
        workers=0,
        out=str(tmp_path),
        **quiet,
    )
    assert result.summary["classes"] == ["0", "1"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_sample_is_named(tmp_path, ant_bee, workers, quiet):
    """The validation Dataset's sample 13 cannot be read: the DataError names it (it is first
    read in the validation pass, so with workers=2 it fails inside a worker process)."""
    train_data, _ = ant_bee()
    _, val_data = ant_bee()
    val_data.fail_index = 13
    with pytest.raises(taolu.DataError) as caught:
        taolu.train(
            model=small_net(),
            data=train_data,
            val_data=val_data,
            classes=["ant", "bee"],
            epochs=1,
            batch_size=8,
            workers=workers,
            out=str(tmp_path),
            **quiet,
        )
    message = str(caught.value)
    assert "ArrayDataset[13]" in message
    assert "cannot read sample file number 13" in message


def test_a_failing_first_sample_is_named(tmp_path, ant_bee, quiet):
    train_data, val_data = ant_bee()
    train_data.fail_index = 0
    with pytest.raises(taolu.DataError, match=r"ArrayDataset\[0\]"):
        taolu.train(
            model=small_net(),
            data=train_data,
            val_data=val_data,
            epochs=1,
            workers=0,
            out=str(tmp_path),
            **quiet,
        )


def test_a_failing_sample_is_named_when_the_dataset_is_split(
    tmp_path, array_dataset, easy_images, quiet
):
    images, labels = easy_images(50, seed=2)
    dataset = array_dataset(images, labels, fail_index=7)
    with pytest.raises(taolu.DataError) as caught:
        taolu.train(
            model=small_net(),
            data=dataset,
            classes=["ant", "bee"],
            epochs=1,
            workers=0,
            out=str(tmp_path),
            **quiet,
        )
    assert "ArrayDataset[7]" in str(caught.value)


def test_val_data_needs_a_training_dataset(tmp_path, ant_bee, quiet):
    _, val_data = ant_bee()
    with pytest.raises(taolu.ConfigError, match="val_data"):
        taolu.train(data="digits", val_data=val_data, out=str(tmp_path), **quiet)


# --------------------------------------------------------------------------- evaluate/predict


@pytest.fixture
def users_run(tmp_path, ant_bee, quiet):
    return train_on_ant_bee(*ant_bee(), tmp_path, quiet)


def test_predict_in_memory_images_with_the_users_model(users_run, easy_images):
    images, labels = easy_images(4, seed=7)
    inputs = [Image.fromarray(images[0]), images[1], images[2], Image.fromarray(images[3])]
    results = taolu.predict(users_run.run_dir, inputs, model=small_net(), topk=2)
    assert len(results) == 4
    for result, label in zip(results, labels, strict=True):
        predictions = result["predictions"]
        assert [p["class"] for p in predictions][0] == ["ant", "bee"][label]
        assert sorted(p["class"] for p in predictions) == ["ant", "bee"]
        assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_predict_without_the_users_model_says_to_pass_it(users_run, easy_images):
    images, _ = easy_images(1, seed=7)
    with pytest.raises(taolu.CheckpointError, match="model="):
        taolu.predict(users_run.run_dir, [images[0]])


def test_evaluate_users_run_with_model_and_dataset(users_run, ant_bee):
    _, val_data = ant_bee()
    result = taolu.evaluate(users_run.run_dir, data=val_data, model=small_net())
    assert result["samples"] == 32
    assert result["acc"] == pytest.approx(users_run.best_val_acc, abs=1 / 32)
    with pytest.raises(taolu.TaoluError, match="Dataset"):
        taolu.evaluate(users_run.run_dir, model=small_net())  # the data is not a name


def test_evaluate_names_every_part_of_the_users_run_that_is_missing(users_run, ant_bee):
    """One message, not a round trip per keyword: each call names what is still missing."""
    _, val_data = ant_bee()
    for given, missing in [
        ({}, ["data=", "model="]),
        ({"data": val_data}, ["model="]),
        ({"model": small_net()}, ["data="]),
    ]:
        with pytest.raises(taolu.TaoluError) as raised:
            taolu.evaluate(users_run.run_dir, **given)
        message = str(raised.value)
        assert [keyword for keyword in ("data=", "model=") if keyword + "..." in message] == (
            missing
        ), message


def test_evaluate_builtin_run_matches_training(digits_run):
    result = taolu.evaluate(digits_run.run_dir)
    assert result["samples"] == digits_run.summary["val_samples"]
    assert result["epoch"] == digits_run.summary["best_epoch"]
    assert result["acc"] == pytest.approx(digits_run.best_val_acc, abs=0.01)
    json.dumps(result)  # plain values only
    last = taolu.evaluate(digits_run.run_dir, checkpoint="last")
    assert last["epoch"] == 2


def test_predict_builtin_run_in_memory_and_topk(digits_run, digits_arrays):
    images, _ = digits_arrays
    results = taolu.predict(
        digits_run.run_dir,
        [images[0], torch.from_numpy(images[1]), Image.fromarray(images[2]).convert("RGB")],
        topk=3,
    )
    assert len(results) == 3
    for result in results:
        probabilities = [p["probability"] for p in result["predictions"]]
        assert len(probabilities) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-5
        assert all(p["class"] in [str(d) for d in range(10)] for p in result["predictions"])
    # topk larger than the classes gives every class once
    everything = taolu.predict(digits_run.run_dir, [images[0]], topk=50)[0]["predictions"]
    assert sorted(p["class"] for p in everything) == [str(d) for d in range(10)]


# --------------------------------------------------------------------------- user files


def test_user_files_stay_byte_identical(image_folder, tmp_path, tree_snapshot, quiet):
    before = tree_snapshot(image_folder)
    assert len(before) == 20
    result = taolu.train(
        data=str(image_folder),
        epochs=2,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "runs"),
        **quiet,
    )
    taolu.evaluate(result.run_dir)
    predictions = taolu.predict(result.run_dir, [str(image_folder)], topk=1)
    assert len(predictions) == 20 and all("predictions" in p for p in predictions)
    assert tree_snapshot(image_folder) == before


def test_evaluate_and_predict_write_nothing(digits_run, tmp_path, tree_snapshot, digits_arrays):
    before = tree_snapshot(digits_run.run_dir)
    taolu.evaluate(digits_run.run_dir)
    taolu.predict(digits_run.run_dir, [digits_arrays[0][5]])
    assert tree_snapshot(digits_run.run_dir) == before


def test_predict_reports_unreadable_files_and_classifies_the_rest(digits_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    missing = tmp_path / "missing.png"
    results = taolu.predict(digits_run.run_dir, [good, bad, missing], topk=1)
    assert [r["path"] for r in results] == [str(good), str(bad), str(missing)]
    assert "predictions" in results[0] and "error" not in results[0]
    assert "bad.png" in results[1]["error"] and "predictions" not in results[1]
    assert "missing.png" in results[2]["error"]


# --------------------------------------------------------------------------- tiny runs


@pytest.mark.parametrize("epochs", [1, 2, 3, 5])
def test_runs_of_a_few_steps_train(tmp_path, epochs, quiet):
    # batch_size above the 1,438 training digits: one optimizer step per epoch
    result = taolu.train(data="digits", epochs=epochs, batch_size=2000, out=str(tmp_path), **quiet)
    assert len(result.history) == epochs


def test_run_of_four_steps_trains(tmp_path, quiet):
    result = taolu.train(data="digits", epochs=4, batch_size=2000, out=str(tmp_path), **quiet)
    assert len(result.history) == 4


def test_evaluate_from_another_directory_finds_a_relative_folder(
    tmp_path, image_folder, monkeypatch, quiet
):
    monkeypatch.chdir(image_folder.parent)
    result = taolu.train(
        data=image_folder.name,
        epochs=2,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "runs"),
        **quiet,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert taolu.evaluate(result.run_dir.resolve())["samples"] == 4


def test_api_names_stay_functions_after_submodules_are_imported():
    import taolu.inference  # noqa: F401  (a submodule must not shadow taolu.predict)

    assert taolu.predict.__module__ == "taolu.api" and callable(taolu.predict)
    assert taolu.train.__module__ == "taolu.api"


def test_import_taolu_leaves_torch_for_later():
    """`taolu --help` answers at once because importing taolu does not import torch."""
    import subprocess
    import sys

    check = "import sys, taolu, taolu.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_heavy_libraries_wait_until_a_run_needs_them(tmp_path):
    """A run of taolu's own net on in-memory digits needs neither torchvision (its import
    pulls in torch._dynamo), nor torchmetrics, nor matplotlib without a report, nor mlflow
    without --track mlflow, nor timm; evaluating it needs no TensorBoard either. Each is
    imported where it is used, so a command starts fast."""
    import subprocess
    import sys

    def run_checked(code: str, heavy: set[str]) -> None:
        check = (
            f"import sys, taolu\n{code}\n"
            f"loaded = {sorted(heavy)!r} and set({sorted(heavy)!r}) & set(sys.modules)\n"
            "assert not loaded, f'imported: {loaded}'\n"
        )
        result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]

    run_checked(
        f"taolu.train(data='digits', epochs=1, out={str(tmp_path)!r}, name='run', "
        "verbose=False, progress=False, report=False)",
        {"torchvision", "torchmetrics", "matplotlib", "mlflow", "timm"},
    )
    run_checked(
        f"taolu.evaluate({str(tmp_path / 'run')!r})",
        {"torchvision", "torchmetrics", "matplotlib", "tensorboard", "mlflow", "timm"},
    )
