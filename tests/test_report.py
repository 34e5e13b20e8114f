"""RUN/report/: the PNG plots and the self-contained report.html drawn from a run's files.

One real 2-epoch digits run is shared by the module; the other runs are written by hand (a few
small files), which is also how missing and hostile inputs are tested without training.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import taolu
from taolu.errors import ConfigError
from taolu.track.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = (
    "loss.png",
    "accuracy.png",
    "lr.png",
    "confusion_matrix.png",
    "per_class.png",
    "reliability.png",
    "val_samples.png",
)
# A finished run with wrong answers shows its confusion matrix as a table linking to the
# images of each pair, so no PNG of it is drawn; runs without val_predictions.csv get one.
LINKED_PLOTS = tuple(name for name in ALL_PLOTS if name != "confusion_matrix.png")
# What report.html may contain: no script, no link, no iframe, no object, ever.
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "main",
    "h1",
    "h2",
    "p",
    "section",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "img",
    "span",
    "code",
    "div",
    "ul",
    "li",
    "strong",
    # the error analysis: thumbnails in captioned figures, matrix cells linking to their pair
    "a",
    "b",
    "h3",
    "figure",
    "figcaption",
    "details",
    "summary",
}
HOSTILE = "<script>alert(1)</script>"
METRIC_COLUMNS = (
    "epoch,elapsed_seconds,train_loss,train_acc,val_loss,val_acc,val_top5_acc,val_macro_f1,"
    "val_balanced_acc,lr,grad_norm,skipped_batches,train_images_per_second"
)


# --------------------------------------------------------------------------- helpers


def save_samples(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """report/val_samples.safetensors as the training routine writes it: every third
    prediction wrong."""
    from safetensors.torch import save_file

    predicted = labels.clone()
    predicted[::3] = (predicted[::3] + 1) % 10
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "images": images.contiguous(),
            "labels": labels.long(),
            "predicted": predicted.long(),
            "confidence": torch.linspace(0.2, 0.99, len(labels)),
        },
        str(folder / "val_samples.safetensors"),
    )


def write_fake_run(
    run: Path,
    classes: list[str],
    *,
    epochs: int = 3,
    summary: bool = True,
    config: dict | None = None,
) -> Path:
    """A run directory by hand: metrics.csv, config.yaml and (optionally) summary.json."""
    run.mkdir(parents=True)
    lines = [METRIC_COLUMNS]
    for epoch in range(1, epochs + 1):
        acc = 0.3 + 0.2 * epoch
        top5 = "" if len(classes) < 5 else f"{min(acc + 0.2, 1.0)}"
        lines.append(
            f"{epoch},{5.0 * epoch},{2.0 / epoch},{acc - 0.05},{1.8 / epoch},{acc},{top5},"
            f"{acc - 0.1},{acc - 0.02},{0.1 / epoch},1.5,0,1000.0"
        )
    (run / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = {"data": "somewhere", "model": "fastcnn", "epochs": epochs, "monitor": "val/acc"}
    options.update(config or {})
    (run / "config.yaml").write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")
    if summary:
        count = len(classes)
        matrix = [
            [(8 if row == column else (row + column) % 3) for column in range(count)]
            for row in range(count)
        ]
        per_class = {
            name: {
                "precision": 0.5 + index % 5 / 10,
                "recall": 0.9 - index % 4 / 10,
                "f1": 0.6,
                "support": 10 + index % 3,
            }
            for index, name in enumerate(classes)
        }
        data = {
            "best_val_acc": 0.9, "best_epoch": epochs, "monitor": "val/acc",
            "final_val_acc": 0.9, "epochs_completed": epochs, "train_seconds": 12.5,
            "images_per_second": 1234.5, "device": "cpu", "precision": "fp32",
            "recipe": "a <b>bold</b> recipe", "skipped_files": ["x.png", "y.png"],
            "model": "fastcnn", "data": "somewhere", "classes": classes,
            "per_class": per_class, "confusion_matrix": matrix,
        }  # fmt: skip
        (run / "summary.json").write_text(json.dumps(data), encoding="utf-8")
    return run


def assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 1000, path
    with Image.open(path) as picture:
        picture.load()  # decodes every pixel: a truncated file fails here
        assert picture.format == "PNG"
        return picture.size


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []  # the plots
        self.thumbs: list[str] = []  # the error analysis's pictures
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            (self.thumbs if attrs.get("class") == "thumb" else self.images).append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])


def parse(page: Path) -> Tags:
    tags = Tags()
    tags.feed(page.read_text(encoding="utf-8"))
    return tags


def outside_report(tree: dict) -> dict:
    return {name: entry for name, entry in tree.items() if not name.startswith("report/")}


# --------------------------------------------------------------------------- the real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch digits run with report/val_samples.safetensors and its report."""
    out = tmp_path_factory.mktemp("report_run")
    result = taolu.train(data="digits", epochs=2, out=str(out), progress=False, verbose=False)
    run = Path(result.run_dir)
    from taolu.data.embedded import load_digits

    images, labels = load_digits()
    save_samples(
        run / "report",
        torch.from_numpy(images[:20]).unsqueeze(1),
        torch.from_numpy(labels[:20]),
    )
    write_report(run)
    return run


