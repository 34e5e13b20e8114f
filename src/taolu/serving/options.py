"""ServeOptions: how `taolu serve` answers, each field also a flag of the command (kept free of
heavy imports, so that building the command line stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from taolu.errors import ConfigError

# The first port `taolu serve` tries.
DEFAULT_PORT = 8000


def _option(default: float, help: str, metavar: str) -> object:
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class ServeOptions:
    """How the server answers; every field is also a `taolu serve` flag."""

    topk: int = _option(5, "classes per image when a request does not ask (?topk=K)", "K")
    max_upload_mb: float = _option(16.0, "one request's size, all its images together, in MB", "MB")
    max_files: int = _option(64, "images in one request", "N")
    request_timeout: float = _option(30.0, "seconds to receive one request's body", "SECONDS")
    max_batch: int = _option(32, "images in one forward pass", "N")
    batch_window_ms: float = _option(
        2.0, "milliseconds a batch that is not full waits for more images", "MS"
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"option '{spec.name}': must be a number, got {value!r}")
            if spec.type == "int" and value != int(value):
                raise ConfigError(f"option '{spec.name}': must be a whole number, got {value}")
        for name in ("topk", "max_upload_mb", "max_files", "request_timeout", "max_batch"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"option '{name}': must be above 0, got {getattr(self, name)}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ConfigError(
                f"option 'batch_window_ms': must be 0 to 1000, got {self.batch_window_ms}"
            )

    @classmethod
    def from_keywords(cls, options: dict[str, object]) -> ServeOptions:
        """ServeOptions from keyword arguments, refusing unknown names."""
        known = sorted(spec.name for spec in fields(cls))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; options: {', '.join(known)}")
        return cls(**options)
