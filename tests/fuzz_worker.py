"""The fuzz worker tests/test_fuzz.py runs in its own process: it makes a valid file of every
kind taolu reads from others, mutates it with hypothesis (truncate, flip and insert bytes,
inflate sizes, nest deeply, repeat one part by reference, recompress), feeds each case to its
reader, and records every case that ends in anything but success or taolu's own error.

    python tests/fuzz_worker.py RESULT.json --checkpoint BEST.pt --examples N --seed S

Memory is bounded with RLIMIT_AS (address space), set by the worker itself once every reader
has read its valid file: torch, onnxruntime and their thread pools map a few GB of address
space they never touch, so the limit is that measured peak plus a fixed headroom (HEADROOM,
1 GiB), not an absolute figure. RLIMIT_AS rather than RLIMIT_DATA because it also bounds
thread stacks and file mappings, so no allocation path escapes it. An allocation past the
limit fails (MemoryError, or torch's "can't allocate memory"), and such a case counts as a
failure even when taolu turned it into its own error: the file should have been refused
before it asked for that much. Each case has CASE_SECONDS of wall time (SIGALRM); the parent
process adds an overall timeout for anything stuck in native code.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import pickle
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

import taolu
from taolu.errors import TaoluError

HEADROOM = 1 << 30
CASE_SECONDS = 10
WORDS = ["", "fastcnn", "classes", "Resize", "Linear", "os:system", "../../../etc", "x.yaml"]
WORDS += ["model", "size", "std", "name", "args", "layers", "channels", "eval_transforms"]


class Hang(BaseException):
    """Raised by SIGALRM in a case that ran past CASE_SECONDS (a BaseException, so that no
    `except Exception` in the code under test can swallow it)."""


@dataclass
class Reader:
    """One reader of untrusted bytes: its valid files (name -> bytes), how to read a folder
    holding them, and the structured values a case may mutate instead of bytes."""

    files: dict[str, bytes]
    read: Callable[[Path], Any]
    tree: Callable[[], Any] | None = None  # a fresh copy of the parsed content
    write_tree: Callable[[Any], dict[str, bytes]] | None = None  # parsed content -> files
    bombs: tuple[dict[str, bytes], ...] = ()  # files that expand far beyond their size


# --------------------------------------------------------------------------- hostile values


def deep(depth: int) -> Any:
    value: Any = [1]
    for _ in range(depth):
        value = {"a": value}
    return value


def repeated(levels: int) -> Any:
    """2**levels values, named by reference: a few bytes in a pickle, JSON-free, YAML aliases."""
    value: Any = ["x"]
    for _ in range(levels):
        value = [value, value]
    return value


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 3, 4097, 30000, 2**31, 2**63 - 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
HOSTILE = st.one_of(
    st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=4),
        ),
        max_leaves=8,
    ),
    st.builds(deep, st.integers(60, 3000)),
    st.builds(repeated, st.integers(24, 60)),
)
TENSORS = st.builds(
    lambda shape, kind: torch.zeros(shape, dtype=kind),
    st.lists(st.integers(0, 5), max_size=3),
    st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.bool]),
)


def places(tree: Any, limit: int = 400) -> list[tuple[Any, Any]]:
    """(container, key) of values inside `tree`, breadth first, at most `limit`."""
    found, pending = [], [tree]
    while pending and len(found) < limit:
        node = pending.pop(0)
        if not isinstance(node, (dict, list)):
            continue
        for key, value in list(node.items() if isinstance(node, dict) else enumerate(node)):
            found.append((node, key))
            if isinstance(value, (dict, list)):
                pending.append(value)
    return found


def mutate_tree(draw: Callable, tree: Any, tensors: bool) -> Any:
    """`tree` with one to three values replaced, removed or wrapped deep inside lists."""
    for _ in range(draw(st.integers(1, 3))):
        spots = places(tree)
        if not spots:
            return draw(HOSTILE)
        node, key = draw(st.sampled_from(spots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap"]))
        if action == "delete":
            node.pop(key)
        elif action == "wrap":
            node[key] = [node[key]] * draw(st.integers(1, 3))
        else:
            node[key] = draw(HOSTILE | TENSORS) if tensors else draw(HOSTILE)
    return tree


def mutate_bytes(draw: Callable, data: bytes) -> bytes:
    """`data` truncated, with bytes flipped, overwritten or inserted, one to four times."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            return bytes(data)
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "zeros"]))
        if action == "truncate":
            del data[at:]
        elif action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "overwrite":
            piece = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(piece)] = piece
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]))
    return bytes(data)


