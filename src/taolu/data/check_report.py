"""What `taolu data check` found, as a DataReport: counts per class and split, the problems
by category with their paths, image sizes, class balance, and whether training would refuse
the data; `render` for people, `to_dict` for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

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
Problems = dict[str, list[tuple[str, str]]]  # category -> [(path, detail)]
LISTING_LIMIT = 20  # paths shown per category by `render`; to_dict keeps all of them


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
