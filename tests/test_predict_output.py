"""What `taolu predict` tells the user: each input once, JSON as the README describes it, and a
warning when an input is the other way round from the training images (MNIST's digits are
white on black; a digit drawn black on white is read confidently and wrongly)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import taolu
from taolu.checkpoint import read_state, save_checkpoint
from taolu.data.polarity import DARK, border_brightness
from taolu.predictions import render_predictions

README = Path(__file__).resolve().parents[1] / "README.md"


def write_digit(path: Path, image: np.ndarray, *, inverted: bool = False) -> Path:
    """A sklearn digit (0..16 values, white on black) as an 8-bit PNG, or black on white."""
    pixels = (image.astype(np.float32) * (255 / 16)).astype(np.uint8)
    Image.fromarray(255 - pixels if inverted else pixels).save(path)
    return path


def test_the_training_background_is_kept_in_the_checkpoint(digits_run):
    state = read_state(Path(digits_run.run_dir) / "weights" / "best.pt")
    assert state.background is not None and state.background < DARK  # digits: black around


def test_border_brightness_reads_the_outer_ring():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[:, :, 2:6, 2:6] = 255  # a white mark in the middle of black
    assert border_brightness(image) == [0.0]
    assert border_brightness(255 - image) == [1.0]


def test_predict_warns_about_inputs_the_other_way_round(
    digits_run, digits_arrays, tmp_path, caplog
):
    images, _ = digits_arrays
    plain = write_digit(tmp_path / "plain.png", images[0])
    drawn = write_digit(tmp_path / "drawn.png", images[1], inverted=True)
    with caplog.at_level(logging.WARNING, logger="taolu"):
        taolu.predict(digits_run.run_dir, [plain])
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="taolu"):
        results = taolu.predict(digits_run.run_dir, [plain, drawn])
    assert len(results) == 2 and all("predictions" in result for result in results)
    [record] = caplog.records
    message = record.getMessage()
    assert "1 of 2 inputs are dark on light" in message
    assert "white digits on black" in message and "Invert" in message
    assert str(drawn) in message and str(plain) not in message


def test_the_cli_shows_the_warning_and_each_missing_path_once(
    digits_run, digits_arrays, tmp_path, cli_main
):
    images, _ = digits_arrays
    drawn = write_digit(tmp_path / "drawn.png", images[1], inverted=True)
    missing = tmp_path / "nope.png"
    code, out, err = cli_main("predict", digits_run.run_dir, drawn, missing, "--topk", "2")
    assert code == 1
    assert f"{missing}: error: no such file\n" in out
    assert out.count(str(missing)) == 1
    assert "taolu: warning: 1 of 2 inputs are dark on light" in err


def test_json_is_one_array_with_one_object_per_input_as_the_readme_says(
    digits_run, digits_arrays, tmp_path, cli_main
):
    images, _ = digits_arrays
    files = [write_digit(tmp_path / f"{index}.png", images[index]) for index in range(3)]
    code, out, _ = cli_main("predict", digits_run.run_dir, *files, "--json", "--topk", "2")
    assert code == 0
    parsed = json.loads(out)
    assert isinstance(parsed, list) and [item["path"] for item in parsed] == list(map(str, files))
    assert all(len(item["predictions"]) == 2 for item in parsed)
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert "`--json` prints one JSON array holding one object per input" in readme


def test_render_predictions_styles():
    results = [
        {"path": "a.png", "predictions": [{"class": "3", "probability": 0.875}]},
        {"path": "b.png", "error": "b.png: not an image file Pillow can read"},
        {"path": "<image 2>", "error": "unsupported array"},
    ]
    assert render_predictions(results) == (
        "a.png: 3 0.875\n"
        "b.png: error: not an image file Pillow can read\n"
        "<image 2>: error: unsupported array\n"
    )
    assert json.loads(render_predictions(results, "json")) == results
    assert render_predictions(results, "csv").splitlines()[:3] == [
        "path,rank,class,probability,error",
        "a.png,1,3,0.875000,",
        "b.png,,,,b.png: not an image file Pillow can read",
    ]
    with pytest.raises(ValueError, match="style"):
        render_predictions(results, "yaml")


def test_a_checkpoint_from_before_the_background_was_kept_still_predicts(
    digits_run, digits_arrays, tmp_path, caplog
):
    state = read_state(Path(digits_run.run_dir) / "weights" / "best.pt").to_dict()
    del state["background"]
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    images, _ = digits_arrays
    drawn = write_digit(tmp_path / "drawn.png", images[1], inverted=True)
    with caplog.at_level(logging.WARNING, logger="taolu"):
        [result] = taolu.predict(old, [drawn])
    assert "predictions" in result and not caplog.records  # nothing known, nothing claimed
