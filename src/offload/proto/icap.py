"""ICAP (RFC 3507) for offload as a client, sans-IO: requests to write, responses to read.

offload asks an ICAP server (an antivirus gateway such as c-icap with ClamAV) whether an upload
(REQMOD) or a download (RESPMOD) may pass. This module builds the bytes of those requests and of
OPTIONS, and parses the server's answers; :mod:`offload.http.icap_client` moves the bytes.

Theory of operation. A request is the ICAP head, then the encapsulated HTTP head(s), then the
body in HTTP/1.1 chunked coding (RFC 3507 §4.4). offload always sends ``Allow: 204`` so a clean
object costs one short answer. With a ``Preview`` (§4.5) only the first bytes go out at first:
the server answers ``100 Continue`` (send the rest), or decides at once (204, 200). A body that
fits in the preview ends with ``0; ieof`` so the server knows there is no more.

A response is parsed strictly and within fixed bounds, as every peer of a proxy is: the status
line must be ``ICAP/1.0 NNN reason``, lines end with CRLF, header names are tokens, the
``Encapsulated`` offsets (§4.4.1) must be in order and within the limits, the encapsulated HTTP
heads must end where the offsets say, and the chunked body is counted (and discarded: offload
answers with pages of its own) up to a limit. Anything else is an :class:`IcapProtocolError`
and the connection is closed. The one leniency is header folding (continuation lines that
start with a space or tab, RFC 2616 §2.2, which ICAP builds on): c-icap folds
``X-Violations-Found`` that way.

A verdict (:func:`classify`) is ``clean`` (204), ``infected`` (200 carrying
``X-Infection-Found``, ``X-Virus-ID`` or ``X-Violations-Found``, or a REQMOD answered with an
HTTP response instead of a request: the server blocked it) or ``error`` (anything else,
including a 200 that modifies the message without naming a threat: offload does not apply
modifications, so the operator's ``on_error`` policy decides).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal
from urllib.parse import urlsplit

from offload.errors import OffloadError
from offload.proto.http_types import Headers

ICAP_PORT = 1344
"""The port RFC 3507 §4.2 names when the URL has none."""

MAX_HEAD = 16 * 1024
"""The largest ICAP head (status line and header fields) offload reads."""
MAX_HEADER_FIELDS = 64
MAX_HTTP_HEAD = 32 * 1024
"""The largest encapsulated HTTP head(s) in a response."""
MAX_DISCARDED_BODY = 4 * 1024 * 1024
"""The largest encapsulated body offload reads (and throws away) to keep a connection."""
MAX_CHUNK_LINE = 256
MAX_SIGNATURE = 128
"""A threat name is cut to this many characters (it goes to logs and metrics)."""

Method = Literal["REQMOD", "RESPMOD"]
Kind = Literal["clean", "infected", "error"]

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_STATUS_LINE = re.compile(rb"ICAP/1\.0 ([1-5][0-9][0-9])(?: ([\t\x20-\x7e]*))?\Z")
_HTTP_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,8})((?:[ \t]*;[\t\x20-\x7e]*)?)\Z")
_ENC_ENTRY = re.compile(r"(req-hdr|res-hdr|req-body|res-body|null-body|opt-body)=([0-9]{1,6})\Z")
_SIGNATURE_CHAR = re.compile(r"[^A-Za-z0-9._:/+()\[\]-]")
_HOST = re.compile(r"[A-Za-z0-9.-]+\Z|\[[0-9A-Fa-f:.]+\]\Z")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*\Z")


class IcapProtocolError(OffloadError):
    """The ICAP server broke the protocol (or a limit): the connection cannot be trusted."""

    def __init__(self, message: str, reason: str = "icap_bad_response") -> None:
        self.reason = reason
        super().__init__(message)


# ------------------------------------------------------------------------------ the service


@dataclass(frozen=True, slots=True)
class IcapService:
    """Where to ask: ``icap://host[:port]/path[?query]``."""

    host: str
    port: int
    path: str
    """The service path with its query (``/avscan``, ``/srv_clamav?mode=simple``)."""

    @property
    def uri(self) -> bytes:
        host = self.host
        return f"icap://{host}:{self.port}{self.path}".encode("ascii")

    @property
    def host_field(self) -> bytes:
        return f"{self.host}:{self.port}".encode("ascii")


