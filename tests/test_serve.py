"""`taolu serve`: POST /predict answers what `taolu predict --json` prints, GET /info and
/health, hostile requests get clear 4xx JSON errors while the server stays up, the page works
in a real Chromium, and the app mounts in a user's own ASGI app.

The server under test is `python -m taolu serve` in its own process, on loopback, reached
over real sockets (http.client, or raw sockets for requests no client library would send).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import taolu
from taolu.errors import ConfigError

URL_LINE = re.compile(r"taolu: serving .* at (http://127\.0\.0\.1:(\d+)/) \(Ctrl-C stops it\)")
BOUNDARY = "taolu-test-boundary"
# A file name that is also HTML: the page must show it as text and run nothing.
HOSTILE_NAME = '<img src=x onerror="alert(1)">.png'


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serving(command: list[str], cwd: Path) -> tuple[subprocess.Popen, str, int]:
    """Starts `command` (a taolu server) and reads stdout until its URL line."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        match = URL_LINE.search(line)
        if match:
            return process, match.group(1), int(match.group(2))
    process.kill()
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"no URL line; stdout {seen!r}, stderr {err!r}")


def stop(process: subprocess.Popen, signum: int) -> tuple[str, str]:
    process.send_signal(signum)
    return process.communicate(timeout=30)


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per (file name, content), and its type."""
    body = b"".join(
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return body + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def post(port: int, files: list[tuple[str, bytes]], query: str = "") -> tuple[int, object]:
    return post_body(port, *multipart(files), query=query)


def post_body(port: int, body: bytes, content_type: str, query: str = "") -> tuple[int, object]:
    return request(port, "POST", "/predict" + query, body, {"Content-Type": content_type})


def request(port, method, path, body=None, headers=None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(data) if is_json else data
    finally:
        connection.close()


def exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 60) -> tuple[int, dict]:
    """Sends a raw request (the body from a thread, so a server that answers early is heard
    while the rest is still going out) and returns (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head)

        def send_body() -> None:
            try:
                conn.sendall(body)
            except OSError:  # the server answered and closed: that is what is tested
                pass

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = read_response(conn)
        sender.join(timeout)
    return answer


def read_response(conn: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        rest += chunk
    return int(head.split()[1]), json.loads(rest[:length])


def post_head(port: int, length: int | None, content_type: str | None = None) -> bytes:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"{size}\r\n\r\n"
    ).encode()


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def bomb_png(width: int = 10000, height: int = 10000) -> bytes:
    """A valid PNG header claiming width x height pixels (100 megapixels, above Pillow's
    limit of about 89), in 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_arrays) -> Path:
    """a.png and b.png (two digits of different classes), junk.png (text), in one folder."""
    folder = tmp_path_factory.mktemp("serve-files")
    images, labels = digits_arrays
    second = next(i for i in range(1, len(labels)) if labels[i] != labels[0])
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[second]).save(folder / "b.png")
    (folder / "junk.png").write_text("this is not an image\n")
    return folder


@pytest.fixture(scope="module")
def server(digits_run, files):
    """`taolu serve` on the digits run: 1 MB uploads, 3 s to send a body."""
    command = [sys.executable, "-m", "taolu", "serve", digits_run.run_dir]
    limits = ["--port", free_port(), "--max-upload-mb", "1", "--request-timeout", "3"]
    process, url, port = start_serving([*command, *map(str, limits)], files)
    yield {"process": process, "url": url, "port": port}
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=30)


def predict_json(cli_main, run, names, files, monkeypatch, *options) -> list:
    """What `taolu predict RUN NAMES --json` prints, run in the files' folder."""
    monkeypatch.chdir(files)
    code, out, err = cli_main("predict", run, *names, "--json", *options)
    assert code in (0, 1), err
    return json.loads(out)


# --------------------------------------------------------------------------- the API


