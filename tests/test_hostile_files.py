"""Hostile files: a shared run directory, checkpoint, export or data set must never run code,
touch files outside its place, or exhaust the machine (issue 12).

Each test builds the hostile file the way an attacker would, from a real run of this test
session, and shows the refusal: a taolu error from Python, or exit code 2 with a one-line
message and no traceback from the CLI. Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import taolu
from taolu import checkpoint as ckpt
from taolu.data.disk_formats import read_idx
from taolu.errors import CheckpointError, ConfigError, DataError
from taolu.export_format import EXPORT_FORMAT

DROP = object()  # stands for "remove this field" in `rewrite`
SPEC = {"layers": ["Flatten", {"Linear": 32}, "ReLU", {"Linear": "classes"}]}


def rewrite(source: Path, target: Path, **fields) -> Path:
    """A copy of the checkpoint `source` with `fields` replaced (DROP removes one), saved as
    taolu saves, with a valid digest: what a crafted shared checkpoint looks like."""
    state = ckpt.load_checkpoint(source)
    for key in ("format", "version"):
        state.pop(key)
    for key, value in fields.items():
        if value is DROP:
            state.pop(key, None)
        else:
            state[key] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_checkpoint(state, target)
    return target


def refused(code: int, err: str, *words: str) -> None:
    """The CLI's refusal: exit code 2 and one line naming the cause, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("taolu: error: "), err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "digit.png"
    Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1))).save(path)
    return path


@pytest.fixture
def shared_run(digits_run, tmp_path) -> Path:
    """A copy of a finished run, as received from someone else."""
    return Path(shutil.copytree(digits_run.run_dir, tmp_path / "shared"))


# --------------------------------------------------------------------------- 1. resume


@pytest.mark.slow
def test_resume_never_imports_a_factory_the_checkpoint_names(shared_run, run_cli):
    last = shared_run / "weights" / "last.pt"
    state = ckpt.load_checkpoint(last)
    rewrite(
        last,
        last,
        config={**state["config"], "model": "payload:build"},
        model_name="payload:build",
    )
    # A module inside the run directory: `python -m taolu` run from there could import it.
    (shared_run / "payload.py").write_text(
        "import pathlib\n"
        "pathlib.Path('IMPORTED').write_text('the checkpoint ran code')\n"
        "from taolu.models.nets import BUILTIN_MODELS\n"
        "def build(channels, classes, size):\n"
        "    return BUILTIN_MODELS['fastcnn'](channels, tuple(size), classes)\n"
    )
    result = run_cli(["train", "--resume", shared_run, "--epochs", "3"], shared_run)
    refused(result.returncode, result.stderr, "payload:build", "--model payload:build")
    assert not (shared_run / "IMPORTED").exists()

    # Named again by the user, it is theirs to run: the run resumes with it.
    result = run_cli(
        ["train", "--resume", shared_run, "--epochs", "3", "--model", "payload:build"],
        shared_run,
        {"PYTHONPATH": str(shared_run)},
    )
    assert result.returncode == 0, result.stderr
    assert (shared_run / "IMPORTED").exists()
    assert ckpt.load_checkpoint(last)["epoch"] == 3


def test_resume_refuses_a_layer_list_the_checkpoint_only_names(shared_run, tmp_path):
    last = shared_run / "weights" / "last.pt"
    state = ckpt.load_checkpoint(last)
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    rewrite(last, last, config={**state["config"], "model": str(spec)}, model_spec=DROP)
    with pytest.raises(ConfigError, match="names but does not hold"):
        taolu.train(resume=shared_run, epochs=3, verbose=False, progress=False)


# --------------------------------------------------------------------------- 2. TorchScript


