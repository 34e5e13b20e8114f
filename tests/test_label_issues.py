"""Likely mislabelled images: confident learning on out-of-sample probabilities (synthetic
matrices with known flipped rows), the folds, label_issues.csv, and `taolu
find-label-issues` end to end on files and on a user's Dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import taolu
from taolu.data.pipeline import DataOptions, read_bundle
from taolu.errors import ConfigError, DataError
from taolu.label_issues import (
    COLUMNS,
    LabelIssue,
    assign_folds,
    class_thresholds,
    confident_joint,
    find_label_issues,
    read_label_issues,
    write_label_issues,
)
from taolu.label_search import pool_splits
from taolu.run.setup import UserParts
from taolu.track.report import write_report
from taolu.train_options import build_train_config

QUIET = {"verbose": False, "progress": False, "report": False}


def noisy_probabilities(samples: int, classes: int, flipped: list[int], seed: int = 0):
    """A model's probabilities that are right about every true class (0.7..0.95 on it), and
    given labels equal to the true class except at `flipped`, moved to the next class."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.arange(samples) % classes
    sure = 0.7 + 0.25 * torch.rand(samples, generator=generator)
    rest = (1 - sure) / (classes - 1)
    probabilities = rest.view(-1, 1).repeat(1, classes)
    probabilities[torch.arange(samples), truth] = sure
    labels = truth.clone()
    labels[flipped] = (truth[flipped] + 1) % classes
    return probabilities, labels, truth


def test_the_flipped_rows_are_flagged_and_rank_first():
    flipped = [3, 17, 40, 58, 71]
    probabilities, labels, truth = noisy_probabilities(90, 3, flipped)
    probabilities[flipped] = torch.where(probabilities[flipped] > 0.5, 0.9, 0.05)
    probabilities[58] = torch.tensor([0.15, 0.8, 0.05])  # the least sure: ranked last
    issues = find_label_issues(probabilities, labels)
    assert sorted(issue.index for issue in issues) == flipped
    assert issues[-1].index == 58
    for issue in issues:
        assert issue.given == labels[issue.index] and issue.suggested == truth[issue.index]
        assert issue.score == pytest.approx(float(probabilities[issue.index, issue.given]))
        assert issue.margin < 0
    scores = [issue.score for issue in issues]
    assert scores == sorted(scores)  # most suspect (least self-confidence) first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrating_the_joint_finds_flips_the_thresholds_leave_uncounted(seed):
    # The model is right about every true class but only 0.7..0.95 sure, so about half of
    # the flipped samples fall below their class's threshold: the confident joint's
    # off-diagonal alone undercounts them; scaled to the label counts it estimates them,
    # and the largest margins are taken. Every flag is a real flip (precision 1).
    flipped = torch.randperm(300, generator=torch.Generator().manual_seed(100 + seed))[:15]
    probabilities, labels, _ = noisy_probabilities(300, 3, flipped.tolist(), seed)
    found = {issue.index for issue in find_label_issues(probabilities, labels)}
    joint = confident_joint(probabilities, labels, class_thresholds(probabilities, labels))
    off_diagonal = int(joint.sum() - joint.diag().sum())
    assert found <= set(flipped.tolist())
    assert len(found) >= 12 and len(found) > off_diagonal


def test_a_noisy_but_correct_sample_is_not_flagged():
    # Labelled 0, the model leans to 0 but gives class 1 more than class 1's threshold:
    # it still ranks its own label first, so it is kept.
    probabilities = torch.tensor(
        [[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]]
    )
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    thresholds = class_thresholds(probabilities, labels)
    assert thresholds.tolist() == pytest.approx([2.35 / 3, 0.7])
    assert find_label_issues(probabilities, labels) == []


def test_thresholds_are_per_class_so_an_unsure_class_still_counts():
    # Class 2 is hard: the model never gives it more than ~0.5. A sample labelled 0 with
    # 0.5 on class 2 is counted there; one global threshold (0.8) would have missed it.
    probabilities = torch.tensor(
        [
            [0.95, 0.03, 0.02],
            [0.9, 0.05, 0.05],
            [0.45, 0.05, 0.5],  # labelled 0: looks like a 2
            [0.05, 0.9, 0.05],
            [0.1, 0.85, 0.05],
            [0.3, 0.2, 0.5],
            [0.35, 0.2, 0.45],
            [0.3, 0.15, 0.55],
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    issues = find_label_issues(probabilities, labels)
    assert [(issue.index, issue.given, issue.suggested) for issue in issues] == [(2, 0, 2)]
    joint = confident_joint(probabilities, labels, class_thresholds(probabilities, labels))
    assert joint[0, 2] == 1 and joint.sum() <= len(labels)


def test_a_class_nobody_is_labelled_with_takes_only_certainty():
    probabilities = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.85, 0.1, 0.05]])
    labels = torch.tensor([0, 0, 0])
    assert class_thresholds(probabilities, labels)[2] == 1.0
    assert find_label_issues(probabilities, labels) == []


