"""What a newcomer meets first: bare `taolu`, --version, --help grouped and readable, and a
typo answered with the command's own usage and a guess. In-process through `taolu.cli.main`."""

from __future__ import annotations

import re

import pytest

from taolu.cli import main
from taolu.config import FIELDS, OPTION_GROUPS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `taolu ARGV...`, whether main returns or argparse exits."""
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bare_taolu_lists_every_command_with_an_example(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    for command in ("train", "eval", "predict", "data", "board", "report", "export", "serve"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command
        assert re.search(rf"^\s+taolu {command}\b", out, re.MULTILINE), f"no example of {command}"
    assert re.search(r"^\s+taolu models show \w+", out, re.MULTILINE)


def test_version_names_taolu_torch_and_torchvision(capsys):
    import importlib.metadata

    import taolu

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith(f"taolu {taolu.__version__} ")
    assert f"torch {importlib.metadata.version('torch')}" in out


def test_a_mistyped_train_flag_gets_the_train_usage_and_a_guess(capsys):
    code, out, err = run(capsys, "train", "--epocs", "3")
    assert code == 2 and out == ""
    assert err.startswith("usage: taolu train ")
    assert "did you mean --epochs?" in err
    assert "taolu train --help" in err


@pytest.mark.parametrize(
    ("argv", "guess"),
    [
        (["trian"], "train"),
        (["data", "chek", "x"], "check"),
        (["eval", "run", "--checkpoint", "bset"], "best"),
        (["models", "shwo", "resnet18"], "show"),
    ],
)
def test_a_mistyped_command_or_choice_gets_a_guess(capsys, argv, guess):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"did you mean {guess}?" in err, err


@pytest.mark.parametrize(
    ("argv", "guess"),
    [
        (["--model", "resnet-18"], "resnet18"),
        (["--data", "mnist5"], "mnist5k"),
        (["--data", "cifar-10"], "cifar10"),
        (["--scheduler", "cosin"], "cosine"),
    ],
)
def test_a_mistyped_model_data_or_choice_value_gets_a_guess(tmp_path, cli_main, argv, guess):
    code, _, err = cli_main("train", *argv, "--out", tmp_path / "OUT")
    assert code == 2
    assert err.startswith("taolu: error:")
    assert f"did you mean {guess}?" in err, err
    assert not (tmp_path / "OUT").exists()


def test_nothing_close_gets_no_guess(capsys):
    code, _, err = run(capsys, "train", "--zzzzzz", "1")
    assert code == 2
    assert "--zzzzzz" in err and "did you mean" not in err


# --------------------------------------------------------------------------- train --help


def help_sections(text: str) -> dict[str, str]:
    """'TITLE options' heading -> the text up to the next heading."""
    parts = re.split(r"^(\w+) options:$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_train_help_groups_every_option_under_its_heading(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    sections = help_sections(out.split("examples:")[0])
    assert list(sections) == list(OPTION_GROUPS)
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        section = sections[spec.metadata["group"]]
        assert re.search(rf"^\s+{re.escape(flag)}\b", section, re.MULTILINE), (flag, name)


def test_train_help_shows_meaningful_placeholders_and_plain_defaults(capsys):
    _, out, _ = run(capsys, "train", "--help")
    text = re.sub(r"\s+", " ", out)
    assert "--data SET_OR_FOLDER" in text
    assert "--lr LR|auto" in text
    assert "--scheduler onecycle|cosine|step|plateau|constant" in text
    assert "(default: mnist5k)" in text and "(default: on)" in text
    assert "(default: 0.0005)" in text  # --weight-decay, written as the README writes it
    for placeholder in ("STR", "INT", "FLOAT", "ANY", "FLOAT | STR"):
        assert f" {placeholder} " not in text and f" {placeholder}]" not in text, placeholder


def test_train_help_ends_with_the_examples(capsys):
    _, out, _ = run(capsys, "train", "--help")
    examples = out.split("examples:")[1]
    assert "taolu train --data ~/photos" in examples
    assert "options:" not in examples


def test_a_reader_that_stops_early_gets_no_traceback():
    """`taolu models | head -1`: the pipe is closed when taolu writes; it ends quietly (141,
    as a shell reports SIGPIPE) with nothing on stderr."""
    import subprocess
    import sys

    listing = subprocess.Popen(
        [sys.executable, "-m", "taolu", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    listing.stdout.close()  # the reader is gone before the listing is written
    errors = listing.stderr.read().decode()
    assert listing.wait(timeout=120) == 141, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors


def test_serve_help_names_what_each_value_is(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for placeholder in ("--topk K", "--max-upload-mb MB", "--max-files N", "--batch-window-ms MS"):
        assert placeholder in text
    assert "MAX_FILES" not in text and "TOPK" not in text
