"""Where it looks: LayerCAM maps follow the object that decides the class, the target layer is
found in taolu's, torchvision's and a user's CNNs, and predict --explain writes overlays
without touching its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import taolu
from taolu.errors import ConfigError
from taolu.explain import activation_maps, choose_layer, feature_maps, find_layer, overlays_for

SIDE = 24


def bars(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Noise with one bright bar at a random place, inside an 8x8 box: horizontal for class 0,
    vertical for class 1. Only the bar decides the class, wherever it is. Returns images
    (N, 1, SIDE, SIDE) in 0..1, labels, and each bar's box (top, left)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, SIDE, SIDE, generator=generator) * 0.4
    labels = torch.randint(0, 2, (count,), generator=generator)
    boxes = []
    for index in range(count):
        top, left = torch.randint(0, SIDE - 8, (2,), generator=generator).tolist()
        if labels[index] == 0:
            images[index, 0, top + 3 : top + 5, left : left + 8] = 1.0
        else:
            images[index, 0, top : top + 8, left + 3 : left + 5] = 1.0
        boxes.append((top, left))
    return images, labels, boxes


def small_cnn() -> nn.Sequential:
    """A user's CNN: two convolutions, a global max pool and a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


@pytest.fixture(scope="module")
def bar_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = small_cnn()
    images, labels, _ = bars(256, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        batch = torch.randint(0, len(images), (32,), generator=generator)
        loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return net.eval()


def test_the_map_highlights_the_bar_that_decides_the_class(bar_net):
    images, labels, boxes = bars(64, seed=7)
    assert (bar_net(images).argmax(1) == labels).float().mean() > 0.9  # it learnt the task
    layer = find_layer(bar_net, images[:1], None)
    maps, explained = activation_maps(bar_net, images, layer)
    assert maps.shape == (64, SIDE, SIDE) and 0 <= maps.min() and maps.max() <= 1
    peaks_inside, mass_inside = 0, []
    for heat, (top, left) in zip(maps, boxes, strict=True):
        row, column = divmod(int(heat.argmax()), SIDE)
        peaks_inside += top - 1 <= row <= top + 8 and left - 1 <= column <= left + 8
        mass_inside.append(float(heat[top : top + 8, left : left + 8].sum() / heat.sum()))
    # The box is 1/9 of the image: a map that ignored the bar would put ~11% of its mass there.
    assert peaks_inside >= 0.85 * len(boxes)
    assert np.mean(mass_inside) > 0.5


def test_the_map_is_for_the_class_asked(bar_net):
    images, labels, _ = bars(8, seed=3)
    layer = find_layer(bar_net, images[:1], None)
    _, top = activation_maps(bar_net, images, layer)
    other = [1 - int(label) for label in top]
    _, explained = activation_maps(bar_net, images, layer, other)
    assert explained.tolist() == other


def test_a_users_sequential_is_explained_after_its_last_convolution(bar_net):
    images, _, _ = bars(1, seed=0)
    # The last Conv2d is "3"; its ReLU "4" keeps the shape, the pool after it does not.
    assert choose_layer(feature_maps(bar_net, images)) == "4"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fastcnn", "10"),  # conv 128, BN, ReLU: 4x4, too small to pool again
        ("resnet9", "16"),  # the last residual pair, before the global pool
        ("resnet18", "layer4"),
        ("mobilenet_v3_small", "features"),
        ("vgg11", "features"),
    ],
)
def test_the_last_convolutional_block_is_found(name, expected):
    from taolu.models.factory import build_model

    size = 16 if name in ("fastcnn", "resnet9") else 64
    net = build_model(name, 3, (size, size), 4).eval()
    assert choose_layer(feature_maps(net, torch.rand(1, 3, size, size))) == expected


def test_a_wrong_layer_name_lists_the_ones_that_fit(bar_net):
    images, _, _ = bars(1, seed=0)
    with pytest.raises(ConfigError, match=r"'conv9' is no module.*: .*3, 4"):
        find_layer(bar_net, images, "conv9")
    with pytest.raises(ConfigError, match=r"'7' outputs no spatial"):
        find_layer(bar_net, images, "7")  # the Linear head
    assert find_layer(bar_net, images, "1") is bar_net[1]


