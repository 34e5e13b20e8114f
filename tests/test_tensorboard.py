"""TensorBoard in full, read back with TensorBoard's own event reader: per-step and per-epoch
scalars, sample, misclassified and confusion-matrix images, the graph, histograms, PR curves
and hparams, all under split/metric tags."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import taolu

EPOCHS = 2


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}
    )
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def board_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("board_run")
    return taolu.train(
        data="digits",
        epochs=EPOCHS,
        histograms=1,
        out=str(out),
        progress=False,
        verbose=False,
        report=False,
    )


def test_scalars_per_step_and_per_epoch_under_split_metric_tags(board_run):
    accumulator = events(board_run.run_dir)
    scalars = set(accumulator.Tags()["scalars"])
    steps = int(torch.load(board_run.last_checkpoint, weights_only=True)["step"])
    for tag in ("train/loss", "train/lr", "train/grad_norm"):
        values = accumulator.Scalars(tag)
        assert [event.step for event in values] == list(range(1, steps + 1)), tag
    for tag in (
        "train/acc",
        "train/images_per_second",
        "val/loss",
        "val/acc",
        "val/top5_acc",
        "val/macro_f1",
        "val/balanced_acc",
        "val_per_class/f1/0",
    ):
        # On an epoch axis, so runs with more or fewer steps an epoch line up.
        assert [event.step for event in accumulator.Scalars(tag)] == [1, 2], tag
    for tag in scalars:
        split, _, metric = tag.partition("/")
        assert metric and split in {"train", "val", "val_per_class", "val_summary"}, tag
    lrs = [event.value for event in accumulator.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(0.05, rel=1e-3) and lrs[0] < lrs[len(lrs) // 4]


def test_images_graph_histograms_and_pr_curves(board_run):
    accumulator = events(board_run.run_dir)
    tags = accumulator.Tags()
    assert {"train/samples", "val/misclassified", "val/confusion_matrix"} <= set(tags["images"])
    assert len(accumulator.Images("val/misclassified")) == EPOCHS
    matrix = accumulator.Images("val/confusion_matrix")[-1]
    assert matrix.width > 100 and matrix.encoded_image_string.startswith(b"\x89PNG")
    assert tags["graph"] is True
    histograms = set(tags["histograms"])
    assert any(tag.startswith("weights/") for tag in histograms)
    assert any(tag.startswith("weight_gradients/") for tag in histograms)
    # Once an epoch, on the epoch axis, like the images and PR curves.
    weights = next(tag for tag in histograms if tag.startswith("weights/"))
    assert [event.step for event in accumulator.Histograms(weights)] == [1, 2]
    assert [event.step for event in accumulator.Images("val/misclassified")] == [1, 2]
    pr_curves = set(accumulator.PluginTagToContent("pr_curves"))
    assert pr_curves == {f"val_pr/{digit}" for digit in range(10)}


def test_hparams_carry_the_options_and_the_final_metrics(board_run):
    content = events(board_run.run_dir).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    names = {info.name for info in experiment.experiment.hparam_infos}
    assert {"lr", "batch_size", "model", "optimizer", "ema"} <= names
    metrics = {info.name.tag for info in experiment.experiment.metric_infos}
    assert "val_summary/best_acc" in metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.05)
    best = events(board_run.run_dir).Scalars("val_summary/best_acc")[-1].value
    assert best == pytest.approx(board_run.best_val_acc)


def time_series_groups(tags) -> list[str]:
    """Tag groups in the order TensorBoard's Time Series shows them: tags sorted with '/'
    and digits before letters, grouped by the part before the first '/' (it opens the first
    two groups)."""
    ordered = sorted(tags, key=lambda tag: tag.replace("/", "\x00"))
    return list(dict.fromkeys(tag.split("/", 1)[0] for tag in ordered))


def test_time_series_opens_on_train_and_val_not_the_hparams_numbers(board_run):
    tags = events(board_run.run_dir).Tags()
    groups = time_series_groups([*tags["scalars"], *tags["histograms"], *tags["images"]])
    assert groups[:2] == ["train", "val"], groups
    assert groups.index("val_summary") > groups.index("val_per_class")


def test_histograms_are_opt_in(digits_run):
    assert events(digits_run.run_dir).Tags()["histograms"] == []


def test_every_finished_run_writes_its_report(tmp_path):
    result = taolu.train(data="digits", epochs=1, out=str(tmp_path), progress=False, verbose=False)
    report = result.run_dir / "report"
    assert (report / "val_samples.safetensors").is_file()
    for name in ("loss.png", "accuracy.png", "val_samples.png"):
        assert (report / name).read_bytes().startswith(b"\x89PNG"), name
    html = (report / "report.html").read_text(encoding="utf-8")
    # The confusion matrix: a table linking to the images where some are wrong, else a PNG.
    assert 'table class="confusion"' in html or (report / "confusion_matrix.png").is_file()
    assert html.count("data:image/png;base64,") >= 5