def recompress(data: bytes, bomb: int) -> bytes:
    """A zip archive with its entries deflated, plus `bomb` zero bytes in one more."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as archive, zipfile.ZipFile(out, "w") as target:
        for name in archive.namelist():
            target.writestr(name, archive.read(name), compress_type=zipfile.ZIP_DEFLATED)
        if bomb:
            prefix = archive.namelist()[0].split("/")[0]
            target.writestr(f"{prefix}/data/bomb", bytes(bomb), zipfile.ZIP_DEFLATED)
    return out.getvalue()


# --------------------------------------------------------------------------- readers


def classify_one(source: Path, **options: Any) -> None:
    from taolu.classifier import load_classifier
    from taolu.inference import classify_with

    classifier = load_classifier(source, device=torch.device("cpu"), **options)
    classify_with(classifier, [np.full((8, 8), 128, np.uint8)], topk=3, batch_size=4, threads=1)


def deep_call(write: Callable, *args: Any) -> Any:
    """`write(*args)` with the recursion limit raised: crafted files nest thousands deep."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        return write(*args)
    finally:
        sys.setrecursionlimit(limit)


def torch_bytes(value: Any) -> bytes:
    """`value` as torch.save writes it."""
    buffer = io.BytesIO()
    deep_call(torch.save, value, buffer)
    return buffer.getvalue()


def checkpoint_bytes(state: dict) -> bytes:
    """A checkpoint as taolu saves it, with a valid digest where one can be computed (a
    crafted file can always carry one), else as an older taolu saved it, without."""
    from taolu import checkpoint as ckpt

    state = {key: value for key, value in state.items() if key != ckpt.DIGEST_KEY}
    if not too_big(state):
        state[ckpt.DIGEST_KEY] = ckpt.content_digest(state)
    return torch_bytes(state)


def too_big(tree: Any) -> bool:
    """Whether `tree` nests too deep or unfolds too far to walk (or write as JSON) here."""
    from taolu.torch_files import check_structure

    try:
        check_structure(tree, Path("case"), limit=1_000_000)
    except TaoluError:
        return True
    return False


