"""Whether this install runs the compiled data path, and why not if it does not.

``setup.py`` compiles the modules of the data path with mypyc and records what it did in
``offload/_build.json``: compiled, skipped on purpose (``OFFLOAD_COMPILE=0``, an editable
install) or failed (no C compiler, no mypyc). The modules themselves say whether they are
compiled (an extension module or a ``.py`` file), so a compiled build whose extensions are
shadowed or missing is noticed too.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
from dataclasses import dataclass
from importlib import resources

RECORD = "_build.json"


@dataclass(frozen=True)
class DataPath:
    """What the build did, and what this process runs."""

    record: str
    """compiled, skipped, failed, or unknown (no record: a source tree or an editable install)."""
    reason: str
    compiled: tuple[str, ...]
    pure: tuple[str, ...]

    def describe(self) -> str:
        """One phrase for ``offload version``."""
        if self.compiled and not self.pure:
            return f"data path compiled (mypyc, {len(self.compiled)} modules)"
        if self.compiled:
            return (f"data path partly compiled ({len(self.compiled)} of "
                    f"{len(self.compiled) + len(self.pure)} modules)")
        why = {"skipped": f"not compiled: {self.reason}",
               "failed": f"compiling failed at install: {self.reason}",
               "unknown": "not compiled: running from the sources"}.get(self.record, self.record)
        return f"data path pure Python ({why})"

    def warning(self) -> str | None:
        """What to log at start when this install meant to be compiled and is not."""
        if self.record == "failed":
            return (f"the data path runs as pure Python, about a fifth slower: compiling it "
                    f"failed when offload was installed ({self.reason}); install gcc and the "
                    "Python headers and reinstall offload")
        if self.record == "compiled" and self.pure:
            return (f"the data path was compiled but {len(self.pure)} module(s) run as pure "
                    f"Python ({', '.join(self.pure)}); reinstall offload")
        return None


def _is_extension(module: str) -> bool:
    try:
        path = str(importlib.import_module(module).__file__ or "")
    except ImportError:
        return False
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def data_path() -> DataPath:
    """Read the build record and look at the modules it names."""
    try:
        text = resources.files("offload").joinpath(RECORD).read_text(encoding="utf-8")
        record = json.loads(text)
    except (OSError, ValueError):
        record = {}
    modules = [str(name) for name in record.get("modules", ())] or list(_DATA_PATH)
    modules = [name for name in modules
               if name not in _NEEDS_BINDING or _imports(_NEEDS_BINDING[name])]
    compiled = tuple(name for name in modules if _is_extension(name))
    pure = tuple(name for name in modules if name not in compiled)
    return DataPath(str(record.get("compile", "unknown")), str(record.get("reason", "")),
                    compiled, pure)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


_NEEDS_BINDING = {"offload.proto.h2_nghttp2": "offload.proto._nghttp2"}
"""Compiled modules that run only where their binding was built: without it they are not
"running as pure Python", they are not used (:func:`nghttp2_binding` tells why)."""

_DATA_PATH = ("offload.tls.stream", "offload.http.h1_connection", "offload.l4.relay")
"""Modules to look at when there is no record (a source tree): a sample of the data path."""


@dataclass(frozen=True)
class Nghttp2Binding:
    """Whether the libnghttp2 binding (the fast HTTP/2 engine) was built, and why not."""

    record: str
    """built, skipped, failed, or unknown (no record: a source tree or an editable install)."""
    reason: str
    importable: bool

    def describe(self) -> str:
        """One phrase for ``offload version`` and for the error when nghttp2 is asked for."""
        if self.importable:
            return "HTTP/2 engine nghttp2 (libnghttp2 binding built)"
        why = {"skipped": f"was not built: {self.reason}",
               "failed": f"failed to build at install: {self.reason}",
               "built": "was built but does not import; reinstall offload",
               "unknown": "is not built in this install"}.get(self.record, self.record)
        return f"HTTP/2 engine h2 (the libnghttp2 binding {why})"


def nghttp2_binding() -> Nghttp2Binding:
    """Read the build record's ``nghttp2`` entry and try the binding."""
    try:
        text = resources.files("offload").joinpath(RECORD).read_text(encoding="utf-8")
        entry = json.loads(text).get("nghttp2", {})
    except (OSError, ValueError, AttributeError):
        entry = {}
    return Nghttp2Binding(str(entry.get("status", "unknown")), str(entry.get("reason", "")),
                          _imports("offload.proto._nghttp2"))
