"""What lasts exactly as long as a run: the processes it computes with (device, precision, the
torchrun process group), stop requests from signals, and --deterministic. Each is a context
manager, so no way out of a run can leave one behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taolu.engine.distributed import (
    Cluster,
    device_for,
    join_cluster,
    launched_by_torchrun,
    leave_cluster,
)
from taolu.engine.precision import Precision, pick_device, pick_precision
from taolu.errors import ConfigError


@dataclass(frozen=True)
class Compute:
    """Where and how this process computes: its device, its arithmetic, and its place among
    the processes torchrun started (one process: rank 0 of 1)."""

    device: torch.device
    precision: Precision
    cluster: Cluster


@contextlib.contextmanager
def computing(device: str, precision: str, sync_bn: bool) -> Iterator[Compute]:
    """The run's device and precision; under torchrun, the process group is joined here (each
    GPU process drives its own GPU) and left when the run ends, however it ends."""
    chosen = pick_device(device)
    cluster = join_cluster(chosen)
    try:
        chosen = device_for(chosen, cluster)
        arithmetic = pick_precision(precision, chosen)
        if sync_bn and not (cluster.active and chosen.type == "cuda"):
            raise ConfigError(
                "option 'sync_bn': synchronised BatchNorm needs several GPU processes "
                "(torchrun --nproc_per_node=N on CUDA); it is not available on the CPU"
            )
        yield Compute(chosen, arithmetic, cluster)
    finally:
        leave_cluster(cluster)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Only deterministic kernels while the run lasts (--deterministic); torch's global
    switches are put back afterwards, since `taolu.train` is a library call."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM while a run trains: the first asks for a stop after the
    current optimizer step, where a `last` checkpoint is saved that resumes exactly; a second
    Ctrl-C stops at once. Called, it answers whether a stop was asked for."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals while the run lasts (main thread only; under torchrun the
        agent's own handling stays), then put the previous handlers back."""
        if threading.current_thread() is not threading.main_thread() or launched_by_torchrun():
            yield self
            return

        def handle(number: int, frame: Any) -> None:
            if self.signal_name is not None and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: at once
            self.signal_name = signal.Signals(number).name
            print(
                f"\ntaolu: {self.signal_name}: stopping after the current step and saving "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def message(self, where: str, last_path: Path, run_dir: Path) -> str:
        return (
            f"stopped by {self.signal_name} {where}; saved {last_path}. "
            f"Resume with: taolu train --resume {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130  # 128 + the signal's number
