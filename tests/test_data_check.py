"""The data doctor: every kind of bad, odd, duplicated or leaked file is reported with its path,
training's refusals are predicted, nothing is changed, and quarantine moves only bad files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from taolu.data.check import check_data, inspect_image
from taolu.data.check_report import BAD_CATEGORIES, CATEGORIES
from taolu.data.quarantine import quarantine
from taolu.errors import ConfigError, DataError

# --------------------------------------------------------------------------- fixture files


def noise(path: Path, size=(16, 16), seed: int = 0, mode: str = "RGB", **save) -> Path:
    """A distinct random image (distinct bytes, so no accidental duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, **save)
    return path


def jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise_image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise_image).save(buffer, "JPEG")
    return buffer.getvalue()


def write_corrupt_jpeg(path: Path) -> Path:
    """Valid JPEG headers up to the scan, then garbage, then the end marker."""
    data = jpeg_bytes()
    scan = data.index(b"\xff\xda") + 12
    garbage = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    path.write_bytes(data[:scan] + garbage + b"\xff\xd9")
    return path


def write_truncated_png(path: Path) -> Path:
    data = noise(path, size=(32, 32), seed=2).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims `width` x `height`, with a correct header checksum."""
    data = bytearray(noise(path, size=(4, 4), seed=3).read_bytes())
    header = data.index(b"IHDR")
    data[header + 4 : header + 12] = struct.pack(">II", width, height)
    checksum = zlib.crc32(bytes(data[header : header + 17]))
    data[header + 17 : header + 21] = struct.pack(">I", checksum)
    path.write_bytes(bytes(data))
    return path


def write_odd_images(folder: Path) -> dict[str, Path]:
    """One file of each odd-but-readable kind, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "cmyk": folder / "cmyk.jpg",
        "gray16": folder / "gray16.png",
        "rgba": noise(folder / "rgba.png", mode="RGBA", seed=4),
        "palette": folder / "palette.gif",
        "rotated": folder / "rotated.jpg",
        "animated": folder / "animated.gif",
    }
    Image.new("CMYK", (16, 16), (10, 200, 30, 0)).save(paths["cmyk"])
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(ramp).save(paths["gray16"])
    Image.new("P", (16, 16), 3).save(paths["palette"], transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    noise(paths["rotated"], size=(16, 24), seed=5, exif=exif)
    frames = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(paths["animated"], save_all=True, append_images=frames[1:])
    return paths


def write_bad_images(folder: Path) -> dict[str, Path]:
    """One unreadable file of each kind, by its expected category."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is a text file, not a picture\n")
    return {
        "corrupt": write_corrupt_jpeg(folder / "corrupt.jpg"),
        "truncated": write_truncated_png(folder / "truncated.png"),
        "zero_byte": folder / "zero.jpg",
        "not_an_image": folder / "text.jpg",
        "too_large": write_bomb_png(folder / "bomb.png"),
    }


@pytest.fixture
def zoo(tmp_path: Path) -> dict:
    """A train/val folder with every problem the doctor knows, and the paths by role."""
    root = tmp_path / "zoo"
    train, val = root / "train", root / "val"
    paths: dict = {"root": root, "outside": noise(tmp_path / "elsewhere" / "secret.png")}
    for index in range(10):
        noise(train / "ant" / f"ant{index}.png", seed=100 + index)
        noise(train / "bee" / f"bee{index}.png", seed=200 + index)
    for index in range(3):
        noise(train / "cat" / f"cat{index}.png", seed=300 + index)  # no val/cat folder
        noise(val / "ant" / f"ant{index}.png", seed=400 + index)
        noise(val / "bee" / f"bee{index}.png", seed=500 + index)
    (train / "empty").mkdir()
    (val / "empty").mkdir()
    noise(val / "stray" / "stray.png", seed=600)  # a val class training does not have
    paths["bad"] = write_bad_images(train / "ant")
    paths["odd"] = write_odd_images(train / "bee")
    paths["tiny"] = noise(train / "ant" / "tiny.png", size=(1, 1), seed=7)
    paths["thin"] = noise(train / "ant" / "thin.png", size=(1, 10_000), seed=8)
    paths["unicode"] = noise(train / "bee" / "蚂蚁_1.png", seed=9)
    paths["notes"] = train / "ant" / "notes.txt"
    paths["notes"].write_text("labelled by hand\n")
    paths["copy"] = train / "bee" / "bee0_copy.png"
    paths["copy"].write_bytes((train / "bee" / "bee0.png").read_bytes())
    paths["leak"] = val / "bee" / "leaked.png"
    paths["leak"].write_bytes((train / "ant" / "ant3.png").read_bytes())
    paths["loop"] = (train / "ant" / "loop_a", train / "ant" / "loop_b")
    os.symlink("loop_b", paths["loop"][0])
    os.symlink("loop_a", paths["loop"][1])
    paths["link_out"] = train / "ant" / "outside.png"
    os.symlink(paths["outside"], paths["link_out"])
    paths["fifo"] = train / "bee" / "x.jpg"
    os.mkfifo(paths["fifo"])
    return paths


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under `root`, links not followed: files by sha256, size and mtime;
    symlinks by target; FIFOs and folders by kind."""
    state = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                state[key] = ("link", os.readlink(path))
            elif stat.S_ISFIFO(info.st_mode):
                state[key] = ("fifo",)
            elif stat.S_ISDIR(info.st_mode):
                state[key] = ("folder",)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[key] = ("file", digest, info.st_size, info.st_mtime_ns)
    return state


def check_within(seconds: float, spec, **options):
    """check_data on a thread, failed if it has not finished in `seconds` (a FIFO opened for
    reading would block it forever)."""
    result: dict = {}

    def run():
        try:
            result["report"] = check_data(str(spec), **options)
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the check of {spec} did not finish in {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["report"]


def listed(report, category: str) -> set[str]:
    return {path for path, _ in report.problems[category]}


def names(report, category: str) -> set[str]:
    return {Path(path).name for path, _ in report.problems[category]}


def two_classes(root: Path, per_class: int, bad_per_class: list[int]) -> Path:
    """root/<a, b>/ with `per_class` good PNGs each plus bad_per_class[i] zero-byte files."""
    for label, (name, bad) in enumerate(zip(("a", "b"), bad_per_class, strict=True)):
        for index in range(per_class):
            noise(root / name / f"good{index}.png", seed=1000 * label + index)
        for index in range(bad):
            (root / name / f"bad{index}.jpg").write_bytes(b"")
    return root


# --------------------------------------------------------------------------- one file


@pytest.mark.parametrize("category", ["corrupt", "truncated", "zero_byte", "not_an_image"])
def test_inspect_image_names_what_is_wrong_with_an_unreadable_file(tmp_path, category):
    path = write_bad_images(tmp_path)[category]
    facts = inspect_image(path)
    assert facts.problem == category, facts.detail


def test_a_jpeg_with_a_broken_header_is_corrupt_not_some_other_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(jpeg_bytes()[:20] + b"\x00" * 300)  # Pillow cannot identify it
    facts = inspect_image(path)
    assert (facts.problem, facts.detail) == (
        "corrupt",
        "starts like a JPEG file, but its header is broken",
    )


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    path = write_bomb_png(tmp_path / "bomb.png")
    facts = inspect_image(path)
    assert facts.problem == "too_large"


def test_an_image_pillow_only_warns_about_is_refused_too(tmp_path):
    # Between 1x and 2x its limit Pillow only warns; decoding would take 100 megapixels.
    root = two_classes(tmp_path / "data", 9, [0, 0])
    big = write_bomb_png(root / "a" / "big.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # refused by the doctor's own check, not the warning
        assert inspect_image(big).problem == "too_large"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check_data(str(root))
    assert listed(report, "too_large") == {str(big)}
    assert caught == []  # reported, not printed as a warning


def test_inspect_image_reads_mode_size_and_orientation_of_odd_files(tmp_path):
    odd = write_odd_images(tmp_path)
    facts = {name: inspect_image(path) for name, path in odd.items()}
    assert all(item.problem is None for item in facts.values())
    assert facts["cmyk"].mode == "CMYK"
    assert facts["gray16"].mode.startswith("I")
    assert facts["rgba"].mode == "RGBA"
    assert facts["palette"].mode == "P" and facts["palette"].transparency
    assert facts["rotated"].orientation == 6
    assert (facts["rotated"].width, facts["rotated"].height) == (24, 16)  # upright
    assert facts["animated"].format == "GIF"


def test_a_folder_named_like_an_image_is_unreadable_not_a_crash(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    facts = inspect_image(tmp_path / "x.jpg")
    assert facts.problem == "unreadable"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_a_file_without_read_permission_is_unreadable(tmp_path):
    path = two_classes(tmp_path / "data", 9, [0, 0]) / "a" / "good0.png"
    path.chmod(0)
    try:
        report = check_data(str(tmp_path / "data"))
    finally:
        path.chmod(0o644)
    assert listed(report, "unreadable") == {str(path)}


def test_a_fifo_is_never_opened_even_when_asked_directly(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    result = {}
    thread = threading.Thread(target=lambda: result.update(facts=inspect_image(tmp_path / "x.jpg")))
    thread.daemon = True
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "inspect_image blocked on a FIFO"
    assert result["facts"].problem == "unreadable"


# --------------------------------------------------------------------------- a whole folder


def test_every_problem_in_the_zoo_is_listed_with_its_path(zoo):
    report = check_within(60, zoo["root"])
    for category, path in zoo["bad"].items():
        assert listed(report, category) == {str(path)}, category
    assert set(report.bad_files) == set(zoo["bad"].values())
    assert names(report, "too_small") == {"tiny.png", "thin.png"}
    assert names(report, "odd_mode") == {
        "cmyk.jpg",
        "gray16.png",
        "rgba.png",
        "palette.gif",
        "animated.gif",
    }  # GIFs are palette images
    assert names(report, "exif_rotated") == {"rotated.jpg"}
    assert listed(report, "duplicate_within_split") == {str(zoo["copy"])}
    assert listed(report, "duplicate_across_splits") == {str(zoo["leak"])}
    assert listed(report, "other_files") == {str(zoo["notes"])}
    root = zoo["root"]
    assert listed(report, "class_missing") == {str(root / "val" / "cat")}
    assert listed(report, "class_empty") == {
        str(root / "train" / "empty"),
        str(root / "val" / "empty"),
    }
    assert listed(report, "class_not_in_train") == {str(root / "val" / "stray")}
    passed_over = listed(report, "passed_over")
    assert {str(zoo["fifo"]), str(zoo["link_out"]), *map(str, zoo["loop"])} <= passed_over
    assert not any(str(zoo["outside"]) == path for path, _ in report.problems["passed_over"])


def test_the_zoo_counts_readable_images_per_class_and_split(zoo):
    report = check_within(60, zoo["root"])
    assert report.classes == ["ant", "bee", "cat", "empty"]
    # ant: 10 good + tiny + thin; bee: 10 + copy + unicode + 6 odd (the FIFO is not counted)
    assert report.counts["train"] == {"ant": 12, "bee": 18, "cat": 3, "empty": 0}
    assert report.counts["val"] == {"ant": 3, "bee": 4, "cat": 0, "empty": 0}
    assert report.image_files == 12 + 5 + 18 + 3 + 7
    assert report.imbalance_ratio is None  # an empty class: no finite ratio
    sizes = report.sizes
    assert sizes["count"] == 12 + 18 + 3 + 7
    assert (sizes["width"]["min"], sizes["width"]["max"]) == (1, 24)
    assert (sizes["height"]["min"], sizes["height"]["max"]) == (1, 10_000)
    assert sizes["height"]["median"] == 16


def test_checking_changes_nothing_and_a_fifo_does_not_hang_it(zoo):
    before = tree_state(zoo["root"].parent)
    report = check_within(60, zoo["root"], workers=4)
    assert tree_state(zoo["root"].parent) == before
    assert stat.S_ISFIFO(zoo["fifo"].lstat().st_mode)
    assert report.bad_files


def test_threads_find_exactly_what_one_thread_finds(zoo):
    alone = check_within(60, zoo["root"]).to_dict()
    threaded = check_within(60, zoo["root"], workers=3).to_dict()
    assert threaded == alone


def test_the_report_renders_for_people_and_serialises_to_json(zoo):
    report = check_within(60, zoo["root"])
    text = report.render()
    assert "蚂蚁_1.png" not in text  # a readable normal image is not a problem
    assert str(zoo["bad"]["corrupt"]) in text and str(zoo["leak"]) in text
    table = text.splitlines()[2:8]
    assert table[0].split() == ["class", "train", "val"]
    assert table[1].split() == ["ant", "12", "3"] and table[-1].split() == ["total", "33", "7"]
    assert text.splitlines()[-1].startswith("training would refuse this data: ")
    data = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert data["blocking"] is True and data["counts"]["train"]["bee"] == 18
    assert str(zoo["bad"]["truncated"]) in data["bad_files"]
    assert [str(zoo["leak"]), f"same bytes as {zoo['root'] / 'train/ant/ant3.png'} in train"] in (
        data["problems"]["duplicate_across_splits"]
    )


def test_unicode_file_names_are_read_and_reported(tmp_path):
    root = two_classes(tmp_path / "数据", 9, [0, 0])
    noise(root / "a" / "蚂蚁_1.png", size=(4, 4), seed=50)
    report = check_data(str(root))
    assert listed(report, "too_small") == {str(root / "a" / "蚂蚁_1.png")}
    assert "蚂蚁_1.png" in report.render()
    assert "蚂蚁_1.png" in json.dumps(report.to_dict(), ensure_ascii=False)


def test_long_listings_are_cut_at_twenty_paths_in_text_but_not_in_json(tmp_path):
    root = two_classes(tmp_path / "data", 40, [13, 12])
    report = check_data(str(root), max_bad_fraction=0.5)
    text = report.render()
    assert "zero_byte (25)" in text and "  ... and 5 more" in text
    assert sum(line.startswith(f"  {root}") for line in text.splitlines()) == 20
    assert len(report.to_dict()["problems"]["zero_byte"]) == 25
    assert text.splitlines()[-1] == "ok to train"


def test_class_counts_and_imbalance_ratio_in_the_train_val_layout(tmp_path):
    root = tmp_path / "data"
    for index in range(6):
        noise(root / "train" / "a" / f"{index}.png", seed=index)
    for index in range(2):
        noise(root / "train" / "b" / f"{index}.png", seed=10 + index)
        noise(root / "val" / "a" / f"{index}.png", seed=20 + index)
        noise(root / "val" / "b" / f"{index}.png", seed=30 + index)
    report = check_data(str(root))
    assert report.counts == {"train": {"a": 6, "b": 2}, "val": {"a": 2, "b": 2}}
    assert report.imbalance_ratio == pytest.approx(3.0)
    assert "3.00" in report.render() and not report.blocking


# --------------------------------------------------------------------------- training's refusals


def test_more_than_a_tenth_unreadable_blocks_and_says_how_much(tmp_path):
    report = check_data(str(two_classes(tmp_path / "data", 9, [2, 1])))  # 3 of 21
    assert report.blocking
    assert any("3 of 21" in reason and "14.3%" in reason for reason in report.blocking_reasons)
    assert "14.3%" in report.render().splitlines()[-1]


def test_a_tenth_unreadable_or_less_does_not_block(tmp_path):
    report = check_data(str(two_classes(tmp_path / "data", 9, [1, 1])))  # 2 of 20
    assert not report.blocking and report.blocking_reasons == []
    assert len(report.bad_files) == 2
    strict = check_data(str(tmp_path / "data"), max_bad_fraction=0.05)
    assert strict.blocking


def test_one_class_blocks(tmp_path):
    for index in range(5):
        noise(tmp_path / "data" / "only" / f"{index}.png", seed=index)
    report = check_data(str(tmp_path / "data"))
    assert report.blocking
    assert any("1 class" in reason for reason in report.blocking_reasons)


def test_a_split_without_readable_images_blocks(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        for index in range(4):
            noise(root / "train" / name / f"{index}.png", seed=index + ord(name))
        write_corrupt_jpeg(
            (root / "val" / name).mkdir(parents=True) or root / "val" / name / "c.jpg"
        )
    report = check_data(str(root), max_bad_fraction=0.5)
    assert report.blocking_reasons == ["the val split has no readable images"]


def test_pillow_settings_are_strict_during_the_check_and_restored_after(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    root = two_classes(tmp_path / "data", 9, [0, 0])
    write_truncated_png(root / "a" / "cut.png")
    filters = list(warnings.filters)
    report = check_data(str(root))
    assert listed(report, "truncated") == {str(root / "a" / "cut.png")}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert warnings.filters == filters


# --------------------------------------------------------------------------- other specs


def test_an_embedded_set_reports_counts_and_sizes_without_files():
    report = check_data("digits")
    assert report.classes == [str(digit) for digit in range(10)]
    assert sum(report.counts["train"].values()) + sum(report.counts["val"].values()) == 1797
    assert sum(report.counts["val"].values()) == pytest.approx(1797 * 0.2, abs=10)
    assert report.sizes["count"] == 1797 and report.sizes["width"]["max"] == 8
    assert not any(report.problems.values()) and not report.blocking
    assert report.render().splitlines()[-1] == "ok to train"


def test_a_folder_without_any_image_is_refused(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "notes.txt").write_text("no pictures yet")
    try:
        report = check_data(str(tmp_path / "data"))
    except DataError as error:
        assert "no image files" in str(error)
    else:
        assert report.blocking


def test_a_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not an embedded set"):
        check_data(str(tmp_path / "nowhere"))


def test_a_csv_list_is_checked_file_by_file(tmp_path):
    root = two_classes(tmp_path / "data", 4, [1, 0])
    table = root / "list.csv"
    rows = [f"{path.relative_to(root)},{path.parent.name}" for path in sorted(root.rglob("*.*g"))]
    table.write_text("\n".join(["path,label", *rows, "a/gone.png,a"]) + "\n")
    report = check_data(str(table), val_fraction=0.25)
    assert report.classes == ["a", "b"]
    assert sum(report.counts["train"].values()) + sum(report.counts["val"].values()) == 8
    assert listed(report, "zero_byte") == {str(root / "a" / "bad0.jpg")}
    # A row whose file is gone has its own heading, not the walk's links, loops and FIFOs.
    assert listed(report, "listed_missing") == {str(root / "a" / "gone.png")}
    assert listed(report, "passed_over") == set()
    rendered = report.render()
    heading = CATEGORIES["listed_missing"]
    assert heading in rendered and CATEGORIES["passed_over"] not in rendered
    assert rendered.index(str(root / "a" / "gone.png")) > rendered.index(heading)


# --------------------------------------------------------------------------- quarantine


def test_quarantine_moves_exactly_the_bad_files_and_keeps_their_places(zoo, tmp_path):
    root = zoo["root"]
    report = check_within(60, root)
    before = tree_state(root)
    moves = quarantine(report, tmp_path / "held", root)
    expected = {Path(os.path.abspath(path)) for path in zoo["bad"].values()}
    assert {source for source, _ in moves} == expected
    for source, destination in moves:
        assert destination == tmp_path / "held" / source.relative_to(root.absolute())
        assert not os.path.lexists(source)
        relative = str(source.relative_to(root.absolute()))
        if before[relative][0] == "file":
            assert hashlib.sha256(destination.read_bytes()).hexdigest() == before[relative][1]
    after = tree_state(root)
    moved = {str(source.relative_to(root.absolute())) for source, _ in moves}
    assert after == {key: value for key, value in before.items() if key not in moved}
    assert not check_within(60, root).bad_files


def test_quarantine_never_overwrites_what_is_already_held(tmp_path):
    root = two_classes(tmp_path / "data", 9, [1, 0])
    held = tmp_path / "held"
    report = check_data(str(root))
    first = quarantine(report, held, root)
    assert [destination for _, destination in first] == [held / "a" / "bad0.jpg"]
    assert quarantine(check_data(str(root)), held, root) == []  # nothing bad left
    assert quarantine(report, held, root) == []  # the first report again: already moved
    (root / "a" / "bad0.jpg").write_text("a new broken file with the same name")
    second = quarantine(check_data(str(root)), held, root)
    assert [destination for _, destination in second] == [held / "a" / "bad0.1.jpg"]
    assert (held / "a" / "bad0.jpg").read_bytes() == b""
    assert (held / "a" / "bad0.1.jpg").read_text().startswith("a new broken file")


def test_quarantine_refuses_a_folder_inside_the_data(tmp_path):
    root = two_classes(tmp_path / "data", 9, [1, 0])
    before = tree_state(root)
    with pytest.raises(ConfigError, match="inside the data root"):
        quarantine(check_data(str(root)), root / "quarantine", root)
    assert tree_state(root) == before


def test_the_bad_categories_are_the_unreadable_ones():
    # Training's skip logic and quarantine act on these; a readable category here would move
    # good images out of the data.
    assert set(BAD_CATEGORIES) == {
        "unreadable",
        "zero_byte",
        "not_an_image",
        "corrupt",
        "truncated",
        "too_large",
    }
    assert set(BAD_CATEGORIES) <= set(CATEGORIES)


def test_a_torchvision_set_on_disk_is_checked_from_its_data_root(tmp_path, capsys):
    from test_disk_sets import write_cifar10_root

    from taolu.cli import main

    write_cifar10_root(tmp_path)
    report = check_data("cifar10", data_root=tmp_path)
    assert len(report.classes) == 10 and not report.blocking
    assert sum(report.counts["train"].values()) > 0 and sum(report.counts["val"].values()) > 0
    assert report.sizes["width"]["max"] == 32
    with pytest.raises(ConfigError, match="--data-root"):
        check_data("cifar10")
    assert main(["data", "check", "cifar10", "--data-root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"][0] == "airplane"


# --------------------------------------------------------------------------- counts agree


def test_the_runs_header_summary_and_the_doctor_count_the_same_images(tmp_path, capsys):
    """A damaged file in the validation split is left out of the header's count as it is of
    summary.json's (which the report shows) and of `data check`'s."""
    import taolu

    root = tmp_path / "data"
    two_classes(root / "train", 8, [0, 0])
    two_classes(root / "val", 3, [0, 0])
    write_truncated_png(root / "val" / "a" / "truncated.png")
    result = taolu.train(
        data=str(root), epochs=1, out=str(tmp_path / "runs"), progress=False, report=False
    )
    header = capsys.readouterr().out.splitlines()[0]
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    report = check_data(str(root))
    counted = [sum(report.counts[split].values()) for split in ("train", "val")]
    assert counted == [16, 6]
    assert [summary["train_samples"], summary["val_samples"]] == counted
    assert " 16 train / 6 val images," in header, header