def parse_icap_url(url: str) -> IcapService:
    """The service of an ``icap://`` URL; :class:`ValueError` in offload's words otherwise."""
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):  # urlsplit would drop CR, LF and tabs
        raise ValueError(f"{url!r} contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme != "icap":
        raise ValueError(f"{url!r} is not an icap:// URL (icaps:// is not supported)")
    host = parts.hostname or ""
    if "@" in parts.netloc or not _HOST.match(f"[{host}]" if ":" in host else host):
        raise ValueError(f"{url!r} has no usable host (no user info; a name or an IP address)")
    if ":" in host:
        try:
            ip_address(host)
        except ValueError:
            raise ValueError(f"{url!r} has a malformed IPv6 address") from None
        host = f"[{host}]"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.fragment or not _PATH.match(parts.path or "/") or any(
            c in parts.query for c in " \t\r\n\"<>\\^`{|}"):
        raise ValueError(f"{url!r} has a service path that cannot be sent as it is")
    if port == 0:
        raise ValueError(f"{url!r} names port 0")
    return IcapService(host, port if port is not None else ICAP_PORT, path)


# ------------------------------------------------------------------------------ requests


def options_request(service: IcapService) -> bytes:
    """OPTIONS (RFC 3507 §4.10): what the service supports (methods, preview size, ISTag)."""
    return (b"OPTIONS %b ICAP/1.0\r\nHost: %b\r\nEncapsulated: null-body=0\r\n\r\n"
            % (service.uri, service.host_field))


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """The bytes of one REQMOD/RESPMOD: ``first`` now; ``rest`` only after ``100 Continue``
    (empty when the whole body went with the first part)."""

    first: bytes
    rest: bytes
    preview: bool
    """A preview was sent and not marked ``ieof``: the server may answer 100."""


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body) if body else b""


def _check_http_head(head: bytes, what: str) -> None:
    if not head.endswith(b"\r\n\r\n") or b"\r\n\r\n" in head[:-4] or b"\n" in head.replace(
            b"\r\n", b""):
        raise ValueError(f"the encapsulated {what} must be one HTTP/1.1 head ending in CRLF CRLF")


def scan_request(service: IcapService, method: Method, http_request: bytes, *,
                 http_response: bytes | None = None, body: bytes, preview: int | None,
                 extra: tuple[tuple[bytes, bytes], ...] = ()) -> ScanRequest:
    """REQMOD (``http_response`` None) or RESPMOD of ``body`` (RFC 3507 §4.8, §4.9).

    ``preview`` is the server's Preview size from OPTIONS (None: no preview); ``extra`` are
    further ICAP header fields (``X-Client-IP``). The HTTP heads are complete HTTP/1.1 heads.
    """
    _check_http_head(http_request, "request head")
    if method == "RESPMOD":
        if http_response is None:
            raise ValueError("RESPMOD needs the HTTP response head")
        _check_http_head(http_response, "response head")
    elif http_response is not None:
        raise ValueError("REQMOD encapsulates no response head")
    heads = http_request + (http_response or b"")
    if method == "REQMOD":
        entries = f"req-hdr=0, {'req-body' if body else 'null-body'}={len(http_request)}"
    else:
        entries = (f"req-hdr=0, res-hdr={len(http_request)}, "
                   f"{'res-body' if body else 'null-body'}={len(heads)}")
    lines = [b"%b %b ICAP/1.0" % (method.encode(), service.uri),
             b"Host: " + service.host_field, b"Allow: 204"]
    for name, value in extra:
        if not _TOKEN.match(name) or not _VALUE.match(value):
            raise ValueError(f"ICAP header field {name!r} cannot be sent as it is")
        lines.append(name + b": " + value)
    use_preview = preview is not None and bool(body)
    if use_preview:
        assert preview is not None
        size = min(preview, len(body))
        lines.append(b"Preview: %d" % size)
    lines.append(b"Encapsulated: " + entries.encode())
    head = b"\r\n".join(lines) + b"\r\n\r\n" + heads
    if not body:
        return ScanRequest(head, b"", False)
    if not use_preview:
        return ScanRequest(head + _chunked(body) + b"0\r\n\r\n", b"", False)
    if len(body) <= size:
        return ScanRequest(head + _chunked(body) + b"0; ieof\r\n\r\n", b"", False)
    return ScanRequest(head + _chunked(body[:size]) + b"0\r\n\r\n",
                       _chunked(body[size:]) + b"0\r\n\r\n", True)