def test_the_shapes_must_agree():
    with pytest.raises(ValueError):
        find_label_issues(torch.rand(4, 3), torch.tensor([0, 1, 2]))


def test_folds_are_stratified_even_and_seeded():
    labels = torch.tensor([0] * 13 + [1] * 7 + [2] * 20)
    fold = assign_folds(labels, 4, seed=5)
    assert fold.shape == labels.shape and set(fold.tolist()) == {0, 1, 2, 3}
    sizes = torch.bincount(fold, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1, 2):
        per_fold = torch.bincount(fold[labels == label], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1
    assert torch.equal(fold, assign_folds(labels, 4, seed=5))
    assert not torch.equal(fold, assign_folds(labels, 4, seed=6))
    with pytest.raises(ValueError):
        assign_folds(labels, 1, seed=0)


def test_the_csv_round_trips_and_refuses_what_taolu_did_not_write(tmp_path):
    path = tmp_path / "label_issues.csv"
    issues = [LabelIssue(2, 0, 1, 0.125, -0.75), LabelIssue(0, 1, 0, 0.25, -0.5)]
    write_label_issues(path, issues, ["a.png", "b, c.png", "d.png"], ["cat", "dog"])
    rows = read_label_issues(path)
    assert [tuple(row) for row in rows] == [COLUMNS, COLUMNS]
    assert [(r["path"], r["given"], r["suggested"], r["score"]) for r in rows] == [
        ("d.png", "cat", "dog", 0.125),
        ("a.png", "dog", "cat", 0.25),
    ]
    with pytest.raises(DataError, match="not found"):
        read_label_issues(tmp_path / "missing.csv")
    path.write_text("path,true\nx,y\n")
    with pytest.raises(DataError, match="not a label_issues.csv"):
        read_label_issues(path)


# --------------------------------------------------------------------------- the pool


def test_an_embedded_set_is_pooled_and_named_by_its_rows(digits_arrays):
    config = build_train_config(None, {"data": "digits"})
    bundle, *_ = read_bundle(DataOptions.taken_from(config))
    pool = pool_splits(bundle, config)
    images, labels = digits_arrays
    rows = [int(name.removeprefix("digits[").removesuffix("]")) for name in pool.names]
    assert sorted(rows) == list(range(len(labels)))
    assert pool.labels.tolist() == [int(labels[row]) for row in rows]
    assert torch.equal(pool.samples.images[:, 0], torch.from_numpy(images[rows]))


def test_separate_user_datasets_are_told_apart(array_dataset, easy_images):
    images, labels = easy_images(12, seed=1)
    train, val = array_dataset(images[:8], labels[:8]), array_dataset(images[8:], labels[8:])
    parts = UserParts(train_data=train, val_data=val)
    config = build_train_config(None, {}, parts=parts)
    bundle, *_ = read_bundle(DataOptions.taken_from(config), train_data=train, val_data=val)
    pool = pool_splits(bundle, config, separate_val=True)
    assert pool.names[0] == "ArrayDataset[0]" and pool.names[8] == "val_data ArrayDataset[0]"
    assert pool.labels.tolist() == list(labels) and len(set(pool.names)) == 12


# --------------------------------------------------------------------------- end to end

COLOURS = {"blue": (40, 60, 200), "red": (200, 50, 40)}


def colour_image(colour, rng) -> Image.Image:
    noise = rng.integers(-25, 26, (8, 8, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def colour_folder(tmp_path):
    """root/blue and root/red, 14 plain images each, and in red/ two blue images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(14):
            colour_image(colour, rng).save(root / name / f"{name}{index:02d}.png")
    for index in range(2):
        colour_image(COLOURS["blue"], rng).save(root / "red" / f"zz_wrong{index}.png")
    return root


def label_issues_section(page) -> str:
    text = page.read_text(encoding="utf-8")
    start = text.index('<section id="label-issues">')
    return text[start : text.index("</section>", start)]


@pytest.mark.slow
def test_find_label_issues_puts_the_mislabelled_files_first(
    tmp_path, colour_folder, cli_main, tree_snapshot
):
    run = taolu.train(
        data=str(colour_folder), model="tudui", epochs=4, out=str(tmp_path / "runs"), **QUIET
    )
    before = tree_snapshot(colour_folder)
    page = write_report(run.run_dir)
    assert "zz_wrong0.png" not in label_issues_section(page)
    code, out, err = cli_main("find-label-issues", run.run_dir, "--folds", "3", "--epochs", "4")
    assert code == 0, err
    assert "zz_wrong0.png" in label_issues_section(page)  # the page redrawn with the list
    rows = read_label_issues(run.run_dir / "label_issues.csv")
    wrong = {str(colour_folder / "red" / f"zz_wrong{i}.png") for i in range(2)}
    assert {row["path"] for row in rows[:2]} == wrong
    assert all(row["given"] == "red" and row["suggested"] == "blue" for row in rows[:2])
    assert "zz_wrong0.png" in out and "fold 3/3" in out
    assert tree_snapshot(colour_folder) == before  # nothing moved, relabelled or written
    assert not [p for p in run.run_dir.iterdir() if p.name.startswith("label_folds")]
    code, out, _ = cli_main("find-label-issues", run.run_dir, "--folds", "2", "--json")
    assert code == 0 and isinstance(json.loads(out), list)


@pytest.mark.slow
def test_a_user_dataset_run_names_its_suspects_by_index(tmp_path, array_dataset, easy_images):
    images, labels = easy_images(48, seed=4)
    flipped = [5, 30]
    for index in flipped:
        labels[index] = 1 - labels[index]
    dataset = array_dataset(images, labels)
    run = taolu.train(
        data=dataset, classes=["ant", "bee"], epochs=3, workers=0, out=str(tmp_path), **QUIET
    )
    with pytest.raises(ConfigError, match="data="):
        taolu.find_label_issues(run.run_dir)
    search = taolu.find_label_issues(run.run_dir, data=dataset, folds=3, verbose=False)
    assert {row["path"] for row in search.issues[:2]} == {f"ArrayDataset[{i}]" for i in flipped}
    assert search.samples == 48 and len(search.fold_accuracy) == 3
    with open(search.path, newline="") as handle:
        assert next(csv.reader(handle)) == list(COLUMNS)


def test_a_run_with_your_own_module_trains_copies_of_it(tmp_path, array_dataset, easy_images):
    images, labels = easy_images(24, seed=2)
    dataset = array_dataset(images, labels)

    def tiny_net():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))

    run = taolu.train(
        data=dataset, model=tiny_net(), epochs=1, workers=0, out=str(tmp_path), **QUIET
    )
    with pytest.raises(ConfigError, match="data=.*model="):
        taolu.find_label_issues(run.run_dir)
    untrained = tiny_net()
    before = {key: value.clone() for key, value in untrained.state_dict().items()}
    search = taolu.find_label_issues(
        run.run_dir, data=dataset, model=untrained, folds=2, epochs=1, verbose=False
    )
    assert search.samples == 24 and search.path.is_file()
    after = untrained.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # copies trained


def test_the_command_refuses_a_bad_fold_count(tmp_path, cli_main):
    code, _, err = cli_main("find-label-issues", tmp_path, "--folds", "1")
    assert code == 2 and "folds" in err


@pytest.mark.slow
def test_a_layer_list_run_is_refolded_from_its_stored_list(tmp_path):
    layers = [{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "ReLU", "Flatten", "Linear"]
    spec = tmp_path / "mynet.json"
    spec.write_text(json.dumps({"layers": layers}))
    run = taolu.train(data="digits", model=str(spec), epochs=1, out=str(tmp_path), **QUIET)
    spec.unlink()  # the folds are built from the list the checkpoint holds, not the file
    search = taolu.find_label_issues(run.run_dir, folds=2, verbose=False)
    assert search.samples == 1797 and len(search.fold_accuracy) == 2
    assert min(search.fold_accuracy) > 0.5
    assert all(row["path"].startswith("digits[") for row in search.issues)
