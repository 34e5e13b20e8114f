"""The ASGI app of `taolu serve`, built with Starlette around one classifier: the page (GET /),
POST /predict, GET /info, GET /health and GET /openapi.json. Every error is a JSON object
{"error": message} with a 4xx or 5xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles
from torch import nn

from taolu import __version__
from taolu.classifier import Classifier, load_classifier
from taolu.data.decode import EncodedImage
from taolu.engine.precision import pick_device
from taolu.errors import ConfigError
from taolu.explanations import Explainer, data_url, explainable_network
from taolu.inference import (
    answered,
    input_reader,
    probabilities_of,
    reject_threshold,
    sort_read_inputs,
    top_classes,
)
from taolu.serving.batcher import Batcher
from taolu.serving.options import ServeOptions
from taolu.serving.uploads import (
    UPLOADS_IN_MEMORY,
    MemoryBudget,
    UploadLimits,
    UploadRefused,
    read_images,
)

PAGE = Path(__file__).parent / "page"
# Everything the page loads comes from this server (images the user picks are blob: URLs).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def run_name(run: str | Path) -> str:
    """The run's directory name: RUN, RUN/weights/best.pt and RUN/export/model.onnx give RUN."""
    path = Path(run).expanduser().resolve()
    if path.is_dir():
        return path.name
    return path.parent.parent.name if path.parent.name in ("weights", "export") else path.stem


def _recorded_metrics(run: str | Path, epoch: int | None) -> dict[str, float]:
    """An exported file's epoch's validation metrics from its run's metrics.csv (when it sits
    in RUN/export/); {} when there is none."""
    path = Path(run).expanduser().resolve()
    table = path.parent.parent / "metrics.csv"
    if epoch is None or path.parent.name != "export" or not table.is_file():
        return {}
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("epoch") == str(epoch)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    metrics = {}
    for key, value in (rows[-1] if rows else {}).items():
        with contextlib.suppress(TypeError, ValueError):
            if key.startswith("val_") and value:
                metrics[key] = float(value)
    return metrics


class Service:
    """What the routes share: the classifier, the decoding threads, the batcher, the limits."""

    def __init__(self, classifier: Classifier, options: ServeOptions, info: dict[str, Any]):
        self.classifier = classifier
        self.options = options
        self.info = info
        self.read = input_reader(classifier)
        # Decoding (Pillow, torchvision resizing) releases the GIL: a few threads decode the
        # images of concurrent requests while the event loop keeps receiving.
        self.decoders = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="taolu-decode"
        )
        self.batcher = Batcher(
            lambda images: probabilities_of(classifier, images),
            max_batch=options.max_batch,
            window_seconds=options.batch_window_ms / 1000,
        )
        max_bytes = int(options.max_upload_mb * 2**20)
        self.limits = UploadLimits(max_bytes, options.max_files, options.request_timeout)
        self.budget = MemoryBudget(max_bytes * UPLOADS_IN_MEMORY)
        # Class-activation overlays need the torch network (not an ONNX/TorchScript file).
        self.explainer = Explainer(classifier) if classifier.network is not None else None

    async def classify(
        self,
        images: list[EncodedImage],
        topk: int,
        threshold: float | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        """`taolu predict --json`'s objects for the images: decoded on the decoding threads,
        classified in the batches the batcher forms with other requests' images; with a
        `threshold`, each with its "answer" (its class or "unknown"), with `explain` its
        "explanation", the overlay of where the model looked as a PNG data URL."""
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, self.read, image) for image in images)
        )
        results, tensors, slots = sort_read_inputs(images, outcomes)
        if tensors:
            rows = await self.batcher.submit(tensors)
            ranked = top_classes(torch.stack(rows), self.classifier.classes, topk)
            for slot, predictions in zip(slots, ranked, strict=True):
                results[slot].update(answered(predictions, threshold))
            if explain and self.explainer is not None:
                classes = [results[slot]["predictions"][0]["class"] for slot in slots]
                # On the model thread, never beside a batch: the map's hooks sit on the model.
                pictures = await self.batcher.run_alone(self.explainer.overlays, tensors, classes)
                for slot, picture in zip(slots, pictures, strict=True):
                    results[slot]["explanation"] = data_url(picture)
        return results

    async def close(self) -> None:
        await self.batcher.close()
        self.decoders.shutdown(wait=False, cancel_futures=True)


def _topk(request: Request, default: int) -> int:
    value = request.query_params.get("topk")
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UploadRefused(400, f"topk must be a whole number of at least 1, got {value!r}")
    return int(value)


def _reject_below(request: Request, classifier: Classifier) -> float | None:
    """?reject_below=P|auto, as predict's --reject-below: the threshold, or None."""
    try:
        return reject_threshold(classifier, request.query_params.get("reject_below"))
    except ConfigError as error:
        message = str(error).replace("option 'reject_below'", "reject_below")
        raise UploadRefused(400, message) from None