# ------------------------------------------------------------------------------ responses


@dataclass(frozen=True, slots=True)
class IcapResponse:
    """One ICAP response, with the encapsulated HTTP head(s) and the body's size (not its
    bytes)."""

    status: int
    reason: bytes
    headers: Headers
    encapsulated: tuple[tuple[str, int], ...] = ()
    http_head: bytes = b""
    http_status: int | None = None
    """The status of an encapsulated HTTP response (``res-hdr``)."""
    body_size: int = 0
    keep_alive: bool = True

    def header(self, name: bytes) -> bytes | None:
        """The (first) value of a header field, by case-insensitive name."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    def has(self, part: str) -> bool:
        return any(name == part for name, _ in self.encapsulated)


def parse_encapsulated(value: bytes) -> tuple[tuple[str, int], ...]:
    """The ``Encapsulated`` list (RFC 3507 §4.4.1): heads in order, one body entry last,
    offsets strictly increasing from 0."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise IcapProtocolError("Encapsulated is not ASCII") from None
    entries: list[tuple[str, int]] = []
    for item in text.split(","):
        match = _ENC_ENTRY.match(item.strip(" \t"))
        if match is None:
            raise IcapProtocolError(f"Encapsulated entry {item.strip()!r} is malformed")
        entries.append((match.group(1), int(match.group(2))))
    names = [name for name, _ in entries]
    order = {"req-hdr": 0, "res-hdr": 1}
    *heads, (last, _) = entries
    if last in order or any(name not in order for name, _ in heads):
        raise IcapProtocolError("Encapsulated must list the heads first and end with a body")
    if len(set(names)) != len(names) or [order[n] for n, _ in heads] != sorted(
            order[n] for n, _ in heads):
        raise IcapProtocolError("Encapsulated lists a part twice or out of order")
    offsets = [offset for _, offset in entries]
    if offsets[0] != 0:
        raise IcapProtocolError("Encapsulated must start at offset 0")
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        raise IcapProtocolError("Encapsulated offsets must increase")
    if offsets[-1] > MAX_HTTP_HEAD:
        raise IcapProtocolError("the encapsulated HTTP head is too large", "icap_too_large")
    return tuple(entries)


_STATE_HEAD, _STATE_HTTP, _STATE_CHUNK_LINE, _STATE_CHUNK_DATA, _STATE_CHUNK_END, _STATE_LAST, \
    _STATE_DONE = range(7)