def test_a_network_without_convolutions_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ConfigError, match="needs a CNN"):
        find_layer(net, torch.rand(1, 1, 4, 4), None)


def test_overlays_for_gives_one_picture_per_image(bar_net):
    images, _, _ = bars(3, seed=5)
    requires = [p.requires_grad for p in bar_net.parameters()]
    bar_net.zero_grad(set_to_none=True)
    pictures = overlays_for(bar_net, (images * 255).to(torch.uint8))
    assert len(pictures) == 3 and all(p.mode == "RGB" for p in pictures)
    assert pictures[0].size == (256, 256)  # 24 px enlarged to be seen
    assert [p.requires_grad for p in bar_net.parameters()] == requires
    assert all(p.grad is None for p in bar_net.parameters())
    assert not bar_net.training


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def explained_run(digits_run):
    """The session's digits run: these tests write only under tmp_path, never into it."""
    return digits_run


@pytest.fixture
def digit_files(tmp_path, digits_arrays):
    images, _ = digits_arrays
    folder = tmp_path / "inputs"
    (folder / "more").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(images[index]).save(folder / f"digit{index}.png")
    Image.fromarray(images[5]).save(folder / "more" / "digit0.png")  # the same name elsewhere
    return folder


def test_predict_explain_writes_overlays_and_leaves_the_inputs(
    explained_run, digit_files, tmp_path, cli_main, tree_snapshot
):
    before = tree_snapshot(digit_files)
    out = tmp_path / "overlays"
    code, printed, err = cli_main(
        "predict", explained_run.run_dir, digit_files, "--explain", out, "--json"
    )
    assert code == 0, err
    results = json.loads(printed)
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "digit0-2.explain.png",
        "digit0.explain.png",
        "digit1.explain.png",
        "digit2.explain.png",
    ]
    assert sorted(Path(r["explanation"]).name for r in results) == names
    assert Image.open(out / "digit1.explain.png").size == (256, 256)
    assert tree_snapshot(digit_files) == before
    # Again: the first overlays stay, the new ones take free names.
    code, _, _ = cli_main(
        "predict", explained_run.run_dir, digit_files / "digit1.png", "--explain", out
    )
    assert code == 0
    assert (out / "digit1-2.explain.png").is_file() and len(list(out.iterdir())) == 5


def test_the_overlays_path_is_printed_in_text_and_csv():
    from taolu.predictions import render_predictions

    results = [
        {
            "path": "a.png",
            "predictions": [{"class": "3", "probability": 0.9}],
            "explanation": "o/a.explain.png",
        },
        {"path": "b.png", "error": "b.png: unreadable"},
    ]
    assert "a.png: 3 0.900  [map: o/a.explain.png]" in render_predictions(results)
    rows = render_predictions(results, "csv").splitlines()
    assert rows[0].endswith(",explanation") and rows[1].endswith(",o/a.explain.png")
    assert rows[2] == "b.png,,,,b.png: unreadable,"


def test_predict_explain_at_a_named_layer_and_a_wrong_one(explained_run, digit_files, tmp_path):
    out = tmp_path / "named"
    best = explained_run.best_checkpoint  # a checkpoint file does as well as its run
    taolu.predict(best, [digit_files / "digit1.png"], explain=out, explain_layer="2")
    assert len(list(out.iterdir())) == 1
    with pytest.raises(ConfigError, match="'head' is no module.*layers with a spatial output"):
        taolu.predict(explained_run.run_dir, [digit_files], explain=out, explain_layer="head")
    with pytest.raises(ConfigError, match="needs 'explain'"):
        taolu.predict(explained_run.run_dir, [digit_files], explain_layer="2")


