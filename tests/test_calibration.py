"""Calibration: temperature scaling fitted on the validation split, the expected calibration
error before and after, rejection thresholds, and predict's use of both."""

from __future__ import annotations

import json
import math

import pytest
import torch

import taolu
from taolu.checkpoint import read_state
from taolu.engine.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    threshold_keeping,
)
from taolu.errors import ConfigError
from taolu.export_format import read_metadata
from taolu.rebuild import restore_model


def sampled(temperature: float, count: int = 20000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): the labels are exactly as
    uncertain as that temperature says, so fitting must find it again."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator)
    return logits, labels.flatten()


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at(truth):
    logits, labels = sampled(truth)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.08)


def test_scaling_an_overconfident_model_lowers_its_calibration_error():
    logits, labels = sampled(2.5)  # the logits are 2.5x too sharp for their labels
    calibration = calibrate(logits.softmax(1), labels)
    assert calibration.temperature == pytest.approx(2.5, rel=0.08)
    assert calibration.ece_before > 0.1
    assert calibration.ece_after < calibration.ece_before / 3
    assert calibration.samples == len(labels)
    rows = calibration.reliability
    assert sum(count for _, _, count in rows) == len(labels)
    assert all(0 <= confidence <= 1 and 0 <= accuracy <= 1 for confidence, accuracy, _ in rows)


def test_a_calibrated_model_has_a_small_error_and_a_wrong_one_a_large_one():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sure_and_right = torch.nn.functional.one_hot(labels, 2).double()
    assert expected_calibration_error(sure_and_right, labels) == pytest.approx(0.0)
    sure_and_wrong = 1 - sure_and_right
    assert expected_calibration_error(sure_and_wrong, labels) == pytest.approx(1.0)


def test_the_threshold_keeps_the_stated_share_of_the_right_answers():
    # Right answers at 0.95, 0.9, 0.7, 0.65; wrong ones at 0.8 and 0.6.
    confidence = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.65, 0.6])
    probabilities = torch.stack([confidence, 1 - confidence], dim=1)
    labels = torch.tensor([0, 0, 1, 0, 0, 1])
    assert threshold_keeping(probabilities, labels, 0.5) == pytest.approx(0.9)
    assert threshold_keeping(probabilities, labels, 0.75) == pytest.approx(0.7)
    assert threshold_keeping(probabilities, labels, 1.0) == pytest.approx(0.65)
    nothing_right = torch.ones(6, dtype=torch.long)  # every prediction is class 0
    assert threshold_keeping(probabilities, nothing_right, 0.95) is None


def test_calibration_states_what_its_threshold_does_on_validation():
    logits, labels = sampled(1.0)
    calibration = calibrate(logits.softmax(1), labels)
    scaled = (logits.softmax(1).log() / calibration.temperature).softmax(1)
    confidence, predicted = scaled.max(1)
    answered = confidence >= calibration.reject_threshold
    right = predicted == labels
    assert float(right[answered].double().mean()) == pytest.approx(calibration.answered_accuracy)
    assert float(1 - answered.double().mean()) == pytest.approx(calibration.rejected_share)
    kept = float(answered[right].double().mean())
    assert 0.95 <= kept < 0.96  # KEPT_SHARE of the right answers, no more than a tie's worth
    assert calibration.answered_accuracy > float(right.double().mean())


# --------------------------------------------------------------------------- in a run


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    return taolu.train(
        data="digits", epochs=3, out=str(out), progress=False, report=False, verbose=False
    )


def test_a_run_stores_its_calibration_in_best_pt_and_the_summary(calibrated_run):
    calibration = calibrated_run.summary["calibration"]
    state = read_state(calibrated_run.best_checkpoint)
    assert state.temperature == pytest.approx(calibration["temperature"])
    assert 0.05 <= state.temperature <= 20 and state.temperature != 1.0
    assert calibration["samples"] == calibrated_run.summary["val_samples"]
    assert math.isfinite(calibration["ece_before"]) and math.isfinite(calibration["ece_after"])
    # Fitted on these very outputs, the scaled error is no worse than the raw one.
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-9
    assert state.reject_threshold == pytest.approx(calibration["reject_threshold"])
    assert 0 < calibration["rejected_share"] < 1


