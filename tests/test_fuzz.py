"""A standing guard for every reader of untrusted bytes: the checkpoint loader, --weights
(.pth and .safetensors), the three export formats and their metadata, IDX, CIFAR's pickles,
SVHN's .mat, STL10's binaries, split.json, CSV lists, YAML configs, YAML layer lists and
image decoding. Valid files are mutated by hypothesis (tests/fuzz_worker.py says how), and
each case must end in taolu's own error or in success: never another exception's traceback,
a hang past a few seconds, or memory past the worker's limit.

The worker runs in a subprocess with a fixed seed and a small budget, so CI spends about a
minute here. A bigger budget, or another seed, by environment variable:

    TAOLU_FUZZ_EXAMPLES=500 TAOLU_FUZZ_SEED=7 .venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fuzz_worker.py")
EXAMPLES = int(os.environ.get("TAOLU_FUZZ_EXAMPLES", "8"))  # cases per reader
SEED = int(os.environ.get("TAOLU_FUZZ_SEED", "12"))
READERS = [
    "checkpoint",
    "weights",
    "onnx",
    "torchscript",
    "safetensors",
    "mnist",
    "cifar10",
    "svhn",
    "stl10",
    "split.json",
    "csv",
    "config",
    "layer list",
    "image decode",
]


@pytest.fixture(scope="module")
def fuzz_report(digits_run, tmp_path_factory) -> dict:
    """The worker's report over every reader: {"failures": [{"reader", "error"}], "tally":
    {reader: {"ok", "refused", "refusals"}}, ...}."""
    pytest.importorskip(
        "hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')"
    )
    result = tmp_path_factory.mktemp("fuzz") / "report.json"
    command = [
        sys.executable,
        str(WORKER),
        str(result),
        "--checkpoint",
        str(digits_run.run_dir / "weights" / "best.pt"),
        "--examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    try:
        # Generous: on a loaded 2-core machine the worker's imports and exports alone take a
        # minute; a case stuck in native code (which SIGALRM cannot stop) ends here.
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=600 + 30 * EXAMPLES
        )
    except subprocess.TimeoutExpired as stuck:
        printed = (stuck.stdout or b"").decode() if isinstance(stuck.stdout, bytes) else ""
        pytest.fail(f"the fuzz worker hung; its last lines:\n{printed[-2000:]}")
    assert done.returncode == 0, f"worker crashed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(result.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("reader", READERS)
def test_every_mutated_file_ends_in_taolus_error_or_success(fuzz_report, reader):
    assert reader in fuzz_report["readers"]
    failures = [failure for failure in fuzz_report["failures"] if failure["reader"] == reader]
    assert not failures, f"{reader}: {failures[0]['error']}"
    tally = fuzz_report["tally"][reader]
    assert tally.get("ok", 0) + tally.get("refused", 0) >= max(1, EXAMPLES // 2)  # cases ran
