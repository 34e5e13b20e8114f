"""WebDataset shards: written by `taolu data export --format webdataset`, scanned, streamed
(per-process shards, shuffle buffer, exact step counts), bad samples named SHARD:KEY."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import taolu
from taolu.cli import main
from taolu.data.check import check_data
from taolu.data.loaders import Batches
from taolu.data.shard_export import export_shards
from taolu.data.shard_files import expand_pattern
from taolu.data.shards import bundle_shards, exact_batches
from taolu.data.sources import SHARDS, data_kind
from taolu.errors import ConfigError, DataError

pytest.importorskip("webdataset")

SIZING = {"val_fraction": 0.25, "image_size": 0, "resize_mode": "squash", "channels": 0}
QUIET = {"verbose": False, "progress": False, "report": False}
CPU = torch.device("cpu")


def png(value: int, label: int) -> bytes:
    """An 8x8 gray PNG whose pixels are `value` (which sample it is) and whose top-left
    pixel is `label` x 100 (so the class can be learnt)."""
    pixels = np.full((8, 8), value, dtype=np.uint8)
    pixels[:4, :4] = label * 100
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_shards(folder, shards: int, per_shard: int, broken: str | tuple = ()) -> str:
    """shards of numbered samples (sample n has pixel value n); `broken` names the keys whose
    image is garbage. Returns the brace pattern."""
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    number = 0
    for shard in range(shards):
        with webdataset.TarWriter(str(folder / f"part-{shard:02d}.tar"), encoder=False) as out:
            for _ in range(per_shard):
                key, label = f"s{number:04d}", number % 2
                image = b"not a png" if key in broken else png(number, label)
                out.write({"__key__": key, "png": image, "cls": b"%d" % label})
                number += 1
    (folder / "classes.txt").write_text("even\nodd\n")
    return str(folder / f"part-{{00..{shards - 1:02d}}}.tar")


def sample_numbers(images: torch.Tensor) -> list[int]:
    return images[:, 0, -1, -1].tolist()  # the bottom-right pixel is the sample's number


def test_a_pattern_is_shards_and_a_missing_shard_is_named(tmp_path):
    pattern = write_shards(tmp_path / "s", 3, 4)
    assert data_kind(pattern) == SHARDS
    assert len(expand_pattern(pattern)) == 3
    (tmp_path / "s" / "part-01.tar").unlink()
    with pytest.raises(DataError, match="1 of 3 shard.*part-01.tar"):
        expand_pattern(pattern)


def test_the_last_shards_are_held_out_and_classes_come_from_classes_txt(tmp_path):
    pattern = write_shards(tmp_path / "s", 4, 5)
    bundle = bundle_shards(pattern, val_shards="", shuffle_buffer=10, **SIZING)
    assert bundle.classes == ["even", "odd"]
    assert (len(bundle.train), len(bundle.val)) == (15, 5)
    assert (bundle.channels, bundle.size) == (1, (8, 8))
    assert "last 1 of 4 shards held out" in bundle.description
    with pytest.raises(DataError, match="--val-shards"):
        bundle_shards(
            str(tmp_path / "s" / "part-00.tar"), val_shards="", shuffle_buffer=0, **SIZING
        )


def test_exact_batches_cut_any_stream_to_the_asked_count():
    source = iter(
        [(torch.arange(n), torch.arange(n)) for n in (5, 3, 7, 2, 9)]  # workers' part batches
    )
    sizes = [len(labels) for _, labels in exact_batches(source, 4, skip=3, count=14)]
    assert sizes == [4, 4, 4, 2]


def streamed_numbers(split, shard=(0, 1), seed=None, workers=0) -> list[int]:
    batches = Batches(split, 4, CPU, shuffle=seed is not None, workers=workers, shard=shard)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return [n for images, _ in batches.iterate(generator) for n in sample_numbers(images)]


def test_each_process_streams_its_own_shards_and_all_take_the_same_steps(tmp_path):
    pattern = write_shards(tmp_path / "s", 5, 6)  # 4 training shards of 6
    bundle = bundle_shards(pattern, val_shards="", shuffle_buffer=8, **SIZING)
    lengths = [len(Batches(bundle.train, 4, CPU, shuffle=True, shard=(r, 3))) for r in range(3)]
    assert lengths == [2, 2, 2]  # rank 0 has 2 shards (12), the others 6: all take 6's two
    seen = [set(streamed_numbers(bundle.train, (r, 2), seed=1)) for r in range(2)]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(24))
    with pytest.raises(DataError, match="at least one shard per process"):
        Batches(bundle.train, 4, CPU, shuffle=True, shard=(0, 5)).order(None)
    # validation takes what there is: the one held-out shard, on one of two processes
    assert [len(streamed_numbers(bundle.val, (r, 2))) for r in range(2)] == [6, 0]


def test_the_shuffle_follows_the_seed_and_keeps_every_sample_once(tmp_path):
    pattern = write_shards(tmp_path / "s", 3, 8)
    val = str(tmp_path / "s" / "part-02.tar")
    bundle = bundle_shards(pattern, val_shards=val, shuffle_buffer=6, **SIZING)
    first, again = streamed_numbers(bundle.train, seed=3), streamed_numbers(bundle.train, seed=3)
    other = streamed_numbers(bundle.train, seed=4)
    assert first == again and first != other
    assert sorted(first) == list(range(24))
    assert first != sorted(first)
    in_order = streamed_numbers(bundle.val)  # validation: in order, every sample once
    assert in_order == list(range(16, 24))
    assert sorted(streamed_numbers(bundle.val, workers=2)) == list(range(16, 24))


def test_a_balanced_sampler_is_refused_for_a_stream(tmp_path):
    bundle = bundle_shards(
        write_shards(tmp_path / "s", 2, 4), val_shards="", shuffle_buffer=0, **SIZING
    )
    with pytest.raises(ConfigError, match="class-weights"):
        Batches(bundle.train, 4, CPU, shuffle=True, sample_weights=torch.ones(4))


@pytest.mark.slow
def test_training_streams_shards_and_names_a_bad_sample(tmp_path, caplog):
    pattern = write_shards(tmp_path / "s", 4, 12, broken=("s0005", "s0040"))
    with caplog.at_level(logging.WARNING, logger="taolu"):
        result = taolu.train(
            data=pattern, epochs=1, lr=0.01, out=str(tmp_path / "runs"), workers=0, **QUIET
        )
    warned = [record.getMessage() for record in caplog.records if "s0005" in record.getMessage()]
    assert len(warned) == 1, warned  # once, though the TensorBoard samples met it first
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["cache"] == "stream"
    assert [entry["path"] for entry in summary["skipped_files"]] == [
        f"{tmp_path / 's' / 'part-00.tar'}:s0005",
        f"{tmp_path / 's' / 'part-03.tar'}:s0040",  # the held-out validation shard
    ]
    predictions = (result.run_dir / "val_predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 11  # a header, and every validation image that decoded
    report = check_data(pattern)
    assert [str(path) for path in report.bad_files] == [
        f"{tmp_path / 's' / 'part-00.tar'}:s0005",
        f"{tmp_path / 's' / 'part-03.tar'}:s0040",
    ]
    assert sum(report.counts["train"].values()) == 35 and sum(report.counts["val"].values()) == 11


def test_export_writes_shards_that_train_reads_back(tmp_path, capsys):
    assert main(["data", "export", "digits", str(tmp_path / "out"), "--format", "webdataset",
                 "--shard-size", "500"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "--val-shards" in printed
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written[0] == "classes.txt" and "train-000002.tar" in written
    train = str(tmp_path / "out" / "train-{000000..000002}.tar")
    val = str(tmp_path / "out" / "val-000000.tar")
    bundle = bundle_shards(train, val_shards=val, shuffle_buffer=0, **SIZING)
    assert bundle.classes == [str(digit) for digit in range(10)]
    assert len(bundle.train) + len(bundle.val) == 1797


def test_export_of_a_folder_keeps_each_files_bytes(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(5):
            (tmp_path / "photos" / name / f"{index}.png").write_bytes(png(index, name == "dog"))
    written = export_shards(str(tmp_path / "photos"), tmp_path / "shards", shard_size=100)
    assert (written["train"][0], written["val"][0]) == (8, 2)
    originals = {path.read_bytes() for path in (tmp_path / "photos").rglob("*.png")}
    with tarfile.open(written["train"][1]) as archive:
        stored = [archive.extractfile(m).read() for m in archive if m.name.endswith(".png")]
    assert len(stored) == 8 and set(stored) <= originals
    with pytest.raises(DataError, match="not empty"):
        export_shards(str(tmp_path / "photos"), tmp_path / "shards")


@pytest.mark.slow
def test_per_sample_transforms_stream_and_a_run_evaluates_on_its_shards(tmp_path):
    pattern = write_shards(tmp_path / "s", 3, 12)
    val = str(tmp_path / "s" / "part-02.tar")
    result = taolu.train(
        data=pattern,
        val_shards=val,
        transforms="digits",
        epochs=1,
        lr=0.01,
        out=str(tmp_path / "runs"),
        workers=1,
        **QUIET,
    )
    measured = taolu.evaluate(result.run_dir)
    assert measured["samples"] == 12  # the --val-shards shard, every sample once
    assert "WebDataset shards" in measured["data"]


def test_data_check_takes_val_shards_and_will_not_quarantine_samples(tmp_path, capsys):
    pattern = write_shards(tmp_path / "s", 3, 4, broken="s0002")
    val = str(tmp_path / "s" / "part-02.tar")
    assert main(["data", "check", pattern, "--val-shards", val, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bad_files"] == [f"{tmp_path / 's' / 'part-00.tar'}:s0002"]
    assert sum(report["counts"]["val"].values()) == 4
    assert main(["data", "check", pattern, "--quarantine", str(tmp_path / "q")]) != 0
    assert "nothing to move" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_eject_refuses_shards_rather_than_read_them_as_a_folder(tmp_path, capsys):
    pattern = write_shards(tmp_path / "s", 2, 4)
    script = tmp_path / "run.py"
    assert main(["train", "--data", pattern, "--eject", str(script)]) != 0
    assert "not (yet) for WebDataset shards" in capsys.readouterr().err
    assert not script.exists()