def test_every_plot_is_a_valid_png(trained):
    folder = trained / "report"
    assert not (folder / "confusion_matrix.png").exists()
    for name in LINKED_PLOTS:
        width, height = assert_png(folder / name)
        assert 300 <= width <= 2000 and 200 <= height <= 2000, (name, width, height)
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]  # no temp files


def test_html_embeds_the_plots_and_the_runs_values(trained):
    page = trained / "report" / "report.html"
    text = page.read_text(encoding="utf-8")
    tags = parse(page)
    assert set(tags.tags) <= ALLOWED_TAGS
    # Every plot is embedded as the very PNG written beside the page; nothing is fetched.
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in tags.images]
    assert all(src.startswith("data:image/png;base64,") for src in tags.images)
    plots, maps = embedded[: len(LINKED_PLOTS)], embedded[len(LINKED_PLOTS) :]
    assert plots == [(trained / "report" / name).read_bytes() for name in LINKED_PLOTS]
    # Then "Where it looks": the overlays of the run's top losses (test_explain.py).
    assert len(maps) == 8 and all(png.startswith(b"\x89PNG") for png in maps)
    assert not re.search(r"(src|href)=\"(?!data:|#)", text)
    assert "Not drawn" not in text
    summary = json.loads((trained / "summary.json").read_text())
    for value in (
        f"{summary['best_val_acc']:.2%}",
        f"{summary['final_val_acc']:.2%}",
        summary["monitor"],
        summary["recipe"],
        summary["device"],
        summary["precision"],
        summary["data"],
        "fastcnn",
        "label_smoothing",  # the configuration table
        "train/lr from the TensorBoard event files",  # the per-step lr
        "13 of 20 right",  # the sample grid: every third prediction was made wrong
    ):
        assert html.escape(str(value)) in text, value
    assert f"<h1>taolu run {trained.name}</h1>" in text
    # The configuration shows what the run used where the setting left it to the run.
    used = f'{summary["device"]} <span class="muted">(set: auto)</span>'
    assert used in text and '8x8 <span class="muted">(set: 0)</span>' in text
    titles = ("Loss", "Accuracy", "Learning rate", "Confusion matrix", "Sample predictions")
    for title in (*titles, "Where it looks"):
        assert f"<h2>{title}" in text


def test_the_report_shows_where_the_top_losses_looked(trained):
    from taolu.inspection import read_val_predictions
    from taolu.track.report_maps import MAPS_FILE, where_it_looks_section

    saved = json.loads((trained / "report" / MAPS_FILE).read_text())
    losses = sorted((row["loss"] for row in read_val_predictions(trained)), reverse=True)
    assert [entry["loss"] for entry in saved["images"]] == losses[:8]
    section = where_it_looks_section(trained / "report")
    assert section.count("<img") == 8 and "#" in section  # digits are named by index
    page = (trained / "report" / "report.html").read_text()
    assert section in page


def test_cli_rewrites_the_report_and_nothing_else(trained, cli_main, tree_snapshot):
    folder = trained / "report"
    before = tree_snapshot(trained)
    old_page = (folder / "report.html").read_bytes()
    (folder / "report.html").unlink()
    (folder / "loss.png").unlink()
    code, out, err = cli_main("report", trained)
    assert code == 0, err
    assert str(folder / "report.html") in out
    after = tree_snapshot(trained)
    assert outside_report(after) == outside_report(before)  # bytes, sizes and mtimes
    samples = "report/val_samples.safetensors"
    assert after[samples] == before[samples]  # the input is read, never rewritten
    assert set(after) == set(before)  # no temporary files left behind
    # The same run gives the same report, byte for byte.
    assert (folder / "report.html").read_bytes() == old_page
    assert_png(folder / "loss.png")


