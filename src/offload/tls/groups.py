"""The key-exchange groups a server context accepts: X25519, P-256 and P-384, nothing else.

OpenSSL 3.0 accepts by default, besides those, X448, P-521 and the finite-field groups
ffdhe2048 to ffdhe8192 (RFC 7919) in TLS 1.3: a client asking for ffdhe8192 gets a slow,
CPU-heavy handshake, and none of those is in Mozilla's recommendation. Python's ``ssl`` has no
call for the groups list (``set_ecdh_curve`` sets a single curve), so this module makes one
checked ``ctypes`` call, ``SSL_CTX_set1_groups_list`` (a macro for ``SSL_CTX_ctrl`` with
``SSL_CTRL_SET_GROUPS_LIST``), into the libssl that ``_ssl`` itself is linked against.

Before touching a context it checks that the call cannot go astray: CPython, a release build
with the GIL (so ``PySSLContext`` starts with ``PyObject_HEAD`` then its ``SSL_CTX *``), an
``_ssl`` extension linked to a shared libssl whose version is the one ``ssl`` reports, and, for
each context, that the pointer read from the object is the context's (OpenSSL's own answer for
its options and verify mode matches Python's). When any check fails the groups stay OpenSSL's
defaults and :func:`groups_problem` says why (offload warns at start).
"""

from __future__ import annotations

import ctypes
import ssl
import sys
import sysconfig

SERVER_GROUPS = ("X25519", "P-256", "P-384")
"""Mozilla's recommendation (X25519, prime256v1, secp384r1), in OpenSSL's names."""

_SSL_CTRL_SET_GROUPS_LIST = 92  # ssl.h: SSL_CTX_set1_groups_list(ctx, s)
_POINTER_OFFSET = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
"""Where ``SSL_CTX *ctx`` lies in a ``PySSLContext``: right after ``PyObject_HEAD``
(``ob_refcnt``, ``ob_type``) in a release build of CPython 3.11 to 3.13."""


class _LibSsl:
    """The four libssl/libcrypto functions the bridge needs, typed."""

    def __init__(self) -> None:
        import _ssl  # noqa: PLC0415 - only here: its file is the library to open

        path = getattr(_ssl, "__file__", None)
        if not path:
            raise OSError("the _ssl module is built into this Python (no shared libssl)")
        library = ctypes.CDLL(path)  # dlsym on it searches _ssl's own libssl and libcrypto
        self.ctrl = library.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = library.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.get_verify_mode = library.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        version = library.OpenSSL_version_num
        version.argtypes = []
        version.restype = ctypes.c_ulong
        if version() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError(f"_ssl's libssl is version {version():#x}, ssl reports "
                          f"{ssl.OPENSSL_VERSION_NUMBER:#x}")

    def context_pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` of ``context``, checked against OpenSSL's view of it."""
        pointer = ctypes.c_void_p.from_address(id(context) + _POINTER_OFFSET).value
        if not pointer:
            raise OSError("no SSL_CTX where one was expected")
        if (self.get_options(pointer) != int(context.options)
                or self.get_verify_mode(pointer) != int(context.verify_mode)):
            raise OSError("the SSL_CTX read from the context does not match it")
        return pointer


def _interpreter_problem() -> str | None:
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    if not (3, 11) <= sys.version_info[:2] <= (3, 13):
        return f"Python {sys.version_info[0]}.{sys.version_info[1]} is not one the bridge knows"
    if hasattr(sys, "gettotalrefcount"):
        return "a debug build of Python"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "a free-threaded build of Python"
    return None


def restrict_groups(context: ssl.SSLContext, groups: tuple[str, ...] = SERVER_GROUPS) -> str | None:
    """Let ``context`` accept only ``groups``; None when done, else why it could not be."""
    problem = _interpreter_problem()
    if problem is not None:
        return problem
    try:
        libssl = _LibSsl()
        pointer = libssl.context_pointer(context)
    except (OSError, AttributeError) as error:  # AttributeError: a symbol is missing
        return str(error)
    if libssl.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode()) != 1:
        return f"OpenSSL refused the groups {':'.join(groups)}"
    return None


def groups_problem() -> str | None:
    """Why server contexts keep OpenSSL's default groups on this Python, or None (tried on a
    context of its own, so offload can warn once at start)."""
    return restrict_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


__all__ = ["SERVER_GROUPS", "groups_problem", "restrict_groups"]
