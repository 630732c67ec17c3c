"""Session-ticket keys chosen by offload instead of OpenSSL: a checked ctypes bridge to
``SSL_CTX_set_tlsext_ticket_key_evp_cb`` of the very libssl the ``_ssl`` module runs on.

The standard ``ssl`` module has no API for ticket keys; fleet mode needs every node to encrypt
and decrypt tickets with the fleet's keys (:mod:`offload.fleet.ticket_schedule`). The bridge
finds the libssl and libcrypto mapped into this process by ``_ssl`` (never another copy: a
second OpenSSL would not understand the first one's objects), and refuses to work —
:class:`TicketBridgeError`, with the reason — unless:

- both libraries are mapped from files (a Python with OpenSSL linked statically has none);
- their version is OpenSSL 3.x and the same as ``ssl.OPENSSL_VERSION_NUMBER``;
- the ``SSL_CTX *`` read from an ``ssl.SSLContext`` object is the context (its verify mode and
  options, read back through OpenSSL, match the Python object's);
- ``OSSL_PARAM`` has the layout declared here (compared with one OpenSSL builds itself).

The callback (RFC 5077 §4 ticket format as OpenSSL implements it: a 16-byte key name, an IV,
AES-256-CBC and HMAC-SHA256) encrypts new tickets with the newest key of a
:class:`TicketKeyRing` and decrypts with any key the ring holds, asking for a fresh ticket when
an older key was used. It runs inside a handshake, so it never raises: an error answers -1
(handshake error) or 0 (unknown key: a full handshake).
"""

from __future__ import annotations

import ctypes
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.fleet.ticket_schedule import AES_SIZE, HMAC_SIZE, NAME_SIZE, TicketKey

_IV_SIZE = 16
_OSSL_PARAM_UTF8_STRING, _OSSL_PARAM_OCTET_STRING = 4, 5
_OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value


class TicketBridgeError(Exception):
    """Fleet ticket sharing cannot work in this Python (the reason says why)."""


class _OsslParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint),
                ("data", ctypes.c_void_p), ("data_size", ctypes.c_size_t),
                ("return_size", ctypes.c_size_t)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


