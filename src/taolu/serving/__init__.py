"""`taolu serve`: a trained model behind a web page and an HTTP API (POST /predict, GET /info,
GET /health), with requests that arrive together batched for the model.

app(run) is the ASGI app, to mount in your own server; serve(run) runs it with uvicorn.
"""

import importlib

from taolu.serving.options import ServeOptions

# Starlette, uvicorn and torch load on first use, so `taolu --help` stays fast.
_LAZY = {"app": "taolu.serving.routes", "serve": "taolu.serving.server"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taolu.serving' has no attribute {name!r}")


__all__ = ["ServeOptions", "app", "serve"]
