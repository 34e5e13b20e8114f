"""The data doctor: reads every file of a data set once, read-only, and reports what training
would trip over (unreadable, odd, duplicated or leaked images, empty classes), with paths.
`quarantine` moves the unreadable files out, and only when asked."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import statistics
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError

from taolu.data import sources
from taolu.data.disk_sets import DISK_DATASETS, load_disk_dataset
from taolu.data.embedded import DIGIT_CLASSES, LOADERS, stratified_split
from taolu.data.files import is_hidden
from taolu.errors import ConfigError, DataError

# What each category means, in the order a report lists them. The first six are unreadable:
# training cannot decode them, so they are the ones `bad_files` and `quarantine` act on.
CATEGORIES = {
    "unreadable": "cannot be opened",
    "zero_byte": "empty files",
    "not_an_image": "image suffix, but Pillow cannot identify the contents",
    "corrupt": "damaged image data",
    "truncated": "the file ends before the image does",
    "too_large": "more pixels than Pillow's decompression-bomb limit; refused, not decoded",
    "too_small": "shorter side below the minimum size",
    "odd_mode": "pixel formats training has to convert",
    "exif_rotated": "EXIF orientation is not 1: training turns these upright",
    "duplicate_within_split": "same bytes as another file of the split",
    "duplicate_across_splits": "same bytes in train and val: validation leaks training data",
    "class_empty": "classes with no readable image in a split",
    "class_missing": "classes with no folder in a split",
    "class_not_in_train": "validation folders that are not a training class: not used",
    "other_files": "no image suffix: training skips them",
    "listed_missing": "rows of the CSV list whose file is missing or not a regular file",
    "passed_over": "not followed or not opened: links out of the root, loops, FIFOs",
}
BAD_CATEGORIES = ("unreadable", "zero_byte", "not_an_image", "corrupt", "truncated", "too_large")
ORIENTATION_TAG = 0x0112
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
Problems = dict[str, list[tuple[str, str]]]  # category -> [(path, detail)]
# Leading bytes of the formats taolu reads: a file that starts like one but that Pillow cannot
# identify is a damaged image, not some other kind of file.
MAGIC_NUMBERS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF"}
# Move a symlink itself, as `mv` would, not the file it points to.
LINK_OPTIONS = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}
LISTING_LIMIT = 20  # paths shown per category by `render`; to_dict keeps all of them


@dataclass
class ImageFacts:
    """What one file turned out to be. `problem` is set only for an unreadable file."""

    path: Path
    byte_size: int = 0
    digest: str | None = None  # blake2b of the bytes, for finding duplicates
    format: str | None = None
    mode: str | None = None
    width: int = 0  # upright, as training sees it
    height: int = 0
    orientation: int | None = None
    transparency: bool = False
    problem: str | None = None
    detail: str | None = None

    def refuse(self, problem: str, detail: str) -> ImageFacts:
        self.problem, self.detail = problem, detail
        return self


@dataclass
class DataReport:
    """Everything the doctor found; `render` for people, `to_dict` for JSON."""

    spec: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> readable images
    problems: Problems
    image_files: int  # files with an image suffix in the splits, readable or not
    sizes: dict  # count, and width / height each as {min, median, max}
    imbalance_ratio: float | None  # largest / smallest class in train; None if one is empty
    max_bad_fraction: float  # the share of unreadable image files training tolerates
    blocking_reasons: list[str] = field(init=False)  # why training would refuse; [] if not

    def __post_init__(self) -> None:
        self.blocking_reasons = _blocking_reasons(self)

    @property
    def blocking(self) -> bool:
        """True when training would refuse this data."""
        return bool(self.blocking_reasons)

    @property
    def bad_files(self) -> list[Path]:
        """The unreadable files, sorted: what quarantine moves and training skips."""
        return sorted(Path(path) for name in BAD_CATEGORIES for path, _ in self.problems[name])

    def to_dict(self) -> dict:
        values = asdict(self)
        values["problems"] = {
            name: [list(item) for item in items] for name, items in self.problems.items()
        }
        values["bad_files"] = [str(path) for path in self.bad_files]
        values["blocking"] = self.blocking
        return values

    def render(self) -> str:
        lines = [f"data check: {self.spec} ({self.layout})", "", *self._count_table()]
        lines += ["", *self._summary()]
        for name, items in self.problems.items():
            if items:
                lines += ["", f"{name} ({len(items)}): {CATEGORIES[name]}"]
                lines += [f"  {path}  {detail}" for path, detail in items[:LISTING_LIMIT]]
                if len(items) > LISTING_LIMIT:
                    lines.append(f"  ... and {len(items) - LISTING_LIMIT} more")
        verdict = "ok to train"
        if self.blocking:
            verdict = "training would refuse this data: " + "; ".join(self.blocking_reasons)
        return "\n".join([*lines, "", verdict])

    def _count_table(self) -> list[str]:
        splits = list(self.counts)
        rows = [["class", *splits]]
        rows += [
            [name, *(str(self.counts[s].get(name, 0)) for s in splits)] for name in self.classes
        ]
        rows.append(["total", *(str(sum(self.counts[s].values())) for s in splits)])
        width = max(len(row[0]) for row in rows)
        return [
            "  ".join([row[0].ljust(width), *(cell.rjust(7) for cell in row[1:])]) for row in rows
        ]

    def _summary(self) -> list[str]:
        width, height, count = (
            self.sizes.get("width"),
            self.sizes.get("height"),
            self.sizes["count"],
        )
        sizes = "image sizes: no readable images"
        if count:
            sizes = (
                f"image sizes ({count} readable, min / median / max): "
                f"width {width['min']} / {width['median']:g} / {width['max']}, "
                f"height {height['min']} / {height['median']:g} / {height['max']}"
            )
        balance = "class imbalance (train): undefined, a class has no training images"
        if self.imbalance_ratio is not None:
            balance = f"class imbalance (train, largest / smallest): {self.imbalance_ratio:.2f}"
        return [sizes, balance]


def inspect_image(path: str | Path) -> ImageFacts:
    """Open one file read-only, hash its bytes, read its header and decode its pixels.

    Never opens anything but a regular file, and never decodes an image whose header claims
    more pixels than Pillow's decompression-bomb limit.
    """
    facts = ImageFacts(Path(path))
    try:
        file = _open_regular_file(facts.path)
    except OSError as error:
        return facts.refuse("unreadable", error.strerror or str(error))
    with file:
        facts.byte_size = os.fstat(file.fileno()).st_size
        if facts.byte_size == 0:
            return facts.refuse("zero_byte", "the file is empty (0 bytes)")
        digest = hashlib.blake2b()
        try:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        except OSError as error:  # a failing disk or a vanished network share
            return facts.refuse("unreadable", f"read error: {error.strerror or error}")
        facts.digest = digest.hexdigest()
        file.seek(0)
        return _decode(file, facts)


def _open_regular_file(path: Path) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file (a folder, FIFO or device)")
    return os.fdopen(descriptor, "rb")


def _decode(file: BinaryIO, facts: ImageFacts) -> ImageFacts:
    try:
        with Image.open(file) as image:
            facts.format, facts.mode = image.format, image.mode
            facts.width, facts.height = image.size
            facts.transparency = "transparency" in image.info
            limit = Image.MAX_IMAGE_PIXELS
            # Checked here too because Pillow only warns between 1x and 2x its limit.
            if limit and facts.width * facts.height > limit:
                pixels = facts.width * facts.height
                return facts.refuse("too_large", f"{pixels:,} pixels; the limit is {limit:,}")
            facts.orientation = image.getexif().get(ORIENTATION_TAG)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return facts.refuse("too_large", str(error))
    except UnidentifiedImageError:
        file.seek(0)
        start = file.read(8)
        kind = next((name for magic, name in MAGIC_NUMBERS.items() if start.startswith(magic)), "")
        if kind:
            return facts.refuse("corrupt", f"starts like a {kind} file, but its header is broken")
        return facts.refuse("not_an_image", "Pillow cannot identify the contents as an image")
    except Exception as error:  # Pillow's plugins raise many kinds for damaged data
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        return facts.refuse(kind, f"{type(error).__name__}: {error}")
    if facts.orientation in (5, 6, 7, 8):  # a quarter turn: training sees width and height swapped
        facts.width, facts.height = facts.height, facts.width
    return facts


@contextmanager
def _strict_pillow() -> Iterator[None]:
    """Pillow set to fail on truncated and oversized images for the duration, then restored:
    with LOAD_TRUNCATED_IMAGES on, a cut-off file would decode silently as grey."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def check_data(
    spec: str,
    *,
    val_fraction: float = 0.2,
    min_size: int = 8,
    max_bad_fraction: float = 0.1,
    workers: int = 0,
    data_root: str | Path | None = None,
) -> DataReport:
    """Check an embedded set's name, a torchvision set on disk under `data_root`, an image
    folder or a .csv file list; changes no file.

    `workers` > 0 inspects files on that many threads (Pillow decodes without the GIL).
    """
    spec = str(spec)
    if sources.is_embedded(spec):
        return _check_embedded(spec, val_fraction)
    if spec in DISK_DATASETS:
        if not data_root:
            raise ConfigError(f"{spec} is read from disk: give its folder with --data-root")
        return _check_disk_set(spec, Path(data_root).expanduser())
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{spec!r} is neither an embedded data set ({', '.join(LOADERS)}) "
            f"nor an existing folder or .csv file (looked for {path.resolve()})"
        )
    if path.is_dir():
        try:
            listing = sources.list_folder(path, val_fraction)
        except OSError as error:
            raise DataError(f"{path}: cannot list the folder ({error})") from None
        except ValueError:  # list_folder's split fails when there is no image file at all
            raise DataError(f"{path}: no image files in any class folder") from None
        folders = _split_folders(path)
    elif path.suffix.lower() == ".csv":
        listing, folders = _csv_lister(path)(path, val_fraction), {}
    else:
        raise ConfigError(f"{path} is a file; give a folder of class folders or a .csv list")
    with _strict_pillow():
        facts = _inspect_all([p for files in listing.splits.values() for p, _ in files], workers)
    return _diagnose(spec, listing, facts, folders, min_size, max_bad_fraction)