# --------------------------------------------------------------------------- hand-made runs


def test_hostile_names_are_escaped(tmp_path):
    classes = [HOSTILE, 'a & b "quoted"', "$\\alpha$ not math", "new\nline", "日本語"]
    run = write_fake_run(
        tmp_path / 'run<b>&"x"', classes, config={"data": "<img src=x onerror=alert(2)>"}
    )
    page = write_report(run)
    text = page.read_text(encoding="utf-8")
    assert HOSTILE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # in the per-class table
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "<b>" not in text and "run&lt;b&gt;&amp;&quot;x&quot;" in text
    assert set(parse(page).tags) <= ALLOWED_TAGS
    for name in ("confusion_matrix.png", "per_class.png", "loss.png"):
        assert_png(run / "report" / name)


def test_missing_inputs_are_skipped_with_a_note(tmp_path):
    run = write_fake_run(tmp_path / "interrupted", ["cat", "dog"], summary=False)
    folder = run / "report"
    folder.mkdir()
    (folder / "val_samples.safetensors").write_bytes(b"not a safetensors file")
    (folder / "confusion_matrix.png").write_bytes(b"stale")  # from an earlier report
    before = tree_snapshot_outside(run)
    page = write_report(run)
    text = page.read_text(encoding="utf-8")
    for name in ("loss.png", "accuracy.png", "lr.png"):
        assert_png(folder / name)
    for name in ("confusion_matrix.png", "per_class.png", "reliability.png", "val_samples.png"):
        assert not (folder / name).exists(), name
    assert text.count("Not drawn") == 5
    assert "there is no report/top_loss_maps.json" in text
    assert "summary.json holds no calibration" in text
    assert "there is no summary.json" in text
    assert "val_samples.safetensors could not be used" in text
    assert "metrics.csv&#x27;s lr column" in text  # no event files: per-epoch lr
    assert "from metrics.csv and config.yaml" in text  # the summary falls back
    assert "fastcnn" in text
    assert tree_snapshot_outside(run) == before

    # Interrupted before the first epoch: only config.yaml, yet a report (all notes).
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.yaml").write_text("model: fastcnn\nepochs: 5\n", encoding="utf-8")
    text = write_report(early).read_text(encoding="utf-8")
    assert text.count("Not drawn") == len(ALL_PLOTS) + 1  # and "Where it looks"
    assert "there is no metrics.csv" in text


def tree_snapshot_outside(run: Path) -> dict:
    return {
        str(path.relative_to(run)): path.read_bytes()
        for path in sorted(run.rglob("*"))
        if path.is_file() and path.parent.name != "report"
    }


def test_sparse_lr_events_are_plotted(tmp_path):
    """train/lr once per epoch (at the epoch's last step) or once per step: both are drawn."""
    from torch.utils.tensorboard import SummaryWriter

    run = write_fake_run(tmp_path / "sparse", [str(n) for n in range(10)])
    writer = SummaryWriter(log_dir=str(run))
    for step, lr in ((10, 0.1), (20, 0.05), (30, 0.01)):
        writer.add_scalar("train/lr", lr, step)
    writer.close()
    text = write_report(run).read_text(encoding="utf-8")
    assert_png(run / "report" / "lr.png")
    assert "train/lr from the TensorBoard event files" in text


def test_a_hundred_classes_stay_legible(tmp_path):
    classes = [f"class_with_a_long_name_{index:03d}" for index in range(100)]
    run = write_fake_run(tmp_path / "many", classes)
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8)
    save_samples(run / "report", images, torch.arange(40) % 100)
    text = write_report(run).read_text(encoding="utf-8")
    folder = run / "report"
    width, height = assert_png(folder / "confusion_matrix.png")
    assert width <= 1500 and height <= 1400
    width, _ = assert_png(folder / "per_class.png")
    assert width <= 1800
    assert_png(folder / "val_samples.png")
    assert "the axes show class indices" in text
    assert text.count("class_with_a_long_name_") >= 100  # every class in the table


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, cli_main):
    empty = tmp_path / "holiday photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a taolu run directory") as caught:
        write_report(empty)
    message = str(caught.value)
    assert str(empty) in message and "metrics.csv" in message and "config.yaml" in message
    assert sorted(path.name for path in empty.iterdir()) == ["notes.txt"]  # nothing written
    with pytest.raises(ConfigError, match="no such run directory"):
        write_report(tmp_path / "missing")
    code, _, err = cli_main("report", empty)
    assert code == 2 and "not a taolu run directory" in err and "Traceback" not in err