class IcapResponseParser:
    """Reads one ICAP response from bytes fed in any pieces (construct one per response).

    ``feed`` returns the response once it is complete (then :attr:`trailing` holds whatever
    followed it), ``None`` while more is needed, and raises :class:`IcapProtocolError` on
    anything malformed or too large. Memory is bounded by the head limits plus one read.
    """

    __slots__ = ("_body_size", "_buffer", "_encapsulated", "_headers", "_http_head",
                 "_http_status", "_reason", "_remaining", "_scan_from", "_state", "_status",
                 "max_body", "max_head", "max_http_head", "trailing")

    def __init__(self, *, max_head: int = MAX_HEAD, max_http_head: int = MAX_HTTP_HEAD,
                 max_body: int = MAX_DISCARDED_BODY) -> None:
        self.max_head = max_head
        self.max_http_head = max_http_head
        self.max_body = max_body
        self.trailing = b""
        """What followed the response (set once it is complete)."""
        self._buffer = bytearray()
        self._state = _STATE_HEAD
        self._scan_from = 0
        self._status = 0
        self._reason = b""
        self._headers: Headers = []
        self._encapsulated: tuple[tuple[str, int], ...] = ()
        self._http_head = b""
        self._http_status: int | None = None
        self._remaining = 0
        self._body_size = 0

    @property
    def started(self) -> bool:
        """Some of the response has arrived."""
        return bool(self._buffer) or self._state != _STATE_HEAD

    def feed(self, data: bytes) -> IcapResponse | None:
        if self._state == _STATE_DONE:
            self.trailing += data
            return None
        self._buffer += data
        while True:
            state = self._state
            if state == _STATE_HEAD:
                if not self._read_head():
                    return None
            elif state == _STATE_HTTP:
                if len(self._buffer) < self._remaining:
                    return None
                self._read_http_heads(bytes(self._buffer[:self._remaining]))
                del self._buffer[:self._remaining]
                if self._state == _STATE_DONE:
                    return self._done()
            elif state == _STATE_CHUNK_LINE:
                if not self._read_chunk_line():
                    return None
            elif state == _STATE_CHUNK_DATA:
                take = min(self._remaining, len(self._buffer))
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining:
                    return None
                self._state = _STATE_CHUNK_END
            else:  # the CRLF after a chunk's data, or after the last chunk
                if len(self._buffer) < 2:
                    return None
                if self._buffer[:2] != b"\r\n":
                    raise IcapProtocolError("a chunk does not end with CRLF")
                del self._buffer[:2]
                if state == _STATE_LAST:
                    return self._done()
                self._state = _STATE_CHUNK_LINE

    # -------------------------------------------------------------- pieces

    def _line_end(self, limit: int, what: str) -> int:
        """Where the CRLF ending the buffer's first line starts (-1: not there yet)."""
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > limit:
                raise IcapProtocolError(f"{what} is too long", "icap_too_large")
            return -1
        if end > limit:
            raise IcapProtocolError(f"{what} is too long", "icap_too_large")
        return end

    def _read_head(self) -> bool:
        start = max(0, self._scan_from - 3)
        end = self._buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buffer) > self.max_head:
                raise IcapProtocolError("the ICAP head is too large", "icap_too_large")
            self._scan_from = len(self._buffer)
            return False
        if end + 4 > self.max_head:
            raise IcapProtocolError("the ICAP head is too large", "icap_too_large")
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        self._parse_head(head)
        return True

    def _parse_head(self, head: bytes) -> None:
        if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
            raise IcapProtocolError("the ICAP head has a bare CR or LF")
        status_line, *lines = head.split(b"\r\n")
        match = _STATUS_LINE.match(status_line)
        if match is None:
            raise IcapProtocolError(f"not an ICAP/1.0 status line: {status_line[:80]!r}")
        self._status = int(match.group(1))
        self._reason = match.group(2) or b""
        headers: Headers = []
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                if not headers:
                    raise IcapProtocolError("the ICAP head starts with a continuation line")
                if not _VALUE.match(line):
                    raise IcapProtocolError("a header field value has a control character")
                name, value = headers[-1]
                headers[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" "))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise IcapProtocolError(f"malformed header field line: {line[:80]!r}")
            value = value.strip(b" \t")
            if not _VALUE.match(value):
                raise IcapProtocolError("a header field value has a control character")
            headers.append((name, value))
            if len(headers) > MAX_HEADER_FIELDS:
                raise IcapProtocolError("too many ICAP header fields", "icap_too_large")
        self._headers = headers
        encapsulated = [v for n, v in headers if n.lower() == b"encapsulated"]
        if len(encapsulated) > 1:
            raise IcapProtocolError("Encapsulated appears twice")
        status = self._status
        if encapsulated:
            if status == 100:
                raise IcapProtocolError("100 Continue carries no Encapsulated")
            self._encapsulated = parse_encapsulated(encapsulated[0])
            if status == 204 and self._encapsulated[-1] != ("null-body", 0):
                raise IcapProtocolError("204 No Content encapsulates something")
            if self._encapsulated[-1][1] > self.max_http_head:
                raise IcapProtocolError("the encapsulated HTTP head is too large",
                                        "icap_too_large")
        elif status == 200:
            raise IcapProtocolError("200 without Encapsulated")
        self._remaining = self._encapsulated[-1][1] if self._encapsulated else 0
        self._state = _STATE_HTTP

    def _read_http_heads(self, heads: bytes) -> None:
        entries = self._encapsulated
        for (name, start), (_, end) in itertools.pairwise(entries):
            part = heads[start:end]
            if not part.endswith(b"\r\n\r\n") or b"\r\n\r\n" in part[:-2]:
                raise IcapProtocolError(f"the encapsulated {name} does not end where "
                                        "Encapsulated says")
            if name == "res-hdr":
                match = _HTTP_STATUS_LINE.match(part[:part.find(b"\r\n")])
                if match is None:
                    raise IcapProtocolError("the encapsulated response has no HTTP status line")
                self._http_status = int(match.group(1))
        self._http_head = heads
        if entries and entries[-1][0] in ("req-body", "res-body", "opt-body"):
            self._state = _STATE_CHUNK_LINE
        else:
            self._state = _STATE_DONE

    def _read_chunk_line(self) -> bool:
        end = self._line_end(MAX_CHUNK_LINE, "a chunk size line")
        if end < 0:
            return False
        match = _CHUNK_LINE.match(bytes(self._buffer[:end]))
        if match is None:
            raise IcapProtocolError("malformed chunk size line")
        del self._buffer[:end + 2]
        size = int(match.group(1), 16)
        if size == 0:
            self._state = _STATE_LAST
            return True
        self._body_size += size
        if self._body_size > self.max_body:
            raise IcapProtocolError("the encapsulated body is too large", "icap_too_large")
        self._remaining = size
        self._state = _STATE_CHUNK_DATA
        return True

    def _done(self) -> IcapResponse:
        self._state = _STATE_DONE
        self.trailing = bytes(self._buffer)
        self._buffer = bytearray()
        connection = b",".join(v for n, v in self._headers if n.lower() == b"connection")
        keep_alive = b"close" not in [t.strip(b" \t").lower() for t in connection.split(b",")]
        return IcapResponse(self._status, self._reason, self._headers, self._encapsulated,
                            self._http_head, self._http_status, self._body_size, keep_alive)