def _explain(request: Request, service: Service) -> bool:
    """?explain=1: an overlay per image, where the model can give one."""
    value = request.query_params.get("explain", "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise UploadRefused(400, f"explain must be 1 or 0, got {value!r}")
    if value in ("1", "true") and service.explainer is None:
        try:
            explainable_network(service.classifier)
        except ConfigError as error:
            message = str(error).replace("option 'explain'", "explain")
            raise UploadRefused(400, message) from None
    return value in ("1", "true")


def _routes(service: Service) -> list:
    async def predict(request: Request) -> Response:
        """Classify images: multipart/form-data, one image per field named `files`.
        ---
        summary: Top-k classes of each image, as `taolu predict --json` prints them
        parameters:
          - {name: topk, in: query, required: false, schema: {type: integer, minimum: 1}}
          - name: reject_below
            in: query
            required: false
            description: 'P in 0..1 or auto (the threshold stored with the run): each result
              gets "answer", its class or "unknown" below it'
            schema: {type: string}
          - name: explain
            in: query
            required: false
            description: '1: each result gets "explanation", a PNG data URL of the image
              with where the model looked for its top class (checkpoints and safetensors)'
            schema: {type: integer, enum: [0, 1]}
        requestBody:
          content:
            multipart/form-data:
              schema:
                type: object
                properties:
                  files: {type: array, items: {type: string, format: binary}}
        responses:
          200: {description: 'every image classified: [{path, predictions: [{class,
            probability}]}]'}
          422: {description: 'the same array, with {path, error} for each unreadable image'}
          400: {description: '{error}: not multipart, a field other than files, no images'}
          408: {description: '{error}: the body did not arrive within --request-timeout'}
          413: {description: '{error}: over --max-upload-mb or --max-files'}
          415: {description: '{error}: not multipart/form-data'}
        """
        topk = _topk(request, service.options.topk)
        threshold = _reject_below(request, service.classifier)
        explain = _explain(request, service)
        with service.budget.holding() as hold:
            images = await read_images(request.headers, request.stream(), service.limits, hold)
            results = await service.classify(images, topk, threshold, explain)
        status = 422 if any("error" in result for result in results) else 200
        return JSONResponse(results, status_code=status)

    async def info(request: Request) -> Response:
        """What is being served.
        ---
        summary: The run's name, model, classes, preprocessing, validation metrics, limits
          and the taolu version
        responses:
          200: {description: JSON object}
        """
        return JSONResponse(service.info)

    async def health(request: Request) -> Response:
        """Whether the server answers, and how it has batched so far.
        ---
        summary: '{status: ok, batches, images, largest_batch}'
        responses:
          200: {description: JSON object}
        """
        batcher = service.batcher
        return JSONResponse(
            {
                "status": "ok",
                "batches": batcher.batches,
                "images": batcher.images,
                "largest_batch": batcher.largest,
            }
        )

    schemas = SchemaGenerator(
        {
            "openapi": "3.0.0",
            "info": {"title": "taolu serve", "version": service.info["taolu_version"]},
        }
    )

    async def openapi(request: Request) -> Response:
        return JSONResponse(schemas.get_schema(routes=request.app.routes))

    async def page(request: Request) -> Response:
        return FileResponse(PAGE / "index.html")

    return [
        Route("/", page, include_in_schema=False),
        Route("/predict", predict, methods=["POST"]),
        Route("/info", info),
        Route("/health", health),
        Route("/openapi.json", openapi, include_in_schema=False),
        Mount("/static", StaticFiles(directory=PAGE), name="static"),
    ]


async def _json_error(request: Request, error: Exception) -> Response:
    if isinstance(error, UploadRefused):
        status, message = error.status, error.message
    elif isinstance(error, HTTPException):
        status, message = error.status_code, error.detail
    else:
        status, message = 500, f"the server failed: {type(error).__name__}: {error}"
    # A refused upload may leave most of its body unread: that connection cannot be reused.
    headers = {"connection": "close"} if isinstance(error, UploadRefused) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (a plain ASGI wrapper: Starlette's
    BaseHTTPMiddleware would add a task and a copy per request)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def app(
    run: str | Path,
    *,
    checkpoint: str = "best",
    model: nn.Module | None = None,
    device: str = "auto",
    trust_code: bool = False,
    **options: Any,
) -> Starlette:
    """The ASGI app serving `run` (a run directory, a checkpoint, or a file `taolu export`
    wrote), to run with any ASGI server or mount in your own app. `options` are
    ServeOptions' fields (topk, max_upload_mb, max_files, request_timeout, max_batch,
    batch_window_ms). The model is loaded now, so a bad run is refused here."""
    settings = ServeOptions.from_keywords(options)
    classifier = load_classifier(
        run, checkpoint=checkpoint, model=model, device=pick_device(device), trust_code=trust_code
    )
    service = Service(classifier, settings, describe(run, classifier, settings))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await service.close()

    starlette = Starlette(
        routes=_routes(service),
        exception_handlers={
            HTTPException: _json_error,
            UploadRefused: _json_error,
            Exception: _json_error,
        },
        lifespan=lifespan,
    )
    starlette.add_middleware(_SecurityHeaders)
    starlette.state.service = service
    return starlette


def describe(run: str | Path, classifier: Classifier, options: ServeOptions) -> dict[str, Any]:
    """GET /info's answer."""
    about = classifier.about
    metrics = about.get("metrics") or _recorded_metrics(run, about.get("epoch"))
    return {
        "name": run_name(run),
        "source": classifier.source,
        "model": about.get("model", ""),
        "epoch": about.get("epoch"),
        "classes": classifier.classes,
        "preprocessing": classifier.preprocessing.to_dict(),
        "metrics": metrics,
        "topk": options.topk,
        "limits": {
            "max_upload_mb": options.max_upload_mb,
            "max_files": options.max_files,
            "max_batch": options.max_batch,
        },
        # Whether ?explain=1 gives overlays, and the threshold ?reject_below=auto applies.
        "explanation": {
            "class_activation": classifier.network is not None,
            "unknown_threshold": classifier.reject_threshold,
        },
        "taolu_version": __version__,
    }
