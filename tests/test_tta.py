"""Test-time augmentation: the views are the run's own augmentation, and predict and
evaluate average over them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taolu
from taolu.checkpoint import read_state
from taolu.engine.tta import ViewAveraged, translated, views


def test_translated_moves_the_image_and_fills_the_edge():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    down = translated(image, 1, 0, fill=-1.0)
    assert torch.equal(down[0, 0, 0], torch.full((4,), -1.0))
    assert torch.equal(down[0, 0, 1:], image[0, 0, :3])
    left = translated(image, 0, -2, fill=torch.tensor([7.0]).view(1, 1, 1, 1))
    assert torch.equal(left[0, 0, :, :2], image[0, 0, :, 2:])
    assert torch.equal(left[0, 0, :, 2:], torch.full((4, 2), 7.0))


def test_views_follow_the_runs_augmentation():
    images = torch.rand(2, 3, 8, 8)
    assert len(views(images, flip=False, shift=0)) == 1
    assert len(views(images, flip=True, shift=0)) == 2
    assert torch.equal(views(images, flip=True, shift=0)[1], images.flip(-1))
    assert len(views(images, flip=True, shift=2)) == 6
    assert len(views(images, flip=False, shift=2)) == 5


def test_the_wrapped_model_gives_log_mean_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.rand(4, 1, 4, 4)
    wrapped = ViewAveraged(model, flip=True, shift=1)
    expected = torch.stack([model(v).softmax(1) for v in views(images, True, 1)]).mean(0)
    assert torch.allclose(wrapped(images).exp(), expected, atol=1e-6)
    assert torch.allclose(
        ViewAveraged(model, False, 0)(images).softmax(1), model(images).softmax(1), atol=1e-6
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    return taolu.train(
        data="digits", epochs=2, out=str(out), progress=False, report=False, verbose=False
    )


def test_a_run_stores_the_augmentation_it_trained_with(digits_run):
    state = read_state(digits_run.best_checkpoint)
    # 8x8 digits: too small to shift, never flipped (a mirrored digit changes class).
    assert state.augmentation == {"flip": False, "shift": 0}


def test_evaluate_and_predict_with_tta(digits_run, tmp_path):
    from PIL import Image

    from taolu.data.embedded import load_digits

    plain = taolu.evaluate(digits_run.run_dir)
    averaged = taolu.evaluate(digits_run.run_dir, tta=True)
    assert averaged["tta"] is True and plain["tta"] is False
    assert averaged["samples"] == plain["samples"]
    # No flip and no shift for 8x8 digits: the one view is the image itself.
    assert averaged["acc"] == pytest.approx(plain["acc"])
    images, _ = load_digits()
    path = tmp_path / "d.png"
    Image.fromarray(images[3]).save(path)
    once = taolu.predict(digits_run.run_dir, [path])[0]["predictions"]
    again = taolu.predict(digits_run.run_dir, [path], tta=True)[0]["predictions"]
    assert [p["class"] for p in once] == [p["class"] for p in again]
    for a, b in zip(once, again, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_tta_averages_over_flips_and_shifts_where_the_run_trained_with_them(tmp_path, image_folder):
    run = taolu.train(
        data=str(image_folder),
        epochs=1,
        image_size=28,
        out=str(tmp_path / "runs"),
        progress=False,
        report=False,
        verbose=False,
    )
    state = read_state(run.best_checkpoint)
    assert state.augmentation == {"flip": True, "shift": 2}
    files = sorted(image_folder.rglob("*.png"))[:3]
    plain = taolu.predict(run.run_dir, files, topk=2)
    averaged = taolu.predict(run.run_dir, files, topk=2, tta=True)
    for other in averaged:
        assert sum(p["probability"] for p in other["predictions"]) == pytest.approx(1.0, abs=1e-4)
    from taolu.classifier import load_classifier
    from taolu.inference import input_reader, probabilities_of

    classifier = load_classifier(run.run_dir, device=torch.device("cpu"))
    images = [input_reader(classifier)(path)[0] for path in files]
    batch = torch.stack([image.float() / 255 for image in images])
    mean = torch.tensor(classifier.preprocessing.mean).view(1, -1, 1, 1)
    seen = views(batch, True, 2, fill=mean)
    assert len(seen) == 6
    expected = torch.stack(
        [(classifier.forward(v) / classifier.temperature).softmax(1) for v in seen]
    ).mean(0)
    assert torch.allclose(probabilities_of(classifier, images, tta=True), expected, atol=1e-6)
    assert plain[0]["path"] == averaged[0]["path"]
    exported = taolu.export(run.run_dir, format="onnx", out=tmp_path / "m.onnx")
    from_export = taolu.predict(exported.path, files, topk=2, tta=True)
    for mine, theirs in zip(from_export, averaged, strict=True):
        for a, b in zip(mine["predictions"], theirs["predictions"], strict=True):
            assert a["class"] == b["class"]
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
