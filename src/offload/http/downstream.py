"""What an exchange needs from the client side, whatever HTTP version the client speaks.

An :class:`~offload.http.exchange.Exchange` routes a request, talks to a backend and relays the
response; how a response head, its body and its end reach the client (HTTP/1.1 framing and
keep-alive, or HTTP/2 frames on a stream), and how reading the request body is paced, is the
client side's business. The HTTP/1.1 connection (:mod:`offload.http.h1_connection`) and each
HTTP/2 stream implement this interface; the exchange imports neither.

Calls from an exchange, in the order they may come::

    send_continue                       at most once, before the body (100 Continue)
    send_interim*                       1xx answers of the backend, not 101
    send_head, send_data*, send_end     the backend's response; then exchange_done
    answer                              offload answers itself (no head was sent); ends it
                                        (an inspector's refusal: with the request id)
    abort                               the response was started and cannot be finished
    start_tunnel                        101 to a WebSocket request (HTTP/1.1 only)

and at any time ``pause_request``/``resume_request`` (stop and restart reading the request
body, for a reason: a backend connection being opened, a backend that cannot take more).
``send_interim``, ``send_head``, ``send_data`` and ``send_end`` may be held back until
``flush`` (the exchange flushes after each batch of backend events, so that a small response
goes out as one write, one TLS record) or until the exchange ends; everything else takes
effect at once.
After ``exchange_done``, ``answer``, ``abort`` or ``start_tunnel`` the exchange says nothing
more. The client side tells the exchange in turn: ``request_data``/``request_end`` (the body),
``client_paused``/``client_resumed`` (it cannot take the response faster) and ``client_gone``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from offload.proto.http_types import Headers, Response

if TYPE_CHECKING:
    from offload.http.upstream import BackendConnection


class Downstream(Protocol):
    """The client side of one exchange (module docstring)."""

    def send_continue(self) -> None:
        """Tell the client to send its body (it asked with ``Expect: 100-continue``)."""

    def send_interim(self, response: Response) -> None:
        """Pass on an interim (1xx, not 101) response."""

    def send_head(self, response: Response) -> None:
        """Pass on the final response head (the client side chooses the framing)."""

    def send_data(self, data: bytes) -> None:
        """Pass on a piece of the response body."""

    def send_end(self, trailers: Headers) -> None:
        """The response body is complete (with the backend's trailers, if any)."""

    def flush(self) -> None:
        """Send what the ``send_*`` calls since the last flush held back."""

    def exchange_done(self) -> None:
        """The exchange is over after ``send_end``: log it, go on with the next request."""

    def answer(self, status: int, *, retry_after: bool,
               extra: tuple[tuple[bytes, bytes], ...] = (), detail: str = "") -> None:
        """Offload answers the request itself (``exchange.status``/``reason`` say why), with
        ``extra`` header fields (valid ones) and a ``detail`` line in the body."""

    def abort(self) -> None:
        """The response was started and cannot be finished: the client must see it cut."""

    def pause_request(self, why: str) -> None:
        """Stop reading the request body until ``resume_request(why)``."""

    def resume_request(self, why: str) -> None:
        """Reading the request body may go on, as far as ``why`` is concerned."""

    def start_tunnel(self, upstream: BackendConnection, backend_tail: bytes) -> None:
        """The backend switched protocols (WebSocket): relay bytes from now on."""

    def proxy_header(self) -> bytes:
        """The PROXY protocol header a new backend connection starts with (``b""``: none)."""