def _mapped(stem: str) -> str | None:
    """The file of a shared library mapped into this process (``libssl.so``)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith(stem + ".so"):
            return path
    return None


class _Key:
    """A ring key with its C buffers and the MAC parameters OpenSSL reads (kept alive here)."""

    def __init__(self, key: TicketKey, order: int) -> None:
        self.key = key
        self.order = order
        self.name = key.name
        self.aes = ctypes.create_string_buffer(key.aes, AES_SIZE)
        self._hmac = ctypes.create_string_buffer(key.hmac, HMAC_SIZE)
        self._digest = ctypes.create_string_buffer(b"SHA256")
        params = (_OsslParam * 3)()
        params[0] = _OsslParam(b"key", _OSSL_PARAM_OCTET_STRING,
                               ctypes.cast(self._hmac, ctypes.c_void_p), HMAC_SIZE,
                               _OSSL_PARAM_UNMODIFIED)
        params[1] = _OsslParam(b"digest", _OSSL_PARAM_UTF8_STRING,
                               ctypes.cast(self._digest, ctypes.c_void_p), 6,
                               _OSSL_PARAM_UNMODIFIED)
        params[2] = _OsslParam(None, 0, None, 0, 0)
        self.params = params


class TicketKeyRing:
    """A worker's current fleet keys, newest first, as the callback reads them; ``count`` is
    told ``("issued", "")``, ``("resumed", age)`` with age "current", "previous" or "older",
    and ``("unknown", "")`` for tickets under a key the ring does not hold."""

    def __init__(self, count: Callable[[str, str], None] | None = None) -> None:
        self._by_name: dict[bytes, _Key] = {}
        self._current: _Key | None = None
        self._count = count or (lambda what, age: None)

    def __len__(self) -> int:
        return len(self._by_name)

    def update(self, keys: tuple[TicketKey, ...]) -> None:
        """Hold exactly ``keys`` (newest first)."""
        ring = [_Key(key, order) for order, key in enumerate(keys)]
        self._by_name = {k.name: k for k in ring}
        self._current = ring[0] if ring else None

    def encrypting(self) -> _Key | None:
        key = self._current
        if key is not None:
            self._count("issued", "")
        return key

    def decrypting(self, name: bytes) -> _Key | None:
        key = self._by_name.get(name)
        if key is None:
            self._count("unknown", "")
        else:
            self._count("resumed", ("current", "previous")[key.order] if key.order < 2
                        else "older")
        return key


@dataclass
class _Functions:
    ssl_ctx_set_cb: Any
    ssl_ctx_get_verify_mode: Any
    ssl_ctx_get_options: Any
    rand_bytes: Any
    aes_256_cbc: int
    encrypt_init: Any
    decrypt_init: Any
    mac_set_params: Any


class TicketBridge:
    """The checked bridge; :meth:`load` builds it or says why it cannot. Keep it for as long
    as the contexts it installed into live: it holds the callbacks OpenSSL calls (dropped,
    they would be freed under OpenSSL's feet)."""

    def __init__(self, functions: _Functions, offset: int, description: str) -> None:
        self._f = functions
        self._offset = offset
        self.description = description
        self._callbacks: list[Any] = []  # ctypes callback objects must outlive the contexts

    @classmethod
    def load(cls) -> TicketBridge:
        libssl_path, libcrypto_path = _mapped("libssl"), _mapped("libcrypto")
        if libssl_path is None or libcrypto_path is None:
            raise TicketBridgeError("Python's ssl module is not linked against a shared "
                                    "libssl/libcrypto (a static OpenSSL?): fleet ticket keys "
                                    "need one")
        libssl, libcrypto = ctypes.CDLL(libssl_path), ctypes.CDLL(libcrypto_path)
        libcrypto.OpenSSL_version_num.restype = ctypes.c_ulong
        version = libcrypto.OpenSSL_version_num()
        if version >> 28 != 3:
            raise TicketBridgeError(f"fleet ticket keys need OpenSSL 3.x; {libcrypto_path} is "
                                    f"version {version:#x}")
        if version != ssl.OPENSSL_VERSION_NUMBER:
            raise TicketBridgeError(f"the ssl module was built for OpenSSL "
                                    f"{ssl.OPENSSL_VERSION_NUMBER:#x} but runs on {version:#x}")
        functions = _Functions(
            ssl_ctx_set_cb=libssl.SSL_CTX_set_tlsext_ticket_key_evp_cb,
            ssl_ctx_get_verify_mode=libssl.SSL_CTX_get_verify_mode,
            ssl_ctx_get_options=libssl.SSL_CTX_get_options,
            rand_bytes=libcrypto.RAND_bytes,
            aes_256_cbc=0, encrypt_init=libcrypto.EVP_EncryptInit_ex,
            decrypt_init=libcrypto.EVP_DecryptInit_ex,
            mac_set_params=libcrypto.EVP_MAC_CTX_set_params)
        functions.ssl_ctx_set_cb.argtypes = [ctypes.c_void_p, _CALLBACK]
        functions.ssl_ctx_set_cb.restype = ctypes.c_int
        functions.ssl_ctx_get_verify_mode.argtypes = [ctypes.c_void_p]
        functions.ssl_ctx_get_verify_mode.restype = ctypes.c_int
        functions.ssl_ctx_get_options.argtypes = [ctypes.c_void_p]
        functions.ssl_ctx_get_options.restype = ctypes.c_uint64
        functions.rand_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
        functions.rand_bytes.restype = ctypes.c_int
        for init in (functions.encrypt_init, functions.decrypt_init):
            init.argtypes = [ctypes.c_void_p] * 5
            init.restype = ctypes.c_int
        functions.mac_set_params.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        functions.mac_set_params.restype = ctypes.c_int
        libcrypto.EVP_aes_256_cbc.restype = ctypes.c_void_p
        functions.aes_256_cbc = libcrypto.EVP_aes_256_cbc() or 0
        if not functions.aes_256_cbc:
            raise TicketBridgeError("OpenSSL has no AES-256-CBC")
        _check_param_layout(libcrypto)
        bridge = cls(functions, object.__basicsize__,
                     f"{Path(libssl_path).name} {ssl.OPENSSL_VERSION}")
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.verify_mode = ssl.CERT_OPTIONAL
        probe.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        bridge._pointer(probe)
        return bridge

    def _pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` of ``context``, checked against what the object says of itself."""
        pointer = ctypes.c_void_p.from_address(id(context) + self._offset).value
        if not pointer:
            raise TicketBridgeError("cannot find the SSL_CTX of an ssl.SSLContext")
        f = self._f
        if (f.ssl_ctx_get_verify_mode(pointer) != int(context.verify_mode)
                or f.ssl_ctx_get_options(pointer) != int(context.options)):
            raise TicketBridgeError("ssl.SSLContext does not have the layout this bridge "
                                    "expects (the SSL_CTX read from it is not the context)")
        return pointer

    def install(self, context: ssl.SSLContext, ring: TicketKeyRing) -> None:
        """Make ``context`` (a base context: tickets are made and read by the context a
        handshake started on) encrypt and decrypt tickets with ``ring``'s keys."""
        pointer = self._pointer(context)
        callback = _CALLBACK(self._callback_for(ring))
        self._callbacks.append(callback)
        if self._f.ssl_ctx_set_cb(pointer, callback) != 1:
            raise TicketBridgeError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")

    def _callback_for(self, ring: TicketKeyRing) -> Callable[..., int]:
        f = self._f
        cipher = f.aes_256_cbc

        def ticket_key(ssl_p: int, key_name: int, iv: int, cipher_ctx: int, mac_ctx: int,
                       enc: int) -> int:
            try:
                if enc:
                    key = ring.encrypting()
                    if key is None:
                        return 0  # no fleet key yet: no ticket
                    ctypes.memmove(key_name, key.name, NAME_SIZE)
                    if f.rand_bytes(iv, _IV_SIZE) != 1:
                        return -1
                    if f.encrypt_init(cipher_ctx, cipher, None, key.aes, iv) != 1:
                        return -1
                    return 1 if f.mac_set_params(mac_ctx, key.params) == 1 else -1
                key = ring.decrypting(ctypes.string_at(key_name, NAME_SIZE))
                if key is None:
                    return 0
                if (f.mac_set_params(mac_ctx, key.params) != 1
                        or f.decrypt_init(cipher_ctx, cipher, None, key.aes, iv) != 1):
                    return -1
                return 1 if key.order == 0 else 2  # 2: issue a ticket under the newest key
            except Exception:
                return -1

        return ticket_key


def _check_param_layout(libcrypto: ctypes.CDLL) -> None:
    """Compare the declared ``OSSL_PARAM`` with one OpenSSL fills in itself."""
    construct = libcrypto.OSSL_PARAM_construct_utf8_string
    construct.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    construct.restype = _OsslParam
    buffer = ctypes.create_string_buffer(b"SHA256")
    param = construct(b"digest", ctypes.cast(buffer, ctypes.c_void_p), 6)
    if (param.key != b"digest" or param.data_type != _OSSL_PARAM_UTF8_STRING
            or param.data != ctypes.cast(buffer, ctypes.c_void_p).value or param.data_size != 6
            or param.return_size != _OSSL_PARAM_UNMODIFIED):
        raise TicketBridgeError("OSSL_PARAM does not have the layout this bridge expects")
