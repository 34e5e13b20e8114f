"""Reading `POST /predict`'s body: multipart/form-data with one image per field named `files`,
within limits on size, number of files and time, into in-memory EncodedImage items.

python-multipart parses the stream as it arrives; each part is kept in memory (the request is
bounded, and images are small), where Starlette's form parser would spool every file through
a temporary file with a thread hop per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from taolu.data.decode import EncodedImage

# How many requests' worth of --max-upload-mb may be held in memory at once, all requests
# together; past it a request is answered 503 (busy) instead of growing memory.
UPLOADS_IN_MEMORY = 8
HOW_TO_SEND = "send each image as a multipart/form-data field named files (curl -F files=@a.png)"


class UploadRefused(Exception):
    """A request /predict will not read: its HTTP status and the message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # one request's body
    max_files: int  # one request's parts
    timeout_seconds: float  # to receive one request's whole body


class MemoryBudget:
    """Bytes of request bodies held by all requests together (one event loop, so no lock)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    @contextlib.contextmanager
    def holding(self) -> Iterator[_Hold]:
        """A request's share: what it takes is given back when the block ends."""
        hold = _Hold(self)
        try:
            yield hold
        finally:
            self.held -= hold.taken


class _Hold:
    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.taken = 0

    def take(self, count: int) -> None:
        if self.budget.held + count > self.budget.limit:
            raise UploadRefused(503, "the server is receiving too many uploads; try again")
        self.budget.held += count
        self.taken += count


class _Parts:
    """python-multipart's callbacks, collecting the `files` parts as EncodedImage items."""

    def __init__(self, max_files: int):
        self.max_files = max_files
        self.images: list[EncodedImage] = []
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        if len(self.images) >= self.max_files:
            raise UploadRefused(
                413,
                f"more than {self.max_files} files in one request; send at most that many "
                "per request (the server's --max-files)",
            )
        self._headers, self._data = {}, bytearray()

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if field != "files":
            raise UploadRefused(400, f"unexpected form field {field!r}: {HOW_TO_SEND}")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self._name = filename or f"upload {len(self.images) + 1}"

    def on_part_end(self) -> None:
        self.images.append(EncodedImage(self._name, bytes(self._data)))
        self._data = bytearray()

    def on_end(self) -> None:
        self.ended = True


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "no content type"
        raise UploadRefused(415, f"got {shown}; {HOW_TO_SEND}")
    if not options.get(b"boundary"):
        raise UploadRefused(400, f"multipart/form-data without a boundary; {HOW_TO_SEND}")
    return options[b"boundary"]


def _declared_length(value: str | None, limits: UploadLimits) -> None:
    if value is None:
        return
    if not value.isdigit():
        raise UploadRefused(400, f"Content-Length {value!r} is not a number")
    if int(value) > limits.max_bytes:
        raise UploadRefused(413, _too_large(limits))


def _too_large(limits: UploadLimits) -> str:
    return (
        f"the upload is larger than {limits.max_bytes / 2**20:g} MB (the server's "
        "--max-upload-mb); send fewer or smaller images per request"
    )


async def read_images(
    headers: Mapping[str, str],
    body: AsyncIterator[bytes],
    limits: UploadLimits,
    hold: _Hold,
) -> list[EncodedImage]:
    """The images of one request, refused with UploadRefused (a 4xx or 503 status and a
    message) as soon as a limit is crossed, before the rest of the body is read. The bytes
    read count against `hold` (see MemoryBudget.holding)."""
    boundary = _boundary(headers.get("content-type", ""))
    _declared_length(headers.get("content-length"), limits)
    parts = _Parts(limits.max_files)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0

    async def receive() -> None:
        nonlocal received
        async for chunk in body:
            hold.take(len(chunk))
            received += len(chunk)
            if received > limits.max_bytes:
                raise UploadRefused(413, _too_large(limits))
            parser.write(chunk)
        parser.finalize()

    try:
        await asyncio.wait_for(receive(), limits.timeout_seconds)
    except asyncio.TimeoutError:
        raise UploadRefused(
            408, f"the request body did not arrive within {limits.timeout_seconds:g} s"
        ) from None
    except FormParserError as error:
        raise UploadRefused(
            400, f"not valid multipart/form-data ({error}); {HOW_TO_SEND}"
        ) from None
    except ClientDisconnect:  # nobody is left to read the answer; no traceback for it
        raise UploadRefused(400, "the client closed the connection in the middle") from None
    if not parts.ended:
        raise UploadRefused(400, f"the multipart body ended early; {HOW_TO_SEND}")
    if not parts.images:
        raise UploadRefused(400, f"no images in the request; {HOW_TO_SEND}")
    return parts.images
