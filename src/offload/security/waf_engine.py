"""libmodsecurity3 through offload's binding: a rule set loaded once, a transaction per request.

Every call here blocks (the engine evaluates hundreds of regular expressions); the binding
releases the GIL, and :mod:`offload.http.waf` runs these calls in a worker's thread pool. One
transaction is used by one thread at a time (the gate asks its phases in order), never freed
while a call on it runs.

The binding is optional: without it (libmodsecurity3 or its headers missing when offload was
installed) :func:`binding_problem` says why and how to fix it, and only a configuration that
asks for a WAF cares.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

INSTALL_HINT = ("install libmodsecurity3 with its headers and the OWASP Core Rule Set (Debian/"
                "Ubuntu: apt-get install libmodsecurity-dev modsecurity-crs), then reinstall "
                "offload so that it builds its libmodsecurity binding")

LOG_BYTES = 64 * 1024
"""The rule messages kept per transaction (a request that matches more is only counted)."""


class WafError(Exception):
    """The rule set could not be loaded (the engine's own words), or the engine is missing."""


def _binding() -> ModuleType | str:
    try:
        return importlib.import_module("offload.security._modsecurity")
    except ImportError as error:
        return f"offload's libmodsecurity binding is not available ({error})"


def binding_problem() -> str | None:
    """Why the WAF cannot run here (with how to fix it), or ``None``."""
    found = _binding()
    return f"{found}; {INSTALL_HINT}" if isinstance(found, str) else None


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """One rule message of a transaction."""

    rule: int
    severity: int
    disruptive: bool
    phase: int
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one phase of a transaction came to."""

    intervene: bool
    """The engine asks to interrupt the transaction (blocking mode only)."""
    status: int
    matches: tuple[RuleMatch, ...]
    dropped: int = 0
    """Rule messages beyond :data:`LOG_BYTES`, not kept."""


def _parse(text: str) -> tuple[RuleMatch, ...]:
    out = []
    for line in text.splitlines():
        rule, severity, disruptive, phase, message = (line.split("\t", 4) + [""] * 5)[:5]
        try:
            out.append(RuleMatch(int(rule), int(severity), disruptive == "1", int(phase),
                                 message))
        except ValueError:
            continue
    return tuple(out)


class Engine:
    """One loaded rule set (shared by the transactions of one worker)."""

    def __init__(self, sources: list[tuple[str, str]]) -> None:
        """Load ``sources`` in order: ``("file", path)`` or ``("text", directives)``; raises
        :class:`WafError` with the engine's message naming the file and line."""
        found = _binding()
        if isinstance(found, str):
            raise WafError(f"{found}; {INSTALL_HINT}")
        self._ffi: Any = found.ffi
        self._lib: Any = found.lib
        lib, ffi = self._lib, self._ffi
        self._ms = lib.offload_waf_init()
        self._rules = lib.msc_create_rules_set()
        self._lock = threading.Lock()
        self.closed = False
        if ffi.NULL in (self._ms, self._rules):
            raise WafError("libmodsecurity could not start")
        error = ffi.new("char **")
        try:
            for kind, value in sources:
                error[0] = ffi.NULL
                data = value.encode()
                if kind == "file":
                    loaded = lib.msc_rules_add_file(self._rules, data, error)
                else:
                    loaded = lib.msc_rules_add(self._rules, data, error)
                if loaded < 0:
                    text = ffi.string(error[0]).decode(errors="replace") if error[0] else ""
                    where = value if kind == "file" else "offload's generated directives"
                    raise WafError(f"{where}: {text.strip() or 'the rules could not be loaded'}")
                if error[0] != ffi.NULL:
                    lib.offload_waf_error_free(error[0])
        except WafError:
            self.close()
            raise
        self.rule_count = 0

    @property
    def version(self) -> str:
        return str(self._ffi.string(self._lib.msc_who_am_i(self._ms)).decode())

    def transaction(self) -> Transaction:
        return Transaction(self)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._rules != self._ffi.NULL:
                self._lib.msc_rules_cleanup(self._rules)
            if self._ms != self._ffi.NULL:
                self._lib.msc_cleanup(self._ms)


def _fields(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, list[int]]:
    blob = bytearray()
    lengths = []
    for name, value in headers:
        blob += name
        blob += value
        lengths.append(len(name))
        lengths.append(len(value))
    return bytes(blob), lengths


class Transaction:
    """One request in the engine: phases in order, from one thread at a time."""

    __slots__ = ("_engine", "_ffi", "_lib", "_log", "_status", "_tx")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ffi = engine._ffi
        self._lib = engine._lib
        self._log = self._lib.offload_waf_log_new(LOG_BYTES)
        self._tx = self._lib.msc_new_transaction(engine._ms, engine._rules, self._log)
        self._status = self._ffi.new("int *")
        if self._ffi.NULL in (self._log, self._tx):
            self.close()
            raise MemoryError("libmodsecurity could not start a transaction")

    def _outcome(self, intervene: int) -> Outcome:
        log = self._log
        text = self._ffi.string(log.text, log.len).decode(errors="replace") if log.len else ""
        dropped = log.dropped
        log.len = 0
        log.dropped = 0
        return Outcome(bool(intervene), int(self._status[0]), _parse(text), dropped)

    def head(self, client: tuple[str, int], server: tuple[str, int], *, uri: bytes,
             method: bytes, version: str, headers: list[tuple[bytes, bytes]]) -> Outcome:
        """Phase 1: the connection, the request line and the header fields."""
        blob, lengths = _fields(headers)
        intervene = self._lib.offload_waf_head(
            self._tx, client[0].encode(), client[1], server[0].encode(), server[1],
            self._ffi.new("char[]", uri), self._ffi.new("char[]", method),
            version.encode(), blob, lengths, len(lengths), self._status)
        return self._outcome(intervene)

    def body(self, data: bytes) -> Outcome:
        """Phase 2: the body (or its prefix); called once, even when there is none."""
        return self._outcome(self._lib.offload_waf_body(self._tx, data, len(data),
                                                        self._status))

    def response_head(self, status: int, version: str,
                      headers: list[tuple[bytes, bytes]]) -> Outcome:
        """Phase 3: the response status and header fields."""
        blob, lengths = _fields(headers)
        return self._outcome(self._lib.offload_waf_response_head(
            self._tx, status, version.encode(), blob, lengths, len(lengths), self._status))

    def close(self) -> None:
        """Free the transaction (never while a phase of it runs)."""
        tx, self._tx = self._tx, self._ffi.NULL
        if tx != self._ffi.NULL:
            self._lib.msc_transaction_cleanup(tx)
        log, self._log = self._log, self._ffi.NULL
        if log != self._ffi.NULL:
            self._lib.offload_waf_log_free(log)


def readable(path: str) -> bool:
    return Path(path).is_file()


__all__ = ["INSTALL_HINT", "Engine", "Outcome", "RuleMatch", "Transaction", "WafError",
           "binding_problem"]
