"""`taolu serve` under load, against a naive one-request-one-forward server, side by side.

Both servers load the same model and read requests the same way (taolu's upload reader and
decoding policy); the naive one classifies each request on its own in a worker thread (one
forward pass per request, as a FastAPI/Starlette `def` handler would), while `taolu serve`
batches the images of requests that arrive together. Each server runs alone in its own
process; N clients on loopback (asyncio, keep-alive connections) post one digit image each,
again and again, for a bounded time. Prints requests/s and p50/p99 latency.

    .venv/bin/python benchmarks/serve_load.py                 # trains a 1-epoch mnist5k run
    .venv/bin/python benchmarks/serve_load.py --run runs/train --clients 1,32 --seconds 20
    .venv/bin/python benchmarks/serve_load.py --model mobilenet_v3_small --image-size 64

How much batching gains depends on the model's share of a request's cost: the HTTP request,
the upload and the decoding cost the same either way, and only the forward pass is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
BOUNDARY = "taolu-bench-boundary"


# --------------------------------------------------------------------------- the naive server


def naive_app(run: str):
    """One request, one forward: taolu's upload reader and classify_with per request."""
    import torch
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from taolu.classifier import load_classifier
    from taolu.inference import classify_with
    from taolu.serving.uploads import MemoryBudget, UploadLimits, read_images

    classifier = load_classifier(run, device=torch.device("cpu"))
    limits = UploadLimits(16 * 2**20, 64, 30.0)
    budget = MemoryBudget(8 * limits.max_bytes)

    async def predict(request: Request) -> JSONResponse:
        with budget.holding() as hold:
            images = await read_images(request.headers, request.stream(), limits, hold)
            results = await run_in_threadpool(
                classify_with, classifier, images, topk=5, batch_size=len(images), threads=1
            )
        return JSONResponse(results)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def run_naive_server(run: str, port: int) -> None:
    import uvicorn

    print(f"naive server at http://{HOST}:{port}/", flush=True)
    uvicorn.run(naive_app(run), host=HOST, port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- the clients


def request_bytes(image: bytes, port: int) -> bytes:
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="files"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def client(port: int, request: bytes, until: float, warm_until: float, latencies: list):
    """Posts `request` on one keep-alive connection until `until`; records latencies of
    requests sent after `warm_until`. Returns the number of failed requests."""
    reader, writer = await asyncio.open_connection(HOST, port)
    failures = 0
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            if started >= warm_until:
                latencies.append(time.perf_counter() - started)
                failures += not head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    return failures


async def load(port: int, request: bytes, clients: int, seconds: float, warmup: float):
    start = time.perf_counter()
    latencies: list[float] = []
    failures = await asyncio.gather(
        *(
            client(port, request, start + warmup + seconds, start + warmup, latencies)
            for _ in range(clients)
        )
    )
    return latencies, sum(failures)


# --------------------------------------------------------------------------- driving


def start_server(command: list[str], pattern: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    for line in process.stdout:
        match = re.search(pattern, line)
        if match:
            return process, int(match.group(1))
    raise RuntimeError(f"{command} did not start: {process.stderr.read()}")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_until_up(port: int) -> None:
    import http.client

    for _ in range(1200):  # up to 2 minutes: the naive server loads its model first
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", "/predict")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def measure(command, pattern, request_for, clients_list, seconds, warmup) -> dict:
    process, port = start_server(command, pattern)
    try:
        wait_until_up(port)
        rows = {}
        for clients in clients_list:
            latencies, failures = asyncio.run(
                load(port, request_for(port), clients, seconds, warmup)
            )
            cuts = statistics.quantiles(latencies, n=100)
            rows[clients] = {
                "rps": len(latencies) / seconds,
                "p50": statistics.median(latencies),
                "p99": cuts[98],
                "failures": failures,
            }
        return rows
    finally:
        process.terminate()
        process.communicate(timeout=30)


def digit_png() -> bytes:
    from PIL import Image

    from taolu.data.embedded import load_mnist5k

    images, _ = load_mnist5k()
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def trained_run(folder: Path, model: str, image_size: int) -> str:
    """One epoch on mnist5k: the served model's accuracy does not matter here, its cost does."""
    import taolu

    result = taolu.train(
        epochs=1,
        model=model,
        image_size=image_size,
        out=str(folder),
        name="bench",
        progress=False,
        verbose=False,
        report=False,
    )
    return str(result.run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run to serve (default: train mnist5k for 1 epoch)")
    parser.add_argument("--model", default="fastcnn", help="the model trained without --run")
    parser.add_argument("--image-size", type=int, default=0, help="its input size (0: 28)")
    parser.add_argument("--clients", default="32", help="comma-separated (default: 32)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per load")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time first")
    parser.add_argument("--naive-server", metavar="RUN", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        run_naive_server(args.naive_server, args.port)
        return

    clients_list = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or trained_run(Path(scratch), args.model, args.image_size)
        image = digit_png()
        python = sys.executable
        servers = {
            "naive (one forward per request)": (
                [python, __file__, "--naive-server", run, "--port", str(free_port())],
                r"naive server at http://[\d.]+:(\d+)/",
            ),
            "taolu serve (dynamic batching)": (
                [python, "-m", "taolu", "serve", run, "--port", str(free_port())],
                r"at http://[\d.]+:(\d+)/",
            ),
        }
        results = {
            name: measure(
                command,
                pattern,
                lambda port: request_bytes(image, port),
                clients_list,
                args.seconds,
                args.warmup,
            )
            for name, (command, pattern) in servers.items()
        }
    print(f"\n{os.cpu_count()} CPUs; {args.seconds:g} s per load after {args.warmup:g} s warm-up")
    print(f"{'server':34} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for name, rows in results.items():
        for clients, row in rows.items():
            print(
                f"{name:34} {clients:7d} {row['rps']:8.1f} {row['p50'] * 1e3:8.1f} "
                f"{row['p99'] * 1e3:8.1f} {row['failures']:6d}"
            )
    naive, batched = results.values()
    for clients in clients_list:
        ratio = batched[clients]["rps"] / naive[clients]["rps"]
        print(f"throughput at {clients} clients: {ratio:.2f}x the naive server")


if __name__ == "__main__":
    main()