def test_predict_answers_what_taolu_predict_json_prints(
    server, files, digits_run, cli_main, monkeypatch
):
    port, run = server["port"], digits_run.run_dir
    good = [(name, (files / name).read_bytes()) for name in ("a.png", "b.png")]
    status, answer = post(port, good)
    assert status == 200
    assert answer == predict_json(cli_main, run, ["a.png", "b.png"], files, monkeypatch)
    assert answer[0]["predictions"][0]["class"] != answer[1]["predictions"][0]["class"]

    # An unreadable file is reported in its place and the rest are classified: status 422,
    # as predict's exit code is then 1.
    junk = ("junk.png", (files / "junk.png").read_bytes())
    status, answer = post(port, [good[0], junk, good[1]], query="?topk=2")
    expected = predict_json(
        cli_main, run, ["a.png", "junk.png", "b.png"], files, monkeypatch, "--topk", "2"
    )
    assert status == 422
    assert answer == expected
    assert "junk.png" in answer[1]["error"] and len(answer[0]["predictions"]) == 2


def test_info_health_and_openapi(server, digits_run, files):
    port = server["port"]
    status, info = request(port, "GET", "/info")
    assert status == 200
    assert info["name"] == Path(digits_run.run_dir).name
    assert info["classes"] == digits_run.summary["classes"]
    assert info["source"] == "checkpoint" and info["model"] == "fastcnn"
    assert info["epoch"] == digits_run.summary["best_epoch"]
    assert info["metrics"]["val_acc"] == pytest.approx(digits_run.best_val_acc)
    assert info["preprocessing"]["size"] == [8, 8]
    assert info["taolu_version"] == taolu.__version__
    assert info["limits"]["max_upload_mb"] == 1

    _, before = request(port, "GET", "/health")
    post(port, [("a.png", (files / "a.png").read_bytes())])
    status, health = request(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["images"] == before["images"] + 1

    status, schema = request(port, "GET", "/openapi.json")
    assert status == 200 and "multipart/form-data" in json.dumps(schema["paths"]["/predict"])


def test_unknown_answers_and_overlays_on_request(server, files, digits_run, cli_main, monkeypatch):
    """?reject_below=auto answers as predict --reject-below auto; ?explain=1 adds each
    image's overlay as a PNG data URL; /info says both are on offer."""
    import base64
    import io

    from taolu.checkpoint import read_state

    port, run = server["port"], digits_run.run_dir
    stored = read_state(digits_run.best_checkpoint).reject_threshold
    status, info = request(port, "GET", "/info")
    assert info["explanation"] == {"class_activation": True, "unknown_threshold": stored}
    good = [(name, (files / name).read_bytes()) for name in ("a.png", "b.png")]
    status, answer = post(port, good, query="?reject_below=auto")
    expected = predict_json(
        cli_main, run, ["a.png", "b.png"], files, monkeypatch, "--reject-below", "auto"
    )
    assert status == 200 and answer == expected and all("answer" in r for r in answer)
    status, answer = post(port, good, query="?reject_below=1")  # nothing is that sure
    assert [r["answer"] for r in answer] == ["unknown", "unknown"]

    status, answer = post(port, good, query="?explain=1&topk=2")
    assert status == 200
    for result, plain in zip(answer, expected, strict=True):
        assert result["predictions"][:2] == plain["predictions"][:2]
        head, data = result["explanation"].split(",", 1)
        assert head == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (256, 256)
    junk = ("junk.png", (files / "junk.png").read_bytes())
    status, answer = post(port, [junk, good[0]], query="?explain=1")
    assert status == 422 and "explanation" not in answer[0] and "explanation" in answer[1]
    for query, why in (
        ("?explain=yes", "explain must be 1 or 0"),
        ("?reject_below=2", "reject_below: '2' is not a probability"),
    ):
        status, answer = post(port, good, query=query)
        assert status == 400 and why in answer["error"], answer


def test_hostile_requests_get_clear_errors_and_the_server_stays_up(server, files):
    port, pid = server["port"], server["process"].pid
    good = [("a.png", (files / "a.png").read_bytes())]
    assert post(port, good)[0] == 200
    memory_before = resident_mb(pid)
    png = (files / "b.png").read_bytes()

    # Files that are not images, or not whole ones: named in their own result.
    for name, data, words in [
        ("notes.png", b"plain text, not an image", "not an image file"),
        ("half.png", png[: len(png) // 2], "half.png"),
        ("bomb.png", bomb_png(), "decompression-bomb limit"),
        ("empty.png", b"", "empty.png"),
    ]:
        status, answer = post(port, [(name, data)])
        assert status == 422, (name, answer)
        assert answer[0]["path"] == name and words in answer[0]["error"], answer

    # Requests refused as a whole, each with {"error": ...}.
    declared_200_mb = exchange(port, post_head(port, 200 * 2**20))  # only headers are sent
    big_body, _ = multipart([("big.png", b"x" * (5 * 2**18))])  # a 1.25 MB part
    in_chunks = [big_body[i : i + 0x10000] for i in range(0, len(big_body), 0x10000)]
    too_much_chunked = exchange(
        port,
        post_head(port, None),
        b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in in_chunks) + b"0\r\n\r\n",
    )
    thousand_files = multipart([(f"{i}.png", png) for i in range(1000)])
    refusals = {
        "200 MB upload": (declared_200_mb, 413, "--max-upload-mb"),
        "1.25 MB sent in chunks": (too_much_chunked, 413, "--max-upload-mb"),
        "1000 files": (
            exchange(port, post_head(port, len(thousand_files[0])), thousand_files[0]),
            413,
            "--max-files",
        ),
        "JSON": (
            request(port, "POST", "/predict", b'{"a": 1}', {"Content-Type": "application/json"}),
            415,
            "multipart/form-data",
        ),
        "text": (request(port, "POST", "/predict", b"hello"), 415, "files"),
        "broken multipart": (
            exchange(port, post_head(port, 40), b"--wrong-boundary\r\n" + b"\x00" * 22),
            400,
            "multipart",
        ),
        "another field": (post_body(port, *multipart(good, field="image")), 400, "'image'"),
        "no files": (post_body(port, *multipart([])), 400, "no images"),
        "bad topk": (post(port, good, query="?topk=-1"), 400, "topk"),
        "GET": (request(port, "GET", "/predict"), 405, ""),
    }
    for case, ((status, answer), expected, words) in refusals.items():
        assert status == expected, (case, status, answer)
        assert isinstance(answer, dict) and words in answer["error"], (case, answer)

    # Slow clients: one stalls in its headers, one in its body. Others are served meanwhile,
    # and the one stalled in its body is told so after --request-timeout (3 s).
    stalled_headers = socket.create_connection(("127.0.0.1", port), timeout=60)
    stalled_headers.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
    stalled_body = socket.create_connection(("127.0.0.1", port), timeout=60)
    stalled_body.sendall(post_head(port, 5000) + b"--" + BOUNDARY.encode())
    started = time.monotonic()
    try:
        assert post(port, good)[0] == 200
        status, answer = read_response(stalled_body)
        assert status == 408 and "3 s" in answer["error"]
        assert time.monotonic() - started >= 2.5
    finally:
        stalled_headers.close()
        stalled_body.close()

    assert server["process"].poll() is None, "the server died"
    status, answer = post(port, good)
    assert status == 200 and answer[0]["predictions"]
    assert resident_mb(pid) - memory_before < 100, "memory grew with the hostile requests"


# --------------------------------------------------------------------------- the page


@pytest.mark.slow
def test_page_in_chromium_shows_the_run_and_what_predict_says(
    server, files, digits_run, chromium, cli_main, monkeypatch, tmp_path
):
    expected = predict_json(cli_main, digits_run.run_dir, ["a.png", "b.png"], files, monkeypatch)
    hostile = tmp_path / HOSTILE_NAME
    hostile.write_bytes(b"not an image")

    page = chromium.new_page()
    requests, dialogs = [], []
    page.on("request", lambda sent: requests.append(sent.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server["url"], wait_until="load")
    page.locator("#run-name").filter(has_text=Path(digits_run.run_dir).name).wait_for()
    facts = page.locator("#run-facts").inner_text()
    shown_accuracy = float(re.search(r"validation accuracy\s+([\d.]+)%", facts).group(1))
    assert shown_accuracy == pytest.approx(100 * digits_run.best_val_acc, abs=0.06), facts

    page.set_input_files("#pick", [str(files / "a.png"), str(files / "b.png"), str(hostile)])
    page.locator(".card .predictions li").first.wait_for()
    page.locator(".card.failed").wait_for()
    page.locator("#status").filter(has_text="1 of 3").wait_for()
    cards = page.locator(".card")
    shown = {}
    for index in range(cards.count()):
        card = cards.nth(index)
        name = card.locator(".path").inner_text()
        shown[name] = (
            card.locator(".class-name").all_inner_texts(),
            card.locator(".error").inner_text() if card.locator(".error").is_visible() else "",
        )
    for result in expected:
        classes, error = shown[result["path"]]
        assert classes == [p["class"] for p in result["predictions"]] and not error
    assert shown[HOSTILE_NAME][0] == [] and "not an image file" in shown[HOSTILE_NAME][1]
    assert page.locator(".card img[src^='x']").count() == 0  # the name stayed text
    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)

    assert not dialogs
    origin = server["url"]
    assert all(url.startswith((origin, "blob:", "data:")) for url in requests), requests
    assert (tmp_path / "serve-page.png").stat().st_size > 0


def test_page_shows_the_overlay_and_unknown(server, files, digits_run, chromium):
    """The page asks for overlays and the run's threshold (/info offers both), shows each
    overlay, and marks the results the server answered "unknown". The threshold is moved
    between the two images' confidences on the way, so that exactly one is unknown."""
    tops = [
        result["predictions"][0]["probability"]
        for result in taolu.predict(digits_run.run_dir, [files / "a.png", files / "b.png"])
    ]
    assert tops[0] != tops[1]
    between = f"reject_below={(tops[0] + tops[1]) / 2:.8f}"
    page = chromium.new_page()
    asked = []

    def threshold_between(route):
        asked.append(route.request.url)
        route.continue_(url=route.request.url.replace("reject_below=auto", between))

    page.route("**/predict?*", threshold_between)
    page.goto(server["url"], wait_until="load")
    page.locator("#explain-choice").wait_for()  # shown: this model can be explained
    page.set_input_files("#pick", [str(files / "a.png"), str(files / "b.png")])
    page.locator("#status").filter(has_text="classified 2").wait_for()
    assert "reject_below=auto" in asked[0] and "explain=1" in asked[0]
    overlays = page.evaluate(
        """() => Array.from(document.querySelectorAll('.card .overlay'),
            i => [i.hidden, i.complete, i.naturalWidth, i.src.slice(0, 22)])"""
    )
    assert overlays == [[False, True, 256, "data:image/png;base64,"]] * 2, overlays
    unknown = page.locator(".card.unknown")
    assert unknown.count() == 1
    assert unknown.locator(".path").inner_text() == ("a.png" if tops[0] < tops[1] else "b.png")
    assert unknown.locator(".explanation").inner_text().startswith("unknown: less sure than")
    assert page.locator(".card:not(.unknown) .explanation").is_hidden()
    # Without the box ticked, no overlays are asked for.
    page.uncheck("#explain")
    page.set_input_files("#pick", [str(files / "a.png")])
    page.locator("#status").filter(has_text="classified 1").wait_for()
    assert "explain" not in asked[-1]
    assert page.locator(".card").first.locator(".overlay").is_hidden()


# --------------------------------------------------------------------------- starting, stopping


@pytest.mark.slow
def test_taolu_serve_in_python_takes_the_next_free_port_and_stops_on_ctrl_c(digits_run, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        run = str(digits_run.run_dir)
        script = f"import taolu; raise SystemExit(taolu.serve({run!r}, port={taken}))"
        process, url, port = start_serving([sys.executable, "-c", script], tmp_path)
        try:
            assert port > taken and url == f"http://127.0.0.1:{port}/"
            assert request(port, "GET", "/health")[1]["status"] == "ok"
            out, err = stop(process, signal.SIGINT)
            assert process.returncode == 0, err
            assert "taolu: server stopped" in out and "Traceback" not in err
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.slow
def test_app_mounts_in_a_users_asgi_app_and_serves_an_onnx_export(digits_run, files, tmp_path):
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    onnx = taolu.export(digits_run.run_dir, format="onnx", out=str(tmp_path / "digits.onnx"))
    users_app = Starlette(
        routes=[
            Mount("/digits", app=taolu.serving.app(digits_run.run_dir, topk=3)),
            Mount("/exported", app=taolu.serving.app(onnx.path)),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(users_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        good = [(name, (files / name).read_bytes()) for name in ("a.png", "b.png")]
        expected = taolu.predict(digits_run.run_dir, [files / "a.png", files / "b.png"], topk=3)
        for prefix in ("/digits", "/exported"):
            body, content_type = multipart(good)
            headers = {"Content-Type": content_type}
            status, answer = request(port, "POST", f"{prefix}/predict?topk=3", body, headers)
            assert status == 200
            assert [[p["class"] for p in r["predictions"]] for r in answer] == [
                [p["class"] for p in r["predictions"]] for r in expected
            ]
        exported = request(port, "GET", "/exported/info")[1]
        assert exported["source"] == "onnx"
        assert exported["explanation"]["class_activation"] is False
        body, content_type = multipart(good)
        status, answer = request(
            port, "POST", "/exported/predict?explain=1", body, {"Content-Type": content_type}
        )
        assert status == 400 and "gives no gradients" in answer["error"]
        status, page = request(port, "GET", "/digits/")
        assert status == 200 and b'src="static/page.js"' in page
        assert request(port, "GET", "/digits/static/page.js")[0] == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --------------------------------------------------------------------------- refusals


def test_torchscript_needs_trust_code(cli_main, tmp_path):
    scripted = tmp_path / "model.torchscript.pt"
    code, _, err = cli_main("serve", scripted)
    assert code == 2
    assert "holds code that would run" in err and "--trust-code" in err
    code, _, err = cli_main("serve", scripted, "--trust-code")
    assert code == 2 and "holds code" not in err and str(scripted) in err


def test_bad_options_are_refused(cli_main, digits_run):
    code, _, err = cli_main("serve", digits_run.run_dir, "--max-files", "0")
    assert code == 2 and "max_files" in err
    code, _, err = cli_main("serve", digits_run.run_dir, "--port", "70000")
    assert code == 2 and "--port 70000" in err
    with pytest.raises(ConfigError, match="unknown option 'max_file'"):
        taolu.serving.app(digits_run.run_dir, max_file=3)
    with pytest.raises(ConfigError, match="batch_window_ms"):
        taolu.serving.ServeOptions(batch_window_ms=-1)


def test_another_interface_is_named_in_a_warning(capsys):
    from taolu.ports import warn_unless_loopback

    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        with socket.socket() as sock:
            sock.bind((host, 0))  # bound, never listening
            warn_unless_loopback(sock, "the model")
        err = capsys.readouterr().err
        assert ("every network" in err) is warned, err


def test_building_the_command_line_imports_no_server_or_torch():
    check = (
        "import sys, taolu.cli; taolu.cli.build_parser().parse_args(['serve', 'x']); "
        "heavy = {'torch', 'starlette', 'uvicorn'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


# --------------------------------------------------------------------------- batching


def test_images_that_wait_together_go_through_the_model_together():
    from taolu.serving.batcher import Batcher

    release = threading.Event()
    sizes: list[int] = []

    def run(images: list[torch.Tensor]) -> torch.Tensor:
        sizes.append(len(images))
        if len(sizes) == 1:
            release.wait(30)  # the first batch runs until every later request is waiting
        if len(sizes) == 3:
            raise RuntimeError("the model failed")
        return torch.stack(images) * 10

    async def scenario():
        batcher = Batcher(run, max_batch=4, window_seconds=0)
        first = asyncio.ensure_future(batcher.submit([torch.tensor([1.0])]))
        while not sizes:
            await asyncio.sleep(0.01)
        later = [
            asyncio.ensure_future(batcher.submit([torch.tensor([2.0]), torch.tensor([3.0])])),
            asyncio.ensure_future(batcher.submit([torch.tensor([4.0]), torch.tensor([5.0])])),
            asyncio.ensure_future(batcher.submit([torch.tensor([6.0])])),
        ]
        await asyncio.sleep(0)  # each request's first step queues its images
        release.set()
        answers = await asyncio.gather(first, *later, return_exceptions=True)
        again = await batcher.submit([torch.tensor([7.0])])
        await batcher.close()
        return answers, again

    answers, again = asyncio.run(scenario())
    assert sizes == [1, 4, 1, 1]  # max_batch 4: two requests' images, then the fifth alone
    assert [[row.item() for row in answer] for answer in answers[:3]] == [
        [10.0],
        [20.0, 30.0],
        [40.0, 50.0],
    ]
    assert isinstance(answers[3], RuntimeError)  # its batch failed; the batcher went on
    assert again[0].item() == 70.0