def test_exports_safetensors_explains_onnx_is_refused(explained_run, digit_files, tmp_path):
    pytest.importorskip("onnxruntime")
    weights = taolu.export(
        explained_run.run_dir, format="safetensors", out=tmp_path / "m.safetensors"
    )
    out = tmp_path / "from_weights"
    results = taolu.predict(weights.path, [digit_files / "digit2.png"], explain=out)
    assert (out / "digit2.explain.png").is_file() and "explanation" in results[0]
    onnx = taolu.export(explained_run.run_dir, format="onnx", out=tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="onnx file gives no gradients"):
        taolu.predict(onnx.path, [digit_files], explain=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- the report


def test_a_damaged_or_hostile_maps_file_gives_a_note(tmp_path):
    import base64

    from taolu.track.report_maps import MAPS_FILE, where_it_looks_section

    png = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    hostile = "<script>alert(1)</script>"
    entry = {"path": hostile, "true": hostile, "predicted": "b", "probability": 0.5, "loss": 2.0}
    (tmp_path / MAPS_FILE).write_text(json.dumps({"images": [{**entry, "png": png}]}))
    section = where_it_looks_section(tmp_path)
    assert "<script>" not in section and "&lt;script&gt;" in section
    for broken, why in (
        ({"images": [{**entry, "png": "not base64!"}]}, "not base64"),
        ({"images": [{**entry, "png": base64.b64encode(b"GIF89a").decode()}]}, "not a PNG"),
        ({"images": [{**entry, "png": png, "loss": "x"}]}, "loss is not a number"),
        ({"note": "no convolution"}, "Not drawn: no convolution"),
        ([], "not a JSON object"),
    ):
        (tmp_path / MAPS_FILE).write_text(json.dumps(broken))
        section = where_it_looks_section(tmp_path)
        assert why in section and "<img" not in section
    (tmp_path / MAPS_FILE).write_text("{")
    assert "could not be used" in where_it_looks_section(tmp_path)


def fake_run(run_dir: Path, model: nn.Module, count: int = 12):
    """What write_top_loss_maps reads of a Run, for a run whose validation split is `count`
    bar images, with val_predictions.csv written as a run writes it."""
    from types import SimpleNamespace

    from taolu.inspection import write_val_predictions
    from taolu.layout import RunDir

    images, labels, _ = bars(count, seed=11)
    (run_dir / "report").mkdir(parents=True)
    probabilities = torch.rand(count, 2, generator=torch.Generator().manual_seed(3)).softmax(1)
    write_val_predictions(
        RunDir(run_dir).val_predictions,
        [f"#{i}" for i in range(count)],
        ["across", "down"],
        probabilities,
        labels,
    )
    return (
        SimpleNamespace(
            data=SimpleNamespace(
                # Batches in evaluation's order, as Batches.iterate gives them.
                val=SimpleNamespace(iterate=lambda: iter([(images, labels)])),
                bundle=SimpleNamespace(classes=["across", "down"]),
                eval_transform=lambda batch: batch,
            ),
            model=SimpleNamespace(model=model),
        ),
        probabilities,
        labels,
    )


def test_the_report_maps_are_the_top_losses_or_a_note_why_not(tmp_path, bar_net):
    from taolu.run.top_loss_maps import write_top_loss_maps
    from taolu.track.report_maps import MAPS_FILE, where_it_looks_section

    run, probabilities, labels = fake_run(tmp_path / "cnn", bar_net)
    write_top_loss_maps(run, tmp_path / "cnn")
    saved = json.loads((tmp_path / "cnn" / "report" / MAPS_FILE).read_text())
    losses = -probabilities.gather(1, labels.view(-1, 1)).flatten().log()
    expected = [f"#{i}" for i in losses.argsort(descending=True)[:8].tolist()]
    assert [entry["path"] for entry in saved["images"]] == expected
    assert where_it_looks_section(tmp_path / "cnn" / "report").count("<img") == 8

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 2))
    run, _, _ = fake_run(tmp_path / "mlp", mlp)
    write_top_loss_maps(run, tmp_path / "mlp")  # never raises: the report must still be drawn
    section = where_it_looks_section(tmp_path / "mlp" / "report")
    assert "Not drawn: cannot explain this network" in section and "needs a CNN" in section
