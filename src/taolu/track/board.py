"""`taolu board`: TensorBoard on a folder of runs, in this process, on 127.0.0.1 only.

TensorBoard is started through its Python API (`tensorboard.program.TensorBoard`) with the
pure-Python data loader (`--load_fast=false`: no Rust data server subprocess, no second port).
The server binds exactly one socket, on `host` (127.0.0.1 unless the caller names another
interface); it is never bound to all interfaces by default. Ports are tried from `port`
upwards; the first one this process can actually bind is taken. Nothing is written into the
runs folder (TensorBoard's own "info file" is only written by its CLI `main`, not by
`launch`, which is what runs here).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from taolu.errors import ConfigError
from taolu.ports import (
    PORT_ATTEMPTS,
    bind_error,
    check_host_and_port,
    no_free_port,
    port_is_free,
    warn_unless_loopback,
)

# How often TensorBoard looks for new event files (seconds): a run still training shows up
# within this long.
RELOAD_INTERVAL = 5
# How often the waiting loop looks whether Ctrl-C or SIGTERM came.
STOP_POLL_SECONDS = 0.2


class _PortTaken(Exception):
    """Bind or listen failed with EADDRINUSE. Deliberately not an OSError: werkzeug turns any
    OSError from binding into a message on stderr and sys.exit(1)."""


def _check_runs_dir(runs_dir: Path) -> None:
    advice = (
        f"train first (taolu train --out {runs_dir}) or point taolu board at the folder that "
        "holds your run directories (taolu's default is runs)"
    )
    if not runs_dir.exists():
        raise ConfigError(f"runs folder {runs_dir} does not exist; {advice}")
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir} is a file, not a folder of runs; {advice}")
    try:
        found = any(path.is_file() for path in runs_dir.rglob("*tfevents*"))
    except OSError as error:
        raise ConfigError(f"cannot read runs folder {runs_dir}: {error}") from error
    if not found:
        raise ConfigError(
            f"runs folder {runs_dir} holds no TensorBoard event files "
            f"(events.out.tfevents.*); {advice}"
        )


def _server_factory(host: str, first_port: int, chosen: list) -> Any:
    """A `server_class` for `program.TensorBoard`: tries first_port, first_port + 1, ...;
    each port is checked with a throw-away socket, and a bind that still fails because
    another program took the port in between moves on to the next one. The server made is
    appended to `chosen`, so that it can be shut down."""
    from tensorboard import program

    class Server(program.WerkzeugServer):
        def server_bind(self) -> None:
            try:
                super().server_bind()
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise _PortTaken from error
                raise bind_error(host, self.server_address[1], error) from error

        def server_activate(self) -> None:
            try:
                super().server_activate()
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise _PortTaken from error
                raise bind_error(host, self.server_address[1], error) from error

    last_port = min(first_port + PORT_ATTEMPTS - 1, 65535)

    def make(wsgi_app: Any, flags: argparse.Namespace) -> Any:
        for port in range(first_port, last_port + 1):
            if not port_is_free(host, port):
                continue
            port_flags = argparse.Namespace(**vars(flags))
            port_flags.port = port
            try:
                server = Server(wsgi_app=wsgi_app, flags=port_flags)
            except (_PortTaken, program.TensorBoardPortInUseError):
                # Taken since the check (or, for TensorBoard's own check, something answers
                # on localhost:port although host:port was free).
                continue
            chosen.append(server)
            return server
        raise no_free_port(host, first_port)

    return make


def _quiet_tensorboard_logging() -> None:
    """TensorBoard logs every reload at INFO and werkzeug every request; only errors are
    worth showing in a terminal that is waiting for Ctrl-C."""
    for name in ("tensorboard", "werkzeug", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_board(runs_dir: Path, *, host: str = "127.0.0.1", port: int = 6006) -> int:
    """Serve TensorBoard for `runs_dir` on http://host:port/ (or the next free port) until
    Ctrl-C or SIGTERM; returns 0 once stopped.

    Raises ConfigError when the folder is missing or holds no event files, when the port is
    out of range, or when no port from `port` to `port + 99` can be bound.
    """
    runs_dir = Path(runs_dir)
    _check_runs_dir(runs_dir)
    host = check_host_and_port(host, port, default_port=6006)

    _quiet_tensorboard_logging()
    from tensorboard import program

    chosen: list = []
    board = program.TensorBoard(server_class=_server_factory(host, port, chosen))
    try:
        board.configure(
            argv=[
                None,
                "--logdir",
                str(runs_dir.resolve()),
                "--host",
                host,
                "--port",
                str(port),
                "--load_fast",
                "false",
                "--reload_interval",
                str(RELOAD_INTERVAL),
            ]
        )
    except ValueError as error:
        raise ConfigError(f"TensorBoard refused its options: {error}") from error
    _quiet_tensorboard_logging()  # plugins may have reset levels while loading

    # Ctrl-C (SIGINT) and SIGTERM only raise a flag, which the loop below polls: an exception
    # raised wherever the signal lands (in the middle of printing the URL, or of starting the
    # server) could skip the shutdown. signal.signal works in the main thread only; called
    # from another thread, run_board serves until the process ends.
    stop_requested: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop_requested.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    server = None
    try:
        url = board.launch()
        server = chosen[0]
        warn_unless_loopback(server.socket, "TensorBoard")
        print(f"taolu: TensorBoard at {url} (Ctrl-C stops it)", flush=True)
        while not stop_requested:
            time.sleep(STOP_POLL_SECONDS)
    except KeyboardInterrupt:
        pass  # only when the handlers could not be installed
    finally:
        if server is not None:
            server.shutdown()  # returns once serve_forever has left its loop (<= 0.5 s)
            server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    print("taolu: TensorBoard stopped", flush=True)
    return 0
