"""The C object behind an ``ssl.SSLObject``, for the calls made on every record and every
handshake.

``SSLObject.read``, ``write``, ``pending``, ``do_handshake``, ``version``, ``cipher``,
``selected_alpn_protocol``, ``session_reused`` and ``unwrap`` are pure-Python methods that only
call the same method of the ``_ssl`` object they wrap (``_sslobj``; ``unwrap`` calls its
``shutdown``). The streams make several such calls per request on each side and per handshake;
calling the C object directly skips a Python frame each time (a few hundred instructions per
call, measured with benchmarks/callgrind_costs.py). Should a Python version not have
``_sslobj``, or its ``_sslobj`` lack one of these, the SSLObject itself is used: its methods
have the same names, arguments and exceptions (``shutdown`` is then ``unwrap``).

The server side's SSLObject is made the way ``SSLContext.wrap_bio`` makes it (an
``SSLObject`` whose ``_sslobj`` comes from ``SSLContext._wrap_bio``, owned by it, so that the
SNI callback is handed the SSLObject), without wrap_bio's three Python frames per connection;
where ``_wrap_bio`` is missing, wrap_bio itself is used.
"""

from __future__ import annotations

import ssl
from typing import Any

_CALLS = ("read", "write", "pending", "do_handshake", "version", "cipher",
          "selected_alpn_protocol", "shutdown")


class _Wrapped:
    """The SSLObject itself, with ``shutdown`` meaning ``unwrap`` (the fallback)."""

    def __init__(self, ssl_object: ssl.SSLObject) -> None:
        self._ssl_object = ssl_object

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ssl_object, name)

    def shutdown(self) -> None:
        self._ssl_object.unwrap()


def server_object(context: ssl.SSLContext, incoming: ssl.MemoryBIO,
                  outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
    """``context.wrap_bio(incoming, outgoing, server_side=True)``, made directly."""
    wrap = getattr(context, "_wrap_bio", None)
    if wrap is None or context.sslobject_class is not ssl.SSLObject:
        return context.wrap_bio(incoming, outgoing, server_side=True)
    ssl_object = ssl.SSLObject.__new__(ssl.SSLObject)
    ssl_object._sslobj = wrap(incoming, outgoing, server_side=True,  # type: ignore[attr-defined]
                              server_hostname=None, owner=ssl_object, session=None)
    return ssl_object


def record_calls(ssl_object: ssl.SSLObject) -> Any:
    """What to call ``read(n)``, ``write(data)``, ``pending()``, ``do_handshake()``,
    ``version()``, ``cipher()``, ``selected_alpn_protocol()``, ``shutdown()`` and read
    ``session_reused`` on, for ``ssl_object``."""
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or not hasattr(inner, "session_reused"):
        return _Wrapped(ssl_object)
    for name in _CALLS:
        if not hasattr(inner, name):
            return _Wrapped(ssl_object)
    return inner
