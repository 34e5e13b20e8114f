"""Error analysis: val_predictions.csv names every validation image with its prediction, and
`taolu inspect` reads it back as top losses and confused pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import taolu
from taolu.errors import DataError
from taolu.inspection import COLUMNS, inspect_run, write_val_predictions


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_run_names_each_validation_file(tmp_path, image_folder, cli_main):
    (image_folder / "ant" / "broken.png").write_bytes(b"not a png")
    run = taolu.train(
        data=str(image_folder),
        epochs=2,
        out=str(tmp_path / "runs"),
        progress=False,
        report=False,
        verbose=False,
    )
    table = run.run_dir / "val_predictions.csv"
    rows = rows_of(table)
    assert tuple(rows[0]) == COLUMNS
    split = json.loads((run.run_dir / "split.json").read_text())
    val_files = {entry["path"] for entry in split["files"] if entry["split"] == "val"}
    skipped = {Path(item["path"]).name for item in run.summary["skipped_files"]}
    assert len(rows) == len([f for f in val_files if Path(f).name not in skipped])
    for row in rows:
        relative = Path(row["path"]).relative_to(image_folder).as_posix()
        assert relative in val_files
        assert relative.split("/")[0] == row["true"]
        assert row["predicted"] in ("ant", "bee")
        assert 0 <= float(row["probability"]) <= 1 and float(row["loss"]) >= 0
    assert "broken.png" not in table.read_text()
    found = taolu.inspect(run.run_dir, top=3)
    assert found["images"] == len(rows) and len(found["top_losses"]) == min(3, len(rows))
    losses = [row["loss"] for row in found["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    code, out, _ = cli_main("inspect", run.run_dir, "--json")
    assert code == 0 and json.loads(out)["images"] == len(rows)


def test_a_user_dataset_run_names_samples_by_index(tmp_path, array_dataset, easy_images):
    images, labels = easy_images(40, seed=3)
    run = taolu.train(
        data=array_dataset(images, labels),
        classes=["ant", "bee"],
        epochs=1,
        workers=0,
        out=str(tmp_path),
        progress=False,
        report=False,
        verbose=False,
    )
    rows = rows_of(run.run_dir / "val_predictions.csv")
    assert len(rows) == run.summary["val_samples"]
    assert all(row["path"].startswith("ArrayDataset[") for row in rows)


def test_inspect_counts_the_confused_pairs(tmp_path):
    (tmp_path / "weights").mkdir()
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 0, 1])
    write_val_predictions(
        tmp_path / "val_predictions.csv",
        ["a", "b", "c", "d"],
        ["cat", "dog"],
        probabilities,
        labels,
    )
    found = inspect_run(tmp_path, top=2)
    assert found["wrong"] == 3
    assert [row["path"] for row in found["top_losses"]] == ["b", "c"]
    assert found["confused_pairs"] == [
        {"true": "cat", "predicted": "dog", "count": 2, "paths": ["b", "c"]},
        {"true": "dog", "predicted": "cat", "count": 1, "paths": ["d"]},
    ]
    assert found["top_losses"][0]["loss"] == pytest.approx(
        -torch.tensor(0.2).log().item(), abs=1e-5
    )


def test_inspect_without_the_file_says_which_file_and_why(tmp_path):
    with pytest.raises(DataError, match="val_predictions.csv: not found"):
        inspect_run(tmp_path)
    (tmp_path / "val_predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a val_predictions.csv"):
        inspect_run(tmp_path)