def _csv_lister(path: Path) -> Callable[[Path, float], sources.FileListing]:
    """`list_csv`, imported only when a CSV is checked, as `sources.load_data` does."""
    try:
        from taolu.data.csv_list import list_csv
    except ImportError:
        list_csv = getattr(sources, "list_csv", None)
    if list_csv is None:
        raise DataError(f"{path}: this version of taolu cannot read CSV file lists")
    return list_csv


def _check_embedded(name: str, val_fraction: float) -> DataReport:
    images, labels = LOADERS[name]()  # uint8 (N, H, W), int64 (N,)
    splits = dict(zip(("train", "val"), stratified_split(labels, val_fraction), strict=True))
    counts = {
        split: {c: int((labels[index.numpy()] == i).sum()) for i, c in enumerate(DIGIT_CLASSES)}
        for split, index in splits.items()
    }
    height, width = images.shape[1:]
    return DataReport(
        spec=name,
        layout="embedded data set",
        classes=list(DIGIT_CLASSES),
        counts=counts,
        problems={category: [] for category in CATEGORIES},
        image_files=0,
        sizes=_size_stats([width] * len(images), [height] * len(images)),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=0.0,
    )


def _check_disk_set(name: str, root: Path) -> DataReport:
    """A torchvision set read from disk: its readers already refuse broken files, so what is
    left to report is the class balance and the image size."""
    train, val, classes = load_disk_dataset(name, root)
    counts = {
        split: {c: int((tensors.labels == i).sum()) for i, c in enumerate(classes)}
        for split, tensors in (("train", train), ("val", val))
    }
    height, width = train.images.shape[-2:]
    total = len(train) + len(val)
    return DataReport(
        spec=name,
        layout=f"torchvision {name} under {root} (test split as validation)",
        classes=list(classes),
        counts=counts,
        problems={category: [] for category in CATEGORIES},
        image_files=0,
        sizes=_size_stats([int(width)] * total, [int(height)] * total),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=0.0,
    )