def make_readers(folder: Path, best: Path) -> dict[str, Reader]:
    """Every reader, with valid files made in `folder` from the trained checkpoint `best`."""
    from safetensors.torch import save as save_safetensors
    from scipy.io import savemat

    from taolu import checkpoint as ckpt
    from taolu.data.csv_list import list_csv
    from taolu.data.decode import decode_file
    from taolu.data.disk_sets import load_disk_dataset
    from taolu.data.sources import read_manifest
    from taolu.models.nets import build_fastcnn
    from taolu.models.spec import build_from_spec, load_layer_spec
    from taolu.models.zoo import load_weights
    from taolu.run.transfer import head_name
    from taolu.train_options import build_train_config

    sys.path.insert(0, str(Path(__file__).parent))
    from test_disk_sets import (
        write_cifar10_root,
        write_mnist_root,
        write_stl10_root,
        write_svhn_root,
    )

    readers: dict[str, Reader] = {}
    state = ckpt.load_checkpoint(best)
    readers["checkpoint"] = Reader(
        files={"best.pt": best.read_bytes()},
        read=lambda root: (
            ckpt.read_state(root / "best.pt", resuming=True),
            classify_one(root / "best.pt"),
        ),
        tree=lambda: copy.deepcopy(state),
        write_tree=lambda tree: {"best.pt": checkpoint_bytes(tree)},
    )

    net = build_fastcnn(1, (8, 8), 10)
    weights = {key: value.clone() for key, value in net.state_dict().items()}

    def read_weights(root: Path) -> None:
        for name in ("weights.pth", "weights.safetensors"):
            model = build_fastcnn(1, (8, 8), 10)
            load_weights(model, str(root / name), "fastcnn", head=head_name(model))

    readers["weights"] = Reader(
        files={
            "weights.pth": torch_bytes({"state_dict": weights}),
            "weights.safetensors": save_safetensors(weights),
        },
        read=read_weights,
        tree=lambda: {"state_dict": {k: v.clone() for k, v in weights.items()}},
        write_tree=lambda tree: {
            "weights.pth": torch_bytes(tree),
            "weights.safetensors": save_safetensors(weights),
        },
    )

    for name in ("onnx", "torchscript", "safetensors"):
        path = taolu.export(best, format=name, out=folder / f"model{FORMATS[name]}").path
        readers[name] = export_reader(name, path)

    roots = {name: folder / name for name in ("mnist", "cifar10", "svhn", "stl10")}
    write_mnist_root(roots["mnist"], "MNIST")
    write_cifar10_root(roots["cifar10"])
    write_svhn_root(roots["svhn"])
    write_stl10_root(roots["stl10"])
    for name, root in roots.items():
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        readers[name] = Reader(files, read=lambda r, name=name: load_disk_dataset(name, r))
    zeros = io.BytesIO()
    savemat(zeros, {"X": np.zeros((32, 32, 3, 40000), np.uint8), "y": np.ones((40000, 1))}, True)
    readers["svhn"].bombs = ({"train_32x32.mat": zeros.getvalue()},)
    cifar_meta = "cifar-10-batches-py/batches.meta"
    readers["cifar10"].tree = lambda: pickle.loads(readers["cifar10"].files[cifar_meta])
    readers["cifar10"].write_tree = lambda tree: {cifar_meta: deep_call(pickle.dumps, tree, 2)}

    images = folder / "images"
    for label in ("ant", "bee"):
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 8), (40 * i, 90, 160)).save(images / label / f"{i}.png")
    manifest = {
        "base": str(images),
        "classes": ["ant", "bee"],
        "files": [
            {"path": f"{label}/{i}.png", "label": label, "split": "train" if i else "val"}
            for label in ("ant", "bee")
            for i in range(3)
        ],
    }
    readers["split.json"] = Reader(
        files={"split.json": json.dumps(manifest).encode()},
        read=lambda root: read_manifest(root / "split.json", images),
        tree=lambda: copy.deepcopy(manifest),
        write_tree=lambda tree: {"split.json": json_bytes(tree)},
    )
    rows = [f"{images}/{label}/{i}.png,{label}" for label in ("ant", "bee") for i in (0, 1)]
    readers["csv"] = Reader(
        files={"list.csv": ("path,label\n" + "\n".join(rows) + "\n").encode()},
        read=lambda root: list_csv(root / "list.csv", 0.5),
    )
    config = {"data": "digits", "epochs": 2, "lr": 0.1, "transforms": "", "model": "fastcnn"}
    readers["config"] = Reader(
        files={"config.yaml": yaml.safe_dump(config).encode()},
        read=lambda root: build_train_config(root / "config.yaml", {}, {}),
        tree=lambda: dict(config),
        write_tree=lambda tree: {"config.yaml": yaml_bytes(tree)},
    )
    layers = {"layers": [{"Conv2d": [4, 3]}, "ReLU", "Flatten", {"Linear": 16}, "Linear"]}
    readers["layer list"] = Reader(
        files={"net.yaml": yaml.safe_dump(layers).encode()},
        read=lambda root: build_from_spec(load_layer_spec(root / "net.yaml"), 1, (8, 8), 10),
        tree=lambda: copy.deepcopy(layers),
        write_tree=lambda tree: {"net.yaml": yaml_bytes(tree)},
    )
    picture = Image.new("RGB", (24, 16), (200, 30, 60))
    pictures = {}
    for suffix, kind in (("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF"), ("tif", "TIFF")):
        buffer = io.BytesIO()
        picture.save(buffer, kind)
        pictures[f"picture.{suffix}"] = buffer.getvalue()
    for suffix in ("bmp", "webp"):
        buffer = io.BytesIO()
        picture.save(buffer, suffix.upper())
        pictures[f"picture.{suffix}"] = buffer.getvalue()

    def decode_all(root: Path) -> None:
        for name in pictures:
            try:
                decode_file(root / name, 3, (16, 16), "squash")
            except TaoluError:
                pass  # one refused picture must not hide what the others do

    readers["image decode"] = Reader(files=pictures, read=decode_all, bombs=(huge_png(),))
    return readers


