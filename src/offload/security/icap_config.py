"""A frontend's malware scanning through ICAP (``icap = { ... }``), as configured: a typed,
frozen model checked before anything runs (docs/inspection.md, docs/config.md).

Standalone on purpose (it imports nothing from :mod:`offload.config.model`), so the frontend
model can embed :class:`IcapConfig` without an import cycle.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainValidator, Strict, model_validator

from offload.config.base import Invalid, Model, show
from offload.config.units import parse_duration, parse_size
from offload.proto.icap import IcapService, parse_icap_url

ScanTarget = Literal["request-body", "response-body"]

MAX_SCAN_SIZE = 256 * 1024 * 1024
"""The largest ``max_size``: a body that size is held in memory while it is scanned."""
DEFAULT_MAX_SIZE = 10 * 1024 * 1024


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{show(value)} is not an ICAP URL",
                      "write the service's URL, like \"icap://127.0.0.1:1344/avscan\"")
    try:
        parse_icap_url(value)
    except ValueError as exc:
        raise Invalid(str(exc), "write the service's URL, like "
                      "\"icap://127.0.0.1:1344/avscan\" (port 1344 when none is given)") from None
    return value


def _max_size(value: object) -> int:
    size = parse_size(value)
    if not 1 <= size <= MAX_SCAN_SIZE:
        raise Invalid(f"{show(value)} is out of range",
                      "scan between 1 byte and 256MiB of a body (it is held in memory)")
    return size


def _timeout(value: object) -> float:
    seconds = parse_duration(value)
    if not 0.001 <= seconds <= 600:
        raise Invalid(f"{show(value)} is out of range", "give the scan between 1ms and 10m, "
                      "like \"10s\"")
    return seconds


class IcapConfig(Model):
    """Uploads (REQMOD) and, if asked, downloads (RESPMOD) sent to an ICAP antivirus service.

    A detection answers 403 (upload) or replaces the download with a page saying so; bodies
    larger than ``max_size`` pass unscanned (``oversize = "pass"``, counted) or are refused;
    when the service fails or is too slow, ``on_error`` decides."""

    url: Annotated[str, PlainValidator(_url)]
    scan: Annotated[tuple[ScanTarget, ...], Field(min_length=1)] = ("request-body",)
    max_size: Annotated[int, BeforeValidator(_max_size)] = DEFAULT_MAX_SIZE
    timeout: Annotated[float, BeforeValidator(_timeout)] = 10.0
    """For one scan, from asking for a connection to the verdict."""
    on_error: Literal["allow", "deny"] = "deny"
    """When the service cannot give a verdict (down, too slow, a broken answer): let the
    body through, or answer 503 (upload) / 502 (download). Denying is the safe default."""
    oversize: Literal["pass", "deny"] = "pass"
    """A body larger than ``max_size``: pass it unscanned (counted), or refuse it (413 for an
    upload, 502 for a download)."""
    max_connections: Annotated[int, Strict(), Field(ge=1, le=1024)] = 16
    """Connections to the service per worker (scans beyond them wait, then fail busy)."""

    @model_validator(mode="after")
    def _distinct(self) -> IcapConfig:
        if len(set(self.scan)) != len(self.scan):
            raise Invalid(f"scan = {show(list(self.scan))} names a target twice",
                          "list \"request-body\" and/or \"response-body\" once each")
        return self

    @property
    def service(self) -> IcapService:
        return parse_icap_url(self.url)

    @property
    def uploads(self) -> bool:
        return "request-body" in self.scan

    @property
    def downloads(self) -> bool:
        return "response-body" in self.scan


__all__ = ["IcapConfig", "ScanTarget"]
