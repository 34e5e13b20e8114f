"""`taolu board`: TensorBoard on a runs folder, on 127.0.0.1 only, the next free port when the
one asked for is busy, a clean stop on Ctrl-C or SIGTERM, and refusals of folders without runs.

The page test drives Debian's /usr/bin/chromium through playwright (conftest's `chromium`);
it is skipped when either is missing.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import taolu

URL_LINE = re.compile(r"taolu: TensorBoard at (http://(\S+):(\d+)/) \(Ctrl-C stops it\)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder holding one finished 1-epoch run, runs/digits-run."""
    out = tmp_path_factory.mktemp("board") / "runs"
    taolu.train(
        data="digits", epochs=1, out=str(out), name="digits-run", progress=False, verbose=False
    )
    return out


def free_port(start: int | None = None) -> int:
    """A port that 127.0.0.1 can bind now: the kernel's pick, or the first free from `start`."""
    if start is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    for port in range(start, start + 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port from {start}")


def start_board(runs: Path, port: int, cwd: Path, *options: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "taolu", "board", str(runs), "--port", str(port), *options],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_url(process: subprocess.Popen, timeout: float = 60) -> tuple[str, str, int]:
    """Reads the board's stdout until its URL line; returns (url, host, port)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
            if URL_LINE.search(line):
                return
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        match = URL_LINE.search(line)
        if match:
            return match.group(1), match.group(2), int(match.group(3))
    process.kill()
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"no URL line within {timeout} s; stdout {seen!r}, stderr {err!r}")


def stop(process: subprocess.Popen, signum: int, within: float = 10) -> tuple[float, str, str]:
    """Sends `signum`; returns (seconds to exit, rest of stdout, stderr)."""
    started = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=within)
    return time.monotonic() - started, out, err


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)


def answers(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        try:
            client.connect((host, port))
        except OSError:
            return False
        return True


def non_loopback_addresses() -> list[str]:
    """IPv4 and IPv6 addresses of this machine that are not loopback (may be empty)."""
    found = set()
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))  # UDP: picks the outgoing interface, sends nothing
                found.add(probe.getsockname()[0])
        except OSError:
            pass
    try:
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return sorted(
        address
        for address in found
        if not address.startswith("127.")
        and address not in ("::1", "0.0.0.0", "::")
        and not address.startswith("fe80")
    )


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the server


def test_url_is_loopback_and_sigterm_stops_it_without_touching_runs(runs, tmp_path, tree_snapshot):
    before = tree_snapshot(runs)
    port = free_port()
    process = start_board(runs, port, tmp_path)
    try:
        url, host, shown_port = read_url(process)
        assert url == f"http://127.0.0.1:{port}/"
        assert (host, shown_port) == ("127.0.0.1", port)
        assert answers("127.0.0.1", port)
        if has_ipv6_loopback():
            assert not answers("::1", port), "TensorBoard also answers on ::1"
        seconds, out, err = stop(process, signal.SIGTERM)
        assert process.returncode == 0, err
        assert "taolu: TensorBoard stopped" in out
        assert "Traceback" not in err
        assert seconds < 5
    finally:
        kill(process)
    assert tree_snapshot(runs) == before, "taolu board changed the runs folder"
    assert not (tmp_path / "runs").exists()


def test_not_reachable_from_other_addresses_of_this_machine(runs, tmp_path):
    others = non_loopback_addresses()
    if not others:
        pytest.skip("this machine has no non-loopback address to try")
    port = free_port()
    process = start_board(runs, port, tmp_path)
    try:
        read_url(process)
        assert answers("127.0.0.1", port)
        for address in others:
            assert not answers(address, port), f"TensorBoard answers on {address}"
    finally:
        kill(process)


def test_every_interface_is_warned_about_however_it_is_spelt(runs, tmp_path):
    """`--host 0` binds 0.0.0.0 as surely as `--host 0.0.0.0` does, and says so."""
    port = free_port()
    process = start_board(runs, port, tmp_path, "--host", "0")
    try:
        read_url(process)
        _, _, err = stop(process, signal.SIGTERM)
    finally:
        kill(process)
    assert "--host 0.0.0.0 serves TensorBoard to every network this machine is on" in err


@pytest.mark.parametrize(
    ("address", "everywhere"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("0:0:0:0:0:0:0:0", True),
        ("::ffff:0.0.0.0", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("192.0.2.7", False),
        ("fe80::1%eth0", False),
    ],
)
def test_listening_everywhere_is_decided_by_the_parsed_address(address, everywhere):
    from taolu.ports import listens_everywhere

    assert listens_everywhere(address) is everywhere


def test_page_shows_the_run_and_its_scalars_in_chromium(runs, tmp_path, chromium):
    process = start_board(runs, free_port(), tmp_path)
    try:
        url, _, _ = read_url(process)
        page = chromium.new_page()
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        # TensorBoard's Time Series dashboard: the run in the run list ...
        run_name = page.get_by_text("digits-run", exact=True).filter(visible=True)
        run_name.first.wait_for(timeout=60_000)
        # ... and, once the tags are filtered (cards below the fold are not drawn),
        # the val/acc card with a row for the run in its data table.
        page.locator('input[placeholder^="Filter tags"]').fill("val/acc")
        page.keyboard.press("Escape")  # close the tag-name suggestions
        card_title = page.get_by_text("val/acc", exact=True).filter(visible=True)
        card_title.first.wait_for(timeout=60_000)
        deadline = time.monotonic() + 60
        while run_name.count() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run_name.count() >= 2, "the val/acc card shows no row for digits-run"
    finally:
        kill(process)


# --------------------------------------------------------------------------- ports and Ctrl-C


def test_busy_port_takes_the_next_free_one_and_ctrl_c_stops_it(runs, tmp_path):
    from taolu.cli import build_parser

    defaults = build_parser().parse_args(["board"])
    assert (defaults.runs_dir, defaults.host, defaults.port) == ("runs", "127.0.0.1", 6006)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        expected = free_port(taken + 1)
        process = start_board(runs, taken, tmp_path)
        try:
            _, host, port = read_url(process)
            assert host == "127.0.0.1"
            assert port == expected
            assert answers("127.0.0.1", port)
            seconds, out, err = stop(process, signal.SIGINT)
            assert process.returncode == 0, err
            assert "taolu: TensorBoard stopped" in out
            assert "interrupted" not in err and "Traceback" not in err
            assert seconds < 5
        finally:
            kill(process)


def test_a_port_taken_between_the_check_and_the_bind_is_skipped(monkeypatch, capsys):
    """The race: the probe said free, the server's own bind fails; werkzeug would print and
    sys.exit(1) on that OSError, so the next port must be taken instead."""
    from taolu.track import board

    monkeypatch.setattr(board, "port_is_free", lambda host, port: True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound, not listening: TensorBoard's connect check passes
        taken = busy.getsockname()[1]
        expected = free_port(taken + 1)
        chosen: list = []
        make = board._server_factory("127.0.0.1", taken, chosen)
        flags = argparse.Namespace(
            host="127.0.0.1", port=taken, bind_all=False, reuse_port=False, path_prefix=""
        )
        server = make(lambda environ, start_response: [], flags)
        try:
            assert chosen == [server]
            assert server.server_address == ("127.0.0.1", expected)
        finally:
            server.server_close()
    assert "in use" not in capsys.readouterr().err  # werkzeug's own message never shown


def test_no_free_port_in_range_is_refused(monkeypatch):
    from taolu.errors import ConfigError
    from taolu.track import board

    monkeypatch.setattr(board, "port_is_free", lambda host, port: False)
    make = board._server_factory("127.0.0.1", 7000, [])
    with pytest.raises(ConfigError, match="no free port from 7000 to 7099"):
        make(None, argparse.Namespace())


# --------------------------------------------------------------------------- refusals


def test_missing_and_empty_folders_are_refused(tmp_path, cli_main):
    missing = tmp_path / "nothing-here"
    code, out, err = cli_main("board", missing)
    assert code == 2
    assert str(missing) in err and "does not exist" in err and "taolu train" in err
    assert not missing.exists()

    empty = tmp_path / "empty-runs"
    (empty / "train").mkdir(parents=True)
    (empty / "train" / "metrics.csv").write_text("epoch\n")
    code, out, err = cli_main("board", empty)
    assert code == 2
    assert str(empty) in err and "no TensorBoard event files" in err
    assert sorted(p.name for p in empty.rglob("*")) == ["metrics.csv", "train"]

    a_file = tmp_path / "runs.txt"
    a_file.write_text("")
    code, out, err = cli_main("board", a_file)
    assert code == 2 and str(a_file) in err


def test_bad_port_is_refused(runs, cli_main):
    code, _, err = cli_main("board", runs, "--port", "70000")
    assert code == 2 and "--port 70000" in err


def test_busy_listener_is_seen_by_the_probe():
    from taolu.ports import port_is_free

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        assert not port_is_free("localhost", port)