@pytest.fixture(scope="module")
def scripted(digits_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scripted") / "model.torchscript.pt"
    return taolu.export(digits_run.run_dir, format="torchscript", out=out).path


def test_torchscript_loads_only_by_name_and_with_trust_code(scripted, digit_png, cli_main):
    code, out, err = cli_main("predict", scripted, digit_png)
    refused(code, err, "TorchScript", "--trust-code")
    assert out == ""
    code, out, err = cli_main("predict", scripted, digit_png, "--trust-code")
    assert code == 0 and "digit.png:" in out, err
    with pytest.raises(CheckpointError, match="trust_code=True"):
        taolu.predict(scripted, [digit_png])
    assert taolu.predict(scripted, [digit_png], trust_code=True)[0]["predictions"]


def test_a_torchscript_export_must_carry_its_name(digits_run, tmp_path, cli_main):
    code, _, err = cli_main(
        "export", digits_run.run_dir, "--format", "torchscript", "--out", tmp_path / "model.pt"
    )
    refused(code, err, "*.torchscript.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("name", ["best.pt", "model.pt", "weights.pth"])
def test_torchscript_under_another_name_is_never_loaded(scripted, digit_png, cli_main, name):
    disguised = scripted.parent / name
    shutil.copyfile(scripted, disguised)
    code, out, err = cli_main("predict", disguised, digit_png, "--trust-code")
    refused(code, err, "TorchScript archive", "*.torchscript.pt")
    code, out, err = cli_main("eval", disguised)
    refused(code, err, "TorchScript archive")
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        taolu.train(data="digits", weights=str(disguised), epochs=1, verbose=False)


# --------------------------------------------------------------------------- 3. quarantine


def test_quarantine_never_moves_a_file_through_a_linked_folder(tmp_path, cli_main):
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    thesis = home / "docs" / "thesis.docx"
    thesis.write_bytes(b"PK\x03\x04 years of work")
    root = tmp_path / "data"
    for label in ("ant", "bee"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / label / f"{i}.png")
    (root / "docs").symlink_to(home / "docs", target_is_directory=True)
    listing = root / "list.csv"
    rows = [f"{label}/{i}.png,{label}" for label in ("ant", "bee") for i in range(3)]
    listing.write_text("path,label\n" + "\n".join(rows) + "\ndocs/thesis.docx,ant\n")
    quarantine = tmp_path / "quarantine"
    code, _, err = cli_main("data", "check", listing, "--quarantine", quarantine)
    assert code == 2, err
    assert "not inside the data root" in err and "Nothing was moved" in err
    assert thesis.read_bytes() == b"PK\x03\x04 years of work"
    assert not quarantine.exists() or not any(quarantine.rglob("*"))


# --------------------------------------------------------------------------- 4. layer lists


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory, quiet) -> tuple[Path, Path]:
    """(run directory, its YAML layer list) of a 1-epoch layer-list run on digits."""
    folder = tmp_path_factory.mktemp("spec_run")
    spec = folder / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run = taolu.train(data="digits", model=str(spec), epochs=1, out=str(folder), **quiet)
    return run.run_dir, spec


def test_a_layer_list_run_keeps_its_list_not_its_path(spec_run, digit_png, tmp_path):
    run_dir, spec = spec_run
    state = ckpt.load_checkpoint(run_dir / "weights" / "best.pt")
    assert state["model_spec"] == SPEC["layers"]
    before = taolu.predict(run_dir, [digit_png])
    exported = taolu.export(run_dir, format="safetensors", out=tmp_path / "net.safetensors")
    original = spec.read_text()
    try:
        # Edited: a different network under the same name. Then gone altogether.
        spec.write_text(yaml.safe_dump({"layers": ["Flatten", {"Linear": "classes"}]}))
        assert taolu.predict(run_dir, [digit_png]) == before
        spec.unlink()
        assert taolu.predict(run_dir, [digit_png]) == before
        from_export = taolu.predict(exported.path, [digit_png])[0]["predictions"]
        assert [p["class"] for p in from_export] == [p["class"] for p in before[0]["predictions"]]
    finally:
        spec.write_text(original)


def test_a_layer_list_run_resumes_after_its_yaml_is_gone(spec_run, tmp_path, quiet):
    run_dir = Path(shutil.copytree(spec_run[0], tmp_path / "copy"))
    moved = tmp_path / "elsewhere.yaml"
    spec = spec_run[1]
    shutil.copyfile(spec, moved)
    spec.unlink()
    try:
        result = taolu.train(resume=run_dir, epochs=2, **quiet)
    finally:
        shutil.copyfile(moved, spec)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_a_file_naming_a_local_yaml_is_refused_without_reading_it(spec_run, tmp_path):
    run_dir, _ = spec_run
    secret = tmp_path / "secret.yaml"
    secret.write_text("api_key: hunter2\n")
    crafted = rewrite(
        run_dir / "weights" / "best.pt",
        tmp_path / "crafted.pt",
        model_name=str(secret),
        model_spec=DROP,
    )
    with pytest.raises(CheckpointError, match="train again") as caught:
        taolu.predict(crafted, [np.zeros((8, 8), np.uint8)])
    assert "hunter2" not in str(caught.value) and "api_key" not in str(caught.value)

    from safetensors.torch import load_file, save_file

    exported = taolu.export(run_dir, format="safetensors", out=tmp_path / "net.safetensors")
    from safetensors import safe_open

    with safe_open(str(exported.path), framework="pt") as handle:
        metadata = handle.metadata()
    metadata.update(model_name=str(secret), model_spec="null")
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(exported.path)), str(forged), metadata=metadata)
    with pytest.raises(CheckpointError, match="train again") as caught:
        taolu.predict(forged, [np.zeros((8, 8), np.uint8)])
    assert "hunter2" not in str(caught.value) and "api_key" not in str(caught.value)


