"""`python -m taolu` is the `taolu` command."""

from taolu.cli import run

run()