def huge_png() -> dict[str, bytes]:
    """A PNG whose header says 60000 x 60000 pixels (10.8 GB as RGB), in a few hundred bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC, recomputed
    return {"picture.png": bytes(data)}


def json_bytes(tree: Any) -> bytes:
    if too_big(tree):
        return b"{}"  # JSON cannot name a part twice, or nest that deep: no such file exists
    try:
        return deep_call(lambda value: json.dumps(value, default=str), tree).encode()
    except (ValueError, TypeError, RecursionError):
        return b"{}"


def yaml_bytes(tree: Any) -> bytes:
    """YAML as yaml.safe_dump writes it: parts named twice become anchors and aliases."""
    try:
        return deep_call(yaml.safe_dump, tree).encode()
    except (yaml.YAMLError, RecursionError):
        return b"{}"


FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}


def export_reader(name: str, path: Path) -> Reader:
    """An exported file; the structured part is its taolu metadata (str -> str)."""
    from taolu.export_format import METADATA_FILE

    data = path.read_bytes()
    file = path.name

    if name == "onnx":
        import onnx

        def metadata() -> dict:
            model = onnx.load_from_string(data)
            return {entry.key: entry.value for entry in model.metadata_props}

        def write(tree: Any) -> dict[str, bytes]:
            model = onnx.load_from_string(data)
            del model.metadata_props[:]
            for key, value in tree.items() if isinstance(tree, dict) else []:
                entry = model.metadata_props.add()
                entry.key, entry.value = str(key), as_text(value)
            return {file: model.SerializeToString()}

        return Reader({file: data}, lambda root: classify_one(root / file), metadata, write)

    if name == "torchscript":

        def metadata() -> dict:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entry = [n for n in archive.namelist() if n.endswith(METADATA_FILE)][0]
                return json.loads(archive.read(entry))

        def write(tree: Any) -> dict[str, bytes]:
            out = io.BytesIO()
            with zipfile.ZipFile(io.BytesIO(data)) as archive, zipfile.ZipFile(out, "w") as new:
                for entry in archive.infolist():
                    body = archive.read(entry)
                    if entry.filename.endswith(METADATA_FILE):
                        body = json_bytes(tree)
                    new.writestr(entry, body)
            return {file: out.getvalue()}

        def read(root: Path) -> None:
            try:  # untrusted: must be refused whatever the bytes are
                classify_one(root / file)
            except TaoluError:
                pass
            else:
                raise AssertionError("a TorchScript file loaded without trust_code")
            if metadata_only[0]:  # trusted: only cases that left its code alone
                classify_one(root / file, trust_code=True)

        return Reader({file: data}, read, metadata, write)

    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_size])

    def write(tree: Any) -> dict[str, bytes]:
        text = json_bytes(tree)
        return {file: struct.pack("<Q", len(text)) + text + data[8 + header_size :]}

    def whole() -> dict:
        return copy.deepcopy(header)

    return Reader({file: data}, lambda root: classify_one(root / file), whole, write)


metadata_only = [False]  # whether the current TorchScript case changed only its metadata


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json_bytes(value).decode()


# --------------------------------------------------------------------------- running cases


def on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"ran past {CASE_SECONDS} s")


def outcome(
    reader: Reader, files: dict[str, bytes], work: Path, tally: dict | None = None
) -> str | None:
    """None when the reader succeeded or refused the files with a TaoluError (counted in
    `tally`: "ok", "refused", and the first words of up to 12 different refusals); otherwise
    what went wrong, with its traceback."""
    tally = tally if tally is not None else {}
    shutil.rmtree(work, ignore_errors=True)
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        reader.read(work)
    except TaoluError as error:
        if "allocate" in str(error) or "MemoryError" in str(error):
            return f"needed memory past the limit, then refused: {error}"
        tally["refused"] = tally.get("refused", 0) + 1
        seen = tally.setdefault("refusals", [])
        words = str(error).replace(str(work), "")[:90]
        if words not in seen and len(seen) < 12:
            seen.append(words)
        return None
    except Hang as hang:
        return f"hang: {hang}\n{traceback.format_exc(limit=-8)}"
    except MemoryError:
        return f"memory past the limit\n{traceback.format_exc(limit=-8)}"
    except BaseException:  # noqa: BLE001 - anything else is exactly what the fuzz looks for
        return traceback.format_exc(limit=-12)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    tally["ok"] = tally.get("ok", 0) + 1
    return None


def fuzz(
    name: str, reader: Reader, examples: int, fixed_seed: int, work: Path, tally: dict
) -> list[dict]:
    """Up to `examples` mutated cases of one reader, counted in `tally`; every failure found
    (after hypothesis has shrunk it) as {"reader", "error"}."""
    failures: list[dict] = []
    recorded: dict[str, Any] = {}

    @seed(fixed_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(st.data())
    def case(data: st.DataObject) -> None:
        draw = data.draw
        files = dict(reader.files)
        kinds = ["bytes"] + (["tree", "tree"] if reader.tree else [])
        zipped = [n for n, b in files.items() if b[:4] == b"PK\x03\x04"]
        kinds += ["recompress"] if zipped else []
        kinds += ["gzip"] if name == "mnist" else []
        kinds += ["bomb"] if reader.bombs else []
        kind = draw(st.sampled_from(kinds), label="kind")
        metadata_only[0] = kind == "tree"
        if kind == "tree":
            tensors = name in ("checkpoint", "weights", "cifar10")
            files.update(reader.write_tree(mutate_tree(draw, reader.tree(), tensors)))
        elif kind == "bomb":
            files.update(draw(st.sampled_from(reader.bombs)))
        elif kind == "recompress":
            target = draw(st.sampled_from(zipped))
            files[target] = recompress(files[target], draw(st.sampled_from([0, 1 << 26])))
        elif kind == "gzip":  # a gzipped IDX of zeros, or of a valid file with sizes inflated
            target = draw(st.sampled_from(sorted(files)), label="file")
            body = files[target]
            if draw(st.booleans()):
                body = bytes(1 << 26)
            else:
                body = body[:4] + draw(st.binary(min_size=4, max_size=12)) + body[8:]
            files.pop(target)
            files[target + ".gz"] = gzip.compress(body, compresslevel=1)
        else:
            target = draw(st.sampled_from(sorted(files)), label="file")
            files[target] = mutate_bytes(draw, files[target])
        problem = outcome(reader, files, work, tally)
        if problem is not None:
            recorded["error"] = problem
            raise AssertionError(problem)

    try:
        case()
    except AssertionError as error:
        failures.append({"reader": name, "error": recorded.get("error", str(error))})
    except Exception as error:  # hypothesis itself: a case that failed once only, say
        seen = recorded.get("error", "")
        failures.append({"reader": name, "error": f"{type(error).__name__}: {error}\n{seen}"})
    return failures


def peak_address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--readers", default="", help="comma-separated; empty = all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, on_alarm)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        readers = make_readers(folder / "seeds", args.checkpoint)
        chosen = [n for n in args.readers.split(",") if n] or list(readers)
        report: dict[str, Any] = {"readers": chosen, "failures": [], "seconds": {}, "tally": {}}
        for name in chosen:  # every reader must read its valid files first
            problem = outcome(readers[name], readers[name].files, folder / "work")
            if problem is not None:
                report["failures"].append({"reader": name, "error": f"valid file: {problem}"})
        peak = peak_address_space()
        limit = peak + HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        report["address_space_limit"] = limit
        for name in chosen:
            started = time.perf_counter()
            print(f"fuzzing {name}", flush=True)
            tally = report["tally"][name] = {}
            found = fuzz(name, readers[name], args.examples, args.seed, folder / "w", tally)
            report["failures"] += found
            report["seconds"][name] = round(time.perf_counter() - started, 2)
    args.result.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