# --------------------------------------------------------------------------- 5. zip bombs


def recompressed(source: Path, target: Path, bomb: int = 0) -> Path:
    """`source`'s archive with every entry deflated, plus `bomb` zero bytes in one more."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        prefix = archive.namelist()[0].split("/")[0]
        for name in archive.namelist():
            out.writestr(name, archive.read(name), compress_type=zipfile.ZIP_DEFLATED)
        if bomb:
            out.writestr(f"{prefix}/data/999", bytes(bomb), compress_type=zipfile.ZIP_DEFLATED)
    return target


def test_a_compressed_checkpoint_is_refused_before_torch_reads_it(digits_run, tmp_path):
    best = digits_run.run_dir / "weights" / "best.pt"
    bomb = recompressed(best, tmp_path / "best.pt", bomb=64 << 20)
    assert bomb.stat().st_size < 2 << 20  # 64 MB of zeros in well under 2 MB
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="compressed.*zip bomb"):
            ckpt.load_checkpoint(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        taolu.train(data="digits", weights=str(bomb), epochs=1, verbose=False, progress=False)


# --------------------------------------------------------------------------- 6. IDX


def test_a_gzipped_idx_of_zeros_is_refused_by_its_header_alone(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write(bytes(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="magic number is 00000000"):
            read_idx(path, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the old reader held all 64 MB before looking


def test_idx_sizes_that_overflow_or_overpromise_are_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3 + bytes(100))
    with pytest.raises(DataError, match="beyond 4096 pixels"):
        read_idx(path, 3)
    path.write_bytes(b"\x00\x00\x08\x03" + (2**32 - 1).to_bytes(4, "big") + b"\x00\x00\x00\x1c" * 2)
    with pytest.raises(DataError, match="promises"):
        read_idx(path, 3)
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x01\x02" + b"extra")
    with pytest.raises(DataError, match="or more bytes"):
        read_idx(path, 1)


# --------------------------------------------------------------------------- 7. preprocessing


def preprocessing_of(run: Path, **changes) -> dict:
    stored = dict(ckpt.load_checkpoint(run / "weights" / "best.pt")["preprocessing"])
    stored.update(changes)
    return stored


HOSTILE_PREPROCESSING = {
    "giant-resize": (
        {"eval_transforms": [{"name": "Resize", "args": {"size": 30000}}]},
        "beyond 4096 pixels",
    ),
    "zero-std": ({"std": [0.0]}, "std must be > 0"),
    "nan-mean": ({"mean": [float("nan")]}, "finite"),
    "unknown-mode": ({"resize_mode": "sideways"}, "resize_mode 'sideways'"),
    "four-channels": ({"channels": 4}, "channels must be 1 or 3"),
    "giant-size": ({"size": [100000, 100000]}, "size must be two whole numbers"),
    "random-eval": (
        {"eval_transforms": [{"name": "RandomRotation", "args": {"degrees": 9}}]},
        "random",
    ),
    "not-allowed": ({"eval_transforms": [{"name": "Lambda", "args": {}}]}, "unknown transform"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PREPROCESSING))
def test_stored_preprocessing_is_checked_on_load(digits_run, tmp_path, case):
    changes, message = HOSTILE_PREPROCESSING[case]
    crafted = rewrite(
        digits_run.run_dir / "weights" / "best.pt",
        tmp_path / "best.pt",
        preprocessing=preprocessing_of(digits_run.run_dir, **changes),
    )
    with pytest.raises(CheckpointError, match=message):
        taolu.predict(crafted, [np.zeros((8, 8), np.uint8)])


def test_empty_preprocessing_is_a_message_not_a_key_error(
    digits_run, tmp_path, digit_png, cli_main
):
    crafted = rewrite(
        digits_run.run_dir / "weights" / "best.pt", tmp_path / "x.pt", preprocessing={}
    )
    code, out, err = cli_main("predict", crafted, digit_png)
    refused(code, err, "stored preprocessing: missing channels")
    code, out, err = cli_main("eval", crafted)
    refused(code, err, "stored preprocessing")


def test_export_metadata_with_a_zero_std_is_refused(digits_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    exported = taolu.export(
        digits_run.run_dir, format="safetensors", out=tmp_path / "m.safetensors"
    )
    with safe_open(str(exported.path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == EXPORT_FORMAT
    metadata["preprocessing"] = json.dumps({**json.loads(metadata["preprocessing"]), "std": [0]})
    save_file(load_file(str(exported.path)), str(exported.path), metadata=metadata)
    with pytest.raises(CheckpointError, match="every std must be > 0"):
        taolu.predict(exported.path, [np.zeros((8, 8), np.uint8)])


def test_transforms_option_has_the_same_bounds():
    with pytest.raises(ConfigError, match="beyond 4096 pixels"):
        taolu.train(data="digits", transforms=[{"name": "Resize", "args": {"size": 30000}}])
    with pytest.raises(ConfigError, match="image_size"):
        taolu.train(data="digits", image_size=30000)
    for text in ("[unclosed", "[" * 5000):  # a YAML error, and nesting past Python's stack
        with pytest.raises(ConfigError, match="option 'transforms'"):
            taolu.train(data="digits", transforms=text)


# --------------------------------------------------------------------------- 9. export --out


def test_export_never_replaces_a_checkpoint(shared_run, tmp_path, cli_main):
    last = shared_run / "weights" / "last.pt"
    before = last.read_bytes()
    code, _, err = cli_main("export", shared_run, "--format", "onnx", "--out", last)
    refused(code, err, "weights/ folder")
    assert last.read_bytes() == before
    elsewhere = tmp_path / "kept.pt"
    shutil.copyfile(last, elsewhere)
    code, _, err = cli_main("export", shared_run, "--format", "safetensors", "--out", elsewhere)
    refused(code, err, "is a taolu checkpoint")
    assert elsewhere.read_bytes() == before
    new_file = shared_run / "weights" / "model.onnx"
    code, _, err = cli_main("export", shared_run, "--format", "onnx", "--out", new_file)
    refused(code, err, "weights/ folder")
    assert not new_file.exists()
    assert taolu.train(resume=shared_run, epochs=3, verbose=False, progress=False, report=False)


# --------------------------------------------------------------------------- 10. no tracebacks


def test_a_checkpoint_nested_thousands_deep_is_refused(digits_run, tmp_path, cli_main, digit_png):
    state = ckpt.load_checkpoint(digits_run.run_dir / "weights" / "best.pt")
    deep: dict = {}
    inner = deep
    for _ in range(3000):
        inner["a"] = {}
        inner = inner["a"]
    state["history"] = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # torch.save recurses; a crafted file is written by anyone
    try:
        torch.save(state, tmp_path / "deep.pt")  # no digest: older checkpoints have none
    finally:
        sys.setrecursionlimit(limit)
    code, _, err = cli_main("predict", tmp_path / "deep.pt", digit_png)
    refused(code, err, "nested more than 64 levels")


def test_a_checkpoint_that_unfolds_into_billions_is_refused(digits_run, tmp_path):
    best = digits_run.run_dir / "weights" / "best.pt"
    state = ckpt.load_checkpoint(best)
    laughs: list = [0.5]
    for _ in range(40):  # 2**40 values, named by reference: the file hardly grows
        laughs = [laughs, laughs]
    state["history"] = laughs
    torch.save(state, tmp_path / "laughs.pt")
    assert (tmp_path / "laughs.pt").stat().st_size < best.stat().st_size + 4096
    with pytest.raises(CheckpointError, match="unfold into more than"):
        ckpt.load_checkpoint(tmp_path / "laughs.pt")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_name": ["fastcnn"]}, "field 'model_name' is not str | None (it is a list"),
        ({"config": {}}, "saved config lacks data, val_fraction"),
        ({"classes": "ab"}, "field 'classes' is not list[str] (it is a str"),
        ({"classes": ["a", 2]}, "field 'classes' is not list[str]"),
        ({"classes": []}, "it names no classes"),
        ({"epoch": "1"}, "field 'epoch' is not int (it is a str: '1')"),
        ({"model": {"w": [1, 2]}}, "field 'model' is not dict[str, torch.Tensor]"),
        ({"model_spec": "net.yaml"}, "field 'model_spec' is not list[Any] | None"),
        ({"classes": DROP}, "missing classes"),
    ],
)
def test_checkpoint_fields_are_type_checked(digits_run, tmp_path, cli_main, fields, message):
    crafted = rewrite(digits_run.run_dir / "weights" / "best.pt", tmp_path / "best.pt", **fields)
    code, _, err = cli_main("eval", crafted)
    refused(code, err, message)


def test_a_saved_option_of_the_wrong_type_is_refused(digits_run, tmp_path, cli_main):
    best = digits_run.run_dir / "weights" / "best.pt"
    config = ckpt.load_checkpoint(best)["config"]
    crafted = rewrite(best, tmp_path / "best.pt", config={**config, "label_smoothing": "0.1"})
    code, _, err = cli_main("eval", crafted)
    refused(code, err, "saved option 'label_smoothing' is not float (it is a str: '0.1')")


def test_a_resumed_checkpoint_needs_its_training_state(shared_run):
    last = shared_run / "weights" / "last.pt"
    kept = ckpt.load_checkpoint(last)["optimizer"]
    rewrite(last, last, optimizer=DROP)
    with pytest.raises(CheckpointError, match="missing optimizer"):
        taolu.train(resume=shared_run, epochs=3, verbose=False, progress=False)
    rewrite(last, last, optimizer=kept, rng={})  # the right type, but nothing in it
    with pytest.raises(CheckpointError, match="cannot be resumed: its training state is damaged"):
        taolu.train(resume=shared_run, epochs=3, verbose=False, progress=False)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("os:system", "calling os:system() failed: TypeError"),
        ("json:loads", "calling json:loads() failed"),
        ("math:pi", "not a function taolu can call"),
        ("no_such_module_here:build", "cannot load no_such_module_here:build"),
    ],
)
def test_factory_failures_are_config_errors(cli_main, tmp_path, model, message):
    code, _, err = cli_main(
        "train", "--data", "digits", "--epochs", "1", "--out", tmp_path, "--set", f"model={model}"
    )
    refused(code, err, message)


class Untouched(torch.utils.data.Dataset):
    """A Dataset that fails the test if taolu reads a single sample from it."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int):
        raise AssertionError("the data was read before the run directory was checked")