def _split_folders(root: Path) -> dict[str, Path]:
    """Where each split's class folders live, by the rules of `sources.list_folder`."""
    val_root = next((root / n for n in sources.VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_root is not None:
        return {"train": root / "train", "val": val_root}
    return {"train": root, "val": root}


def _inspect_all(paths: list[Path], workers: int) -> dict[Path, ImageFacts]:
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(paths, pool.map(inspect_image, paths), strict=True))
    return {path: inspect_image(path) for path in paths}


def _diagnose(
    spec: str,
    listing: sources.FileListing,
    facts: dict[Path, ImageFacts],
    folders: dict[str, Path],
    min_size: int,
    max_bad_fraction: float,
) -> DataReport:
    problems: Problems = {category: [] for category in CATEGORIES}
    for item in facts.values():
        for category, detail in _findings(item, min_size):
            problems[category].append((str(item.path), detail))
    counts = {split: dict.fromkeys(listing.classes, 0) for split in listing.splits}
    for split, files in listing.splits.items():
        for path, label in files:
            counts[split][listing.classes[label]] += facts[path].problem is None
    _find_duplicates(listing, facts, problems)
    _find_class_problems(listing.classes, counts, folders, problems)
    problems["other_files"] = [(str(p), "no image suffix") for p in sorted(listing.others)]
    listed = (sources.LISTED_MISSING, sources.LISTED_NOT_A_FILE)
    for path, why in listing.passed_over:
        problems["listed_missing" if why in listed else "passed_over"].append((str(path), why))
    readable = [item for item in facts.values() if item.problem is None]
    return DataReport(
        spec=spec,
        layout=listing.layout,
        classes=list(listing.classes),
        counts=counts,
        problems=problems,
        image_files=len(facts),
        sizes=_size_stats([item.width for item in readable], [item.height for item in readable]),
        imbalance_ratio=_imbalance(counts["train"]),
        max_bad_fraction=max_bad_fraction,
    )


def _findings(facts: ImageFacts, min_size: int) -> list[tuple[str, str]]:
    """(category, detail) for everything worth reporting about one inspected file."""
    if facts.problem:
        return [(facts.problem, facts.detail or "")]
    found = []
    if min(facts.width, facts.height) < min_size:
        found.append(("too_small", f"{facts.width}x{facts.height}, under {min_size} px"))
    mode_detail = _odd_mode(facts.mode or "", facts.transparency)
    if mode_detail:
        found.append(("odd_mode", mode_detail))
    if facts.orientation not in (None, 1):
        found.append(("exif_rotated", f"orientation {facts.orientation}"))
    return found


def _odd_mode(mode: str, transparency: bool) -> str | None:
    if mode == "CMYK":
        return "CMYK: converted to RGB"
    if mode in ("I", "F") or mode.startswith("I;"):
        return f"{mode}: more than 8 bits per channel, rescaled to 8"
    if mode in ALPHA_MODES:
        return f"{mode}: alpha channel, laid over white"
    if transparency:
        return f"{mode} with a transparent colour, laid over white"
    if mode not in ("1", "L", "RGB"):
        return f"{mode}: converted to RGB"
    return None


def _find_duplicates(
    listing: sources.FileListing,
    facts: dict[Path, ImageFacts],
    problems: Problems,
) -> None:
    """Readable files with the same bytes: all but the first of each split, and every
    validation file whose bytes are also in train (the model would be tested on its lessons)."""
    by_split: dict[str, dict[str, list[Path]]] = {split: {} for split in listing.splits}
    for split, files in listing.splits.items():
        for path in sorted(path for path, _ in files):
            if facts[path].problem is None and facts[path].digest:
                by_split[split].setdefault(facts[path].digest, []).append(path)
    train = by_split.get("train", {})
    for split, groups in by_split.items():
        for digest, paths in groups.items():
            for path in paths[1:]:
                problems["duplicate_within_split"].append((str(path), f"same bytes as {paths[0]}"))
            if split != "train" and digest in train:
                detail = f"same bytes as {train[digest][0]} in train"
                problems["duplicate_across_splits"] += [(str(path), detail) for path in paths]


def _find_class_problems(
    classes: list[str],
    counts: dict[str, dict[str, int]],
    folders: dict[str, Path],
    problems: Problems,
) -> None:
    for split, split_counts in counts.items():
        for name in classes:
            folder = folders.get(split)
            where = str(folder / name) if folder else name
            if folder and not (folder / name).is_dir():
                problems["class_missing"].append((where, f"class {name!r} has no {split} folder"))
            elif split_counts[name] == 0:
                problems["class_empty"].append((where, f"no readable {split} image of {name!r}"))
    if folders and folders["val"] != folders["train"]:
        try:
            extra = sorted(
                p for p in folders["val"].iterdir() if p.is_dir() and p.name not in classes
            )
        except OSError:  # list_folder has already passed over an unreadable folder
            extra = []
        for path in extra:
            if not is_hidden(path.name):
                problems["class_not_in_train"].append((str(path), "no such training class"))


def _size_stats(widths: list[int], heights: list[int]) -> dict:
    if not widths:
        return {"count": 0}

    def spread(values: list[int]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {"count": len(widths), "width": spread(widths), "height": spread(heights)}


def _imbalance(train_counts: dict[str, int]) -> float | None:
    values = list(train_counts.values())
    if not values or min(values) == 0:
        return None
    return max(values) / min(values)


def _blocking_reasons(report: DataReport) -> list[str]:
    """Why training would refuse the data, in the words of its own refusals."""
    reasons = []
    if len(report.classes) < 2:
        reasons.append(f"found {len(report.classes)} class(es); training needs at least 2")
    for split, split_counts in report.counts.items():
        if sum(split_counts.values()) == 0:
            reasons.append(f"the {split} split has no readable images")
    bad, total = len(report.bad_files), report.image_files
    if total and bad / total > report.max_bad_fraction:
        reasons.append(
            f"{bad} of {total} image files ({bad / total:.1%}) cannot be read, "
            f"more than max_bad_fraction {report.max_bad_fraction:.1%}"
        )
    return reasons


def quarantine(report: DataReport, target: Path, data_root: Path) -> list[tuple[Path, Path]]:
    """Move `report.bad_files` into `target`, each at its path relative to `data_root`.

    Nothing in `target` is overwritten: a name already taken gets a number (x.1.jpg). Every
    path is checked before the first move. Returns (from, to) for each file moved.
    """
    root, target = Path(os.path.abspath(data_root)), Path(os.path.abspath(target))
    real_root = Path(os.path.realpath(root))
    if Path(os.path.realpath(target)).is_relative_to(real_root):
        raise ConfigError(
            f"quarantine folder {target} is inside the data root {root}; "
            "training would read it as data, choose a folder outside"
        )
    plans = []
    for path in report.bad_files:
        source = Path(os.path.abspath(path))
        if not os.path.lexists(source):  # already moved by an earlier call with this report
            continue
        # Resolved, not compared as text: a linked folder inside the root (or a link as the
        # file) may lead anywhere, and only what really lies in the root is moved.
        real_folder = Path(os.path.realpath(source.parent))
        real_file = Path(os.path.realpath(source))
        if not (
            source.is_relative_to(root)
            and real_folder.is_relative_to(real_root)
            and real_file.is_relative_to(real_root)
        ):
            raise DataError(
                f"{source} is not inside the data root {real_root} once links are followed "
                f"(it is {real_file}); quarantine moves only files that lie in the root. "
                "Nothing was moved"
            )
        plans.append((source, real_folder / source.name, target / source.relative_to(root)))
    moves = []
    for source, real_source, destination in plans:
        try:
            moves.append((source, _move_without_overwrite(real_source, destination)))
        except OSError as error:
            raise DataError(
                f"could not move {source} ({error}); {len(moves)} moved before it"
            ) from None
    return moves


def _move_without_overwrite(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = destination.stem, destination.suffix
    for number in range(10_000):
        candidate = destination.with_name(f"{stem}.{number}{suffix}") if number else destination
        if _place(source, candidate):
            os.unlink(source)
            return candidate
    raise OSError(errno.EEXIST, f"no free name for {source.name} in {destination.parent}")


def _place(source: Path, destination: Path) -> bool:
    """Link, or else copy, `source` to `destination`; False if that name is taken. A hard
    link or an exclusive create fails on an existing name, where a rename would replace it."""
    try:
        os.link(source, destination, **LINK_OPTIONS)
        return True
    except FileExistsError:
        return False
    except OSError as error:  # another file system, or one without hard links: copy instead
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    try:
        with open(source, "rb") as reader, open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer)
    except FileExistsError:
        return False
    shutil.copystat(source, destination)
    return True