# ------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class IcapOptions:
    """What OPTIONS said of the service (RFC 3507 §4.10.2)."""

    methods: frozenset[str]
    preview: int | None
    istag: str
    ttl: float | None
    max_connections: int | None


def options_from(response: IcapResponse) -> IcapOptions:
    """The service's options, or :class:`IcapProtocolError` when the answer is not a 200."""
    if response.status != 200:
        raise IcapProtocolError(f"OPTIONS answered {response.status}", "icap_status")
    methods = frozenset(
        m.strip().decode("ascii", "replace").upper()
        for v in (value for name, value in response.headers if name.lower() == b"methods")
        for m in v.split(b","))
    preview = _number(response.header(b"Preview"))
    ttl = _number(response.header(b"Options-TTL"))
    return IcapOptions(methods - {""}, preview, (response.header(b"ISTag") or b"").decode(
        "ascii", "replace")[:64], float(ttl) if ttl is not None else None,
        _number(response.header(b"Max-Connections")))


def _number(value: bytes | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 9:
        return None
    return int(value.strip())


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a scan concluded."""

    kind: Kind
    signature: str = ""
    """The threat's name (infected), as the server named it, cut and cleaned for logs."""
    reason: str = ""
    """Why (error): a short name for logs and counters."""


CLEAN = Verdict("clean")


def clean_signature(name: bytes) -> str:
    """A threat name fit for a log field and a metric label (no spaces, no quotes)."""
    text = _SIGNATURE_CHAR.sub("_", name.decode("latin-1").strip())
    return text[:MAX_SIGNATURE] or "unnamed"


def signature_of(response: IcapResponse) -> str | None:
    """The threat an answer names, from the de facto headers (X-Infection-Found's
    ``Threat=``, X-Virus-ID, X-Violations-Found's threat name), or ``None``."""
    found = response.header(b"X-Infection-Found")
    if found is not None:
        for param in found.split(b";"):
            key, eq, value = param.strip().partition(b"=")
            if eq and key.strip().lower() == b"threat" and value.strip():
                return clean_signature(value)
        return "unnamed"
    virus = response.header(b"X-Virus-ID")
    if virus is not None and virus.strip():
        return clean_signature(virus)
    violations = response.header(b"X-Violations-Found")
    if violations is not None:
        tokens = violations.split()
        return clean_signature(tokens[2]) if len(tokens) > 2 else "unnamed"
    return None


def classify(method: Method, response: IcapResponse) -> Verdict:
    """The verdict of a final answer to REQMOD/RESPMOD (module docstring)."""
    status = response.status
    if status == 204:
        return CLEAN
    if status != 200:
        return Verdict("error", reason=f"icap_status_{status}" if 400 <= status < 600
                       else "icap_status")
    signature = signature_of(response)
    if signature is not None:
        return Verdict("infected", signature)
    if method == "REQMOD" and response.has("res-hdr"):
        return Verdict("infected", "unnamed")  # the server answered instead of the backend
    return Verdict("error", reason="icap_modified")


__all__ = [
    "CLEAN", "ICAP_PORT", "IcapOptions", "IcapProtocolError", "IcapResponse",
    "IcapResponseParser", "IcapService", "ScanRequest", "Verdict", "classify",
    "clean_signature", "options_from", "options_request", "parse_encapsulated",
    "parse_icap_url", "scan_request", "signature_of",
]