def train_into(out: Path, name: str = "") -> None:
    taolu.train(data=Untouched(), classes=["a", "b"], out=str(out), name=name, epochs=1)


def test_an_out_or_name_that_cannot_be_a_new_run_is_refused_before_the_data_is_read(
    tmp_path, digits_run
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match="option 'out'.*cannot hold runs"):
        train_into(a_file)
    with pytest.raises(ConfigError, match="its folder .*notes.txt is a file"):
        train_into(a_file / "runs")
    with pytest.raises(ConfigError, match="notes.txt is a file, not a new folder"):
        train_into(tmp_path, "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="already exists and is not a taolu run .it is empty"):
        train_into(tmp_path, "empty")
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train_into(digits_run.run_dir.parent, digits_run.run_dir.name)
    assert a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]
    assert not any((tmp_path / "empty").iterdir())


def test_runs_started_together_never_share_a_directory(tmp_path):
    """Each run directory is made by one mkdir that fails if it exists: 16 runs choosing a
    name at the same moment get 16 folders, and a second run of the same --name is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from taolu.layout import new_run_dir

    (tmp_path / "train2").mkdir()  # left empty by someone: skipped, never reused
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: new_run_dir(str(tmp_path), ""), range(16)))
    assert len(set(made)) == 16 and tmp_path / "train2" not in made
    assert all(path.is_dir() and not any(path.iterdir()) for path in made)
    with ThreadPoolExecutor(2) as pool:
        tries = [pool.submit(new_run_dir, str(tmp_path), "same") for _ in range(2)]
    outcomes = [future.exception() for future in tries]
    assert sum(error is None for error in outcomes) == 1
    assert any(isinstance(error, ConfigError) for error in outcomes)
