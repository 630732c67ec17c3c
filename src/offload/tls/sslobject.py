"""The C object behind an ``ssl.SSLObject``, for the few calls made on every record.

``SSLObject.read``, ``write`` and ``pending`` are pure-Python methods that only call the same
method of the ``_ssl`` object they wrap (``_sslobj``). The streams make several such calls per
request on each side; calling the C object directly skips a Python frame each time (a few
hundred instructions per call, measured with benchmarks/callgrind_costs.py). Should a Python
version not have ``_sslobj``, the SSLObject itself is used: its methods have the same names,
arguments and exceptions.
"""

from __future__ import annotations

import ssl
from typing import Any


def record_calls(ssl_object: ssl.SSLObject) -> Any:
    """What to call ``read(n)``, ``write(data)`` and ``pending()`` on for ``ssl_object``."""
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or not all(hasattr(inner, name) for name in ("read", "write", "pending")):
        return ssl_object
    return inner