def test_predict_probabilities_are_the_logits_divided_by_the_temperature(calibrated_run, tmp_path):
    from PIL import Image

    from taolu.data.embedded import load_digits

    images, _ = load_digits()
    path = tmp_path / "digit.png"
    Image.fromarray(images[0]).save(path)
    [result] = taolu.predict(calibrated_run.run_dir, [path], topk=10)
    state = read_state(calibrated_run.best_checkpoint).to_dict()
    model = restore_model(state)
    mean = torch.tensor(state["preprocessing"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(state["preprocessing"]["std"]).view(1, -1, 1, 1)
    pixels = torch.from_numpy(images[0]).float().div(255).view(1, 1, 8, 8)
    with torch.no_grad():
        logits = model((pixels - mean) / std)
    expected = (logits / state["temperature"]).softmax(1)[0]
    for entry in result["predictions"]:
        index = state["classes"].index(entry["class"])
        assert entry["probability"] == pytest.approx(float(expected[index]), abs=2e-5)


def test_every_export_carries_the_temperature_and_predicts_the_same(calibrated_run, tmp_path):
    from PIL import Image

    from taolu.data.embedded import load_digits

    images, _ = load_digits()
    path = tmp_path / "digit.png"
    Image.fromarray(images[5]).save(path)
    expected = taolu.predict(calibrated_run.run_dir, [path], topk=3)[0]["predictions"]
    temperature = read_state(calibrated_run.best_checkpoint).temperature
    for format in ("onnx", "safetensors"):
        exported = taolu.export(calibrated_run.run_dir, format=format, out=tmp_path / f"m.{format}")
        if format == "safetensors":
            from safetensors import safe_open

            with safe_open(str(exported.path), framework="pt") as handle:
                metadata = read_metadata(handle.metadata(), exported.path)
            assert metadata["temperature"] == pytest.approx(temperature)
        got = taolu.predict(exported.path, [path], topk=3)[0]["predictions"]
        assert [p["class"] for p in got] == [p["class"] for p in expected]
        for mine, theirs in zip(got, expected, strict=True):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-4)


def test_reject_below_answers_unknown_below_the_threshold(calibrated_run, tmp_path):
    from PIL import Image

    from taolu.data.embedded import load_digits

    images, _ = load_digits()
    paths = []
    for index in range(6):
        paths.append(tmp_path / f"d{index}.png")
        Image.fromarray(images[index]).save(paths[-1])
    plain = taolu.predict(calibrated_run.run_dir, paths)
    assert all("answer" not in result for result in plain)
    tops = [result["predictions"][0]["probability"] for result in plain]
    cut = sorted(tops)[len(tops) // 2]
    answered = taolu.predict(calibrated_run.run_dir, paths, reject_below=cut)
    for result, top in zip(answered, tops, strict=True):
        expected = result["predictions"][0]["class"] if top >= cut else "unknown"
        assert result["answer"] == expected
    assert {r["answer"] for r in answered} >= {"unknown"}
    everything = taolu.predict(calibrated_run.run_dir, paths, reject_below=0.0)
    assert all(r["answer"] == r["predictions"][0]["class"] for r in everything)
    threshold = read_state(calibrated_run.best_checkpoint).reject_threshold
    auto = taolu.predict(calibrated_run.run_dir, paths, reject_below="auto")
    for result in auto:
        top = result["predictions"][0]
        sure = top["probability"] >= threshold
        assert result["answer"] == (top["class"] if sure else "unknown")


@pytest.mark.parametrize("bad", [1.5, -0.1, "often"])
def test_a_reject_threshold_outside_0_to_1_is_refused(calibrated_run, tmp_path, bad):
    with pytest.raises(ConfigError, match="reject_below"):
        taolu.predict(calibrated_run.run_dir, [tmp_path / "none.png"], reject_below=bad)


def test_rendered_answers_say_unknown_and_csv_gains_an_answer_column():
    from taolu.predictions import render_predictions

    results = [
        {
            "path": "a.png",
            "predictions": [{"class": "3", "probability": 0.41}],
            "answer": "unknown",
        },
        {"path": "b.png", "predictions": [{"class": "7", "probability": 0.98}], "answer": "7"},
    ]
    assert render_predictions(results).splitlines() == [
        "a.png: unknown (3 0.410)",
        "b.png: 7 0.980",
    ]
    rows = render_predictions(results, "csv").splitlines()
    assert rows[0].endswith(",answer") and rows[1].endswith(",unknown") and rows[2].endswith(",7")
    plain = [{"path": "c.png", "predictions": [{"class": "1", "probability": 0.5}]}]
    assert "answer" not in render_predictions(plain, "csv").splitlines()[0]


def test_the_report_shows_the_reliability_diagram(calibrated_run):
    from taolu.track.report import write_report

    page = write_report(calibrated_run.run_dir).read_text(encoding="utf-8")
    section = page[page.index('<section id="reliability">') :]
    section = section[: section.index("</section>")]
    assert "data:image/png;base64," in section
    assert "expected calibration error" in section
    assert (calibrated_run.run_dir / "report" / "reliability.png").is_file()


@pytest.mark.parametrize(
    "key, value",
    [
        ("temperature", "-1"),
        ("temperature", "nan"),
        ("reject_threshold", "1.5"),
        ("reject_threshold", "true"),
        ("augmentation", '{"shift": 100000}'),
        ("augmentation", '{"flip": "yes"}'),
    ],
)
def test_damaged_calibration_metadata_is_refused_by_name(calibrated_run, key, value):
    from taolu.errors import CheckpointError
    from taolu.export_format import build_metadata

    state = read_state(calibrated_run.best_checkpoint).to_dict()
    metadata = build_metadata(state, normalized_inside=True)
    assert read_metadata(metadata, "m.onnx")["temperature"] == pytest.approx(state["temperature"])
    with pytest.raises(CheckpointError, match=f"m.onnx: its taolu metadata is damaged.*{key[:5]}"):
        read_metadata({**metadata, key: value}, "m.onnx")


def test_the_cli_passes_reject_below_and_tta_through(calibrated_run, tmp_path, cli_main):
    from PIL import Image

    from taolu.data.embedded import load_digits

    images, _ = load_digits()
    path = tmp_path / "d.png"
    Image.fromarray(images[0]).save(path)
    code, out, _ = cli_main(
        "predict", calibrated_run.run_dir, path, "--reject-below", "1", "--tta", "--json"
    )
    [result] = json.loads(out)
    top = result["predictions"][0]
    assert code == 0
    assert result["answer"] == (top["class"] if top["probability"] >= 1 else "unknown")
    code, out, _ = cli_main("predict", calibrated_run.run_dir, path, "--reject-below", "often")
    assert code != 0
    code, out, _ = cli_main("eval", calibrated_run.run_dir, "--tta", "--json")
    assert code == 0 and json.loads(out)["tta"] is True