def test_report_in_place_of_a_folder_is_refused(tmp_path):
    run = write_fake_run(tmp_path / "run", ["a", "b"])
    (run / "report").write_text("a file", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a folder"):
        write_report(run)
    assert (run / "report").read_text(encoding="utf-8") == "a file"


# --------------------------------------------------------------------------- a real browser


def test_report_renders_in_chromium(trained, tmp_path, chromium):
    """report.html and a hostile run's page in headless Chromium: every image decodes, no
    request leaves the page, and no script runs."""
    hostile = write_fake_run(tmp_path / "hostile", [HOSTILE, "b"], config={"data": HOSTILE})
    pages = [trained / "report" / "report.html", write_report(hostile)]
    page = chromium.new_page()
    requests, dialogs = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in pages:
        page.goto(path.as_uri(), wait_until="load")
        images = page.evaluate(
            "() => Array.from(document.images, i => [i.complete, i.naturalWidth])"
        )
        assert images and all(done and width > 0 for done, width in images), images
        assert page.evaluate("() => document.scripts.length") == 0
    assert page.title().startswith("taolu report: ")
    assert not dialogs
    # Only the two pages themselves were loaded (data: URIs are not requests to anywhere).
    assert all(url.startswith(("file://", "data:")) for url in requests), requests


def test_report_reads_on_a_phone_and_a_laptop(trained, tmp_path, chromium):
    """At 390 px (a phone) nothing scrolls sideways and the verdict and the best accuracy are
    on the first screen; at 1280 px the plots span the page. Screenshots stay in tmp_path."""
    page_file = trained / "report" / "report.html"
    for width, height in ((390, 844), (1280, 800)):
        page = chromium.new_page(viewport={"width": width, "height": height})
        page.goto(page_file.as_uri(), wait_until="load")
        page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=True)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, (width, overflow)
        bottoms = page.evaluate(
            """() => ['.verdict', '.card'].map(
                s => document.querySelector(s).getBoundingClientRect().bottom)"""
        )
        assert all(bottom <= height for bottom in bottoms), (width, bottoms)
        plot_widths = page.evaluate(
            """() => Array.from(
                document.querySelectorAll('section:not(#where_it_looks) img:not(.thumb)'),
                i => i.getBoundingClientRect().width)"""
        )
        assert len(plot_widths) == len(LINKED_PLOTS)
        # Every plot as wide as the page allows (margins and the section's padding take the
        # rest of the window), and no wider than the phone's screen.
        assert all(0.85 * width <= shown <= width for shown in plot_widths), (width, plot_widths)
        page.close()
    assert (tmp_path / "report-390.png").is_file() and (tmp_path / "report-1280.png").is_file()


def test_first_screen_names_the_verdict_skipped_files_and_resolved_settings(tmp_path):
    run = write_fake_run(tmp_path / "run", ["cat", "dog"], config={"device": "auto"})
    summary = json.loads((run / "summary.json").read_text())
    summary["skipped_files"] = [{"path": "data/cat/broken.png", "reason": "truncated"}]
    summary["verdict"] = [
        {"kind": "gap", "message": "train accuracy is far above val", "advice": "--mixup 0.2"}
    ]
    summary["resolved"] = {"device": "cuda:0", "image_size": "28x28"}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    text = write_report(run).read_text(encoding="utf-8")
    overview = text[text.index('<section id="overview">') : text.index('<section id="loss">')]
    assert "1 thing to look at" in overview and "train accuracy is far above val" in overview
    assert "Try: --mixup 0.2" in overview and "90.00%" in overview
    skipped = text[text.index('<section id="skipped">') :]
    assert "data/cat/broken.png" in skipped and "truncated" in skipped
    config = text[text.index('<section id="configuration">') :]
    assert 'cuda:0 <span class="muted">(set: auto)</span>' in config
    # A healthy run says so.
    summary["verdict"] = []
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert "Healthy" in write_report(run).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- error analysis


