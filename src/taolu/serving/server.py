"""`taolu serve`: the app run by uvicorn on one socket taolu binds itself (127.0.0.1 unless
another interface is named; the first free port from the one asked for), until Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from torch import nn

from taolu.ports import check_host_and_port, listen_on_first_free, url_of, warn_unless_loopback
from taolu.serving.options import DEFAULT_PORT
from taolu.serving.routes import app as build_app

# Seconds Ctrl-C waits for requests in progress before closing their connections (a slow
# client must not hold the shutdown).
GRACEFUL_SECONDS = 5
# Connections and requests in progress at once; past it uvicorn answers 503.
MAX_CONNECTIONS = 256


class _Server(uvicorn.Server):
    """uvicorn's server, but Ctrl-C and SIGTERM end `serve` with a return, not by raising
    the signal again afterwards (uvicorn re-raises it, which would kill the process with
    SIGTERM's status instead of taolu's clean exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in handled}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    checkpoint: str = "best",
    model: nn.Module | None = None,
    device: str = "auto",
    trust_code: bool = False,
    **options: Any,
) -> int:
    """Serve `run` (a run directory, a checkpoint, or a file `taolu export` wrote) on
    http://host:port/ (or the next free port) until Ctrl-C or SIGTERM; returns 0 once stopped.
    `options` are those of `taolu.serving.app` (topk, max_upload_mb, max_files, ...)."""
    host = check_host_and_port(host, port, default_port=DEFAULT_PORT)
    application = build_app(
        run, checkpoint=checkpoint, model=model, device=device, trust_code=trust_code, **options
    )
    config = uvicorn.Config(
        application,
        log_config=None,  # leave the caller's logging alone
        log_level="warning",
        access_log=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,
    )
    server = _Server(config)
    sock = listen_on_first_free(host, port)
    try:
        url = url_of(sock)
        warn_unless_loopback(sock, "the model")
        info = application.state.service.info
        print(
            f"taolu: serving {info['name']} ({info['source']}, {len(info['classes'])} classes) "
            f"at {url} (Ctrl-C stops it)",
            flush=True,
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("taolu: server stopped", flush=True)
    return 0
