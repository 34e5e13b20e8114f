"""Exporting a trained model (ONNX, TorchScript, safetensors) and predicting with the files.

One tiny run (digits, 1 epoch) is exported once in each format (module-scoped fixtures); the
tests check the parity the export promises (<= 1e-4 at batch 1 and 8), the ONNX file's dynamic
batch and metadata, that a refused export leaves no file, that predict gives the same top-k
and probabilities from every file as from the checkpoint, and predict at scale: a folder with a
nested subfolder and a corrupt file, as CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import taolu
from taolu import checkpoint as ckpt
from taolu.data.embedded import load_digits
from taolu.export_format import EXPORT_FORMAT, FORMATS, METADATA_FILE
from taolu.export_writers import Normalized
from taolu.model_export import ExportResult
from taolu.models.nets import build_fastcnn
from taolu.rebuild import restore_model

PARITY = re.compile(r"(\S+) at batch 1, (\S+) at batch 8")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, quiet) -> Path:
    out = tmp_path_factory.mktemp("export_run")
    return taolu.train(data="digits", epochs=1, out=str(out), **quiet).run_dir


@pytest.fixture(scope="module")
def exported(run_dir) -> dict[str, ExportResult]:
    """The run exported once in each format, to the default files."""
    return {name: taolu.export(run_dir, format=name) for name in FORMATS}


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """photos/ with digits as PNGs: 8x8 gray, a 24x24 one, an RGB one, a nested subfolder
    (two levels), and one corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    images, _ = load_digits()
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(images[i]).save(root / f"digit{i}.png")
    Image.fromarray(images[4]).resize((24, 24)).save(root / "nested" / "big.png")
    Image.fromarray(images[5]).convert("RGB").save(root / "nested" / "deeper" / "rgb.png")
    Image.fromarray(images[6]).save(root / "nested" / "deeper" / "six.png")
    (root / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def reference(run_dir, image_tree) -> list[dict]:
    """Predictions of the checkpoint itself, the yardstick for every exported file."""
    return taolu.predict(run_dir, [image_tree], topk=3)


def test_every_format_matches_pytorch_at_batch_1_and_8(exported, run_dir):
    for name, result in exported.items():
        assert result.format == name
        assert result.path == run_dir / "export" / f"model{FORMATS[name]}"
        assert result.path.is_file()
        assert 0 <= result.max_abs_diff_batch1 <= 1e-4
        assert 0 <= result.max_abs_diff_batch8 <= 1e-4
    assert sorted(p.name for p in (run_dir / "export").iterdir() if p.name.startswith(".")) == []


def test_cli_prints_the_figures_and_never_overwrites_a_default_file(
    exported, run_dir, cli_main, tmp_path
):
    before = {name: digest(result.path) for name, result in exported.items()}
    for name in FORMATS:
        code, out, err = cli_main("export", run_dir, "--format", name)
        assert code == 0, err
        figures = PARITY.search(out)
        assert figures, out
        assert all(float(value) <= 1e-4 for value in figures.groups())
        second = run_dir / "export" / f"model2{FORMATS[name]}"
        assert str(second) in out and second.is_file()
        assert digest(exported[name].path) == before[name]  # the first one untouched
    # A file the user names with --out is theirs to replace.
    named = tmp_path / "mine.onnx"
    named.write_bytes(b"old")
    code, out, err = cli_main("export", run_dir, "--format", "onnx", "--out", named)
    assert code == 0, err
    assert named.read_bytes() != b"old" and str(named) in out


def test_onnx_takes_any_batch_of_0_to_1_images_and_carries_the_metadata(exported, run_dir):
    import onnx
    import onnxruntime

    path = exported["onnx"].path
    state = ckpt.load_checkpoint(run_dir / "weights" / "best.pt")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_axis = session.get_inputs()[0].shape[0]
    assert isinstance(batch_axis, str)  # symbolic: any batch size
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert logits.shape == (3, 10)
    # Input 0..1; the normalisation is inside the graph.
    mean = torch.tensor(state["preprocessing"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(state["preprocessing"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = restore_model(state)((images - mean) / std)
    assert np.abs(logits - expected.numpy()).max() <= 1e-4

    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert metadata["format"] == EXPORT_FORMAT and metadata["format_version"] == "1"
    assert metadata["model_name"] == "fastcnn"
    assert json.loads(metadata["classes"]) == state["classes"]
    assert json.loads(metadata["preprocessing"]) == state["preprocessing"]
    described = json.loads(metadata["input"])
    assert described["normalized_inside"] is True
    assert described["shape"] == ["batch", 1, 8, 8]


def test_torchscript_and_safetensors_carry_the_same_metadata(exported, run_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = ckpt.load_checkpoint(run_dir / "weights" / "best.pt")
    with zipfile.ZipFile(exported["torchscript"].path) as archive:
        [entry] = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        scripted = json.loads(archive.read(entry))
    with safe_open(str(exported["safetensors"].path), framework="pt") as handle:
        stored = handle.metadata()
    for metadata in (scripted, stored):
        assert metadata["format"] == EXPORT_FORMAT
        assert json.loads(metadata["classes"]) == state["classes"]
        assert json.loads(metadata["preprocessing"]) == state["preprocessing"]
    assert json.loads(scripted["input"])["normalized_inside"] is True
    assert json.loads(stored["input"])["normalized_inside"] is False
    # safetensors: the inference (EMA) weights, loadable into a freshly built network.
    weights = load_file(str(exported["safetensors"].path))
    fresh = build_fastcnn(1, (8, 8), 10)
    fresh.load_state_dict(weights)
    for key, value in ckpt.inference_weights(state).items():
        assert torch.equal(weights[key], value)


class Drifting(nn.Sequential):
    """fastcnn whose output depends on how often it was called: no export can reproduce it."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x) + self.calls


@pytest.mark.parametrize("name", ["onnx", "torchscript"])
def test_a_refused_export_leaves_no_file(run_dir, tmp_path, name):
    target = tmp_path / f"drift{FORMATS[name]}"
    kept = tmp_path / f"kept{FORMATS[name]}"
    kept.write_bytes(b"the user's file")
    for out in (target, kept):
        drifting = Drifting(*build_fastcnn(1, (8, 8), 10))
        with pytest.raises(taolu.TaoluError, match="refused.*the limit is 0.0001"):
            taolu.export(run_dir, format=name, out=out, model=drifting)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]  # no temporary left
    assert kept.read_bytes() == b"the user's file"


def test_your_own_module_exports_from_python_not_from_the_cli(run_dir, tmp_path, cli_main):
    state = ckpt.load_checkpoint(run_dir / "weights" / "best.pt")
    state.update(model_name=None, model_class="mine.MyNet")
    own = tmp_path / "weights" / "best.pt"
    ckpt.save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, own)
    code, _, err = cli_main("export", tmp_path, "--format", "safetensors")
    assert code == 2 and "model=" in err and "MyNet" in err
    assert not (tmp_path / "export").exists()

    result = taolu.export(tmp_path, format="safetensors", model=build_fastcnn(1, (8, 8), 10))
    assert result.max_abs_diff <= 1e-4
    images, _ = load_digits()
    with pytest.raises(taolu.CheckpointError, match="model="):
        taolu.predict(result.path, [images[0]])
    mine = taolu.predict(result.path, [images[0]], model=build_fastcnn(1, (8, 8), 10))
    assert mine == taolu.predict(run_dir, [images[0]])


@pytest.mark.parametrize("name", list(FORMATS))
def test_predict_from_each_file_matches_the_checkpoint(exported, image_tree, reference, name):
    # TorchScript holds code: predict loads it only when told the file is trusted.
    trusted = name == "torchscript"
    results = taolu.predict(exported[name].path, [image_tree], topk=3, trust_code=trusted)
    assert [r["path"] for r in results] == [r["path"] for r in reference]
    for got, want in zip(results, reference, strict=True):
        assert ("error" in got) == ("error" in want)
        if "error" in want:
            continue
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
        for p, q in zip(got["predictions"], want["predictions"], strict=True):
            assert abs(p["probability"] - q["probability"]) <= 1e-4


def test_predict_refuses_an_onnx_file_taolu_did_not_write(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported["onnx"].path))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(model, str(foreign))
    with pytest.raises(taolu.CheckpointError, match="not exported by taolu"):
        taolu.predict(foreign, [np.zeros((8, 8), np.uint8)])


@pytest.mark.parametrize("source", ["run", "onnx"])
def test_cli_predict_csv_on_a_tree_with_a_corrupt_file(
    run_dir, exported, image_tree, reference, cli_main, source
):
    model = run_dir if source == "run" else exported["onnx"].path
    code, out, err = cli_main("predict", model, image_tree, "--csv", "--topk", "2")
    assert code == 1  # one input failed; the rest were classified
    assert "1 of 8 inputs could not be read" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "rank", "class", "probability", "error"]
    failed = [row for row in rows if row["error"]]
    assert [Path(row["path"]).name for row in failed] == ["broken.png"]
    assert failed[0]["rank"] == failed[0]["class"] == failed[0]["probability"] == ""
    good = [r for r in reference if "predictions" in r]
    assert len(good) == 7  # nested and doubly nested files included
    for result in good:
        mine = [row for row in rows if row["path"] == result["path"]]
        assert [row["rank"] for row in mine] == ["1", "2"]
        assert [row["class"] for row in mine] == [p["class"] for p in result["predictions"][:2]]
        for row, p in zip(mine, result["predictions"], strict=False):
            assert abs(float(row["probability"]) - p["probability"]) <= 1e-4


def test_taolu_export_is_the_function_even_after_its_module_is_imported(exported):
    import taolu.model_export as module

    assert taolu.export is module.export
    assert isinstance(Normalized(nn.Identity(), (0.5,), (0.5,)), nn.Module)