def test_error_analysis_shows_the_top_losses_and_links_each_wrong_cell(trained):
    """The top losses by path with their pictures, and every wrong cell of the matrix a link
    to the section holding that pair's images; the counts are val_predictions.csv's."""
    from taolu.inspection import read_val_predictions

    rows = read_val_predictions(trained)
    page = trained / "report" / "report.html"
    text, tags = page.read_text(encoding="utf-8"), parse(page)
    worst = max(rows, key=lambda row: row["loss"])
    top = text.split('id="top-losses"', 1)[1].split("</section>", 1)[0]
    assert html.escape(worst["path"]) in top and "Top losses" in top
    assert tags.thumbs and all(src.startswith("data:image/png;base64,") for src in tags.thumbs)
    for src in tags.thumbs:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as picture:
            picture.load()
    wrong = [row for row in rows if row["true"] != row["predicted"]]
    assert wrong, "a 2-epoch digits run gets some wrong"
    pair_links = [link for link in tags.links if link.startswith("#pair-")]
    assert pair_links and all(link[1:] in tags.ids for link in pair_links)
    pairs = {(row["true"], row["predicted"]) for row in wrong}
    assert len(pair_links) == len(pairs)
    first = wrong[0]
    classes = json.loads((trained / "summary.json").read_text())["classes"]
    anchor = f"pair-{classes.index(first['true'])}-{classes.index(first['predicted'])}"
    section = text.split(f'id="{anchor}"', 1)[1].split("</h3>", 1)[0]
    pair = (first["true"], first["predicted"])
    count = sum((row["true"], row["predicted"]) == pair for row in wrong)
    assert section.endswith(f": {count}")


def test_label_issues_are_listed_when_the_run_has_them(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    text = write_report(run).read_text(encoding="utf-8")
    assert "has no label_issues.csv" in text
    (run / "label_issues.csv").write_text(
        "path,given,suggested,score\ndata/cat/<b>odd</b>.png,cat,dog,0.01\n", encoding="utf-8"
    )
    section = write_report(run).read_text(encoding="utf-8").split('id="label-issues"', 1)[1]
    assert "data/cat/&lt;b&gt;odd&lt;/b&gt;.png" in section
    assert '<td class="value">dog</td>' in section


def test_a_run_without_val_predictions_says_why(tmp_path):
    run = write_fake_run(tmp_path / "run", ["cat", "dog"])
    text = write_report(run).read_text(encoding="utf-8")
    section = text.split('id="top-losses"', 1)[1].split("</section>", 1)[0]
    assert "Not shown" in section and "val_predictions.csv" in section


def test_a_matrix_link_leads_to_its_pictures_in_chromium(trained, tmp_path, chromium):
    """Issue 15's sections render in Chromium: the top losses, where it looks, the confused
    pairs (a click on a wrong cell lands on its images), the likely-mislabelled list and the
    reliability diagram; every picture decodes and the console stays clean."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "label_issues.csv").write_text(
        "path,given,suggested,score\n#3,1,7,0.004\n", encoding="utf-8"
    )
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(write_report(run).as_uri(), wait_until="load")
    for section in ("#top-losses", "#where_it_looks", "#confused-pairs", "#label-issues"):
        assert page.locator(section).is_visible(), section
    assert page.locator("#reliability img").is_visible()
    assert page.locator("#label-issues td").first.inner_text() == "#3"
    link = page.locator("table.confusion a").first
    target = link.get_attribute("href")
    link.click()
    assert page.evaluate("() => location.hash") == target
    box = page.locator(target).bounding_box()
    assert box is not None and -2 <= box["y"] < 800  # scrolled into view (sub-pixel)
    pictures = page.evaluate(
        "() => Array.from(document.images, i => [i.complete, i.naturalWidth, i.className])"
    )
    assert all(done and width > 0 for done, width, _ in pictures), pictures
    assert any(kind == "thumb" for _, _, kind in pictures)
    assert not errors


def test_the_confusion_matrix_is_a_png_where_the_page_cannot_link_it(trained, tmp_path):
    """Without val_predictions.csv (a torchrun run, an older run) there are no images to link
    to: the matrix is drawn as a PNG again, and the page shows it."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "val_predictions.csv").unlink()
    text = write_report(run).read_text(encoding="utf-8")
    assert_png(run / "report" / "confusion_matrix.png")
    assert '<section id="confusion">' in text and 'table class="confusion"' not in text
