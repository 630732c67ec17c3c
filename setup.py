"""Build offload, compiling the modules on the data path with mypyc.

The data path (TLS stream, HTTP parsing and rewriting, exchanges, relay, balancing) is plain,
fully typed Python; mypyc turns it into C extensions for about a fifth less CPU per request and
lower latency. The same sources run uncompiled: editable installs (``pip install -e``, as
``./dev`` uses for development) are never compiled, so an edited module is never shadowed by a
stale compiled one; ``OFFLOAD_COMPILE=0`` skips compiling any install; and the build falls back
to pure Python when there is no C compiler, says so, and records it in ``offload/_build.json``
so that ``offload version`` tells and every start logs a warning.

The libnghttp2 binding (``offload.proto._nghttp2``, a cffi extension: see
``src/offload/proto/h2_nghttp2_build.py``) is built by every install, editable ones included (it
shadows no Python module), when cffi and the libnghttp2 headers are there; ``OFFLOAD_NGHTTP2=0``
skips it. Its outcome — built, skipped or failed, with the reason — is recorded in the same file
under ``nghttp2``, and a failure never fails the install: HTTP/2 then runs on python-hyper ``h2``.

The libmodsecurity3 binding (``offload.security._modsecurity``, cffi, a few lines of C++: see
``src/offload/security/modsecurity_build.py``) is built the same way when the
``libmodsecurity-dev`` headers are there (``OFFLOAD_MODSECURITY=0`` skips it), recorded under
``modsecurity``; without it only a configuration with a ``waf`` is refused, by ``offload check``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

COMPILED = [
    "src/offload/timers.py",
    "src/offload/writes.py",
    "src/offload/observe/stats.py",
    "src/offload/proto/http_types.py",
    "src/offload/proto/http1.py",
    "src/offload/proto/forwarding.py",
    "src/offload/proto/http1_write.py",
    "src/offload/proto/proxy_protocol.py",
    "src/offload/tls/record_stream.py",
    "src/offload/tls/stream.py",
    "src/offload/tls/client_stream.py",
    "src/offload/server/listener.py",
    "src/offload/l4/relay.py",
    "src/offload/upstream/balancer.py",
    "src/offload/upstream/health.py",
    "src/offload/upstream/group.py",
    "src/offload/upstream/backend.py",
    "src/offload/http/site.py",
    "src/offload/http/upstream.py",
    "src/offload/http/exchange.py",
    "src/offload/http/access.py",
    "src/offload/http/h1_connection.py",
    "src/offload/http/h2_connection.py",
    "src/offload/http/versions.py",
    "src/offload/http/gate.py",
    "src/offload/http/inspection.py",
    "src/offload/proto/h2_request.py",
    "src/offload/proto/h2_guard.py",
    "src/offload/proto/h2_nghttp2.py",
    "src/offload/proto/h2_engine.py",
    "src/offload/proto/client_hello.py",
    "src/offload/proto/fingerprint.py",
    "src/offload/tls/sni.py",
    "src/offload/tls/store.py",
    "src/offload/security/body_pace.py",
    "src/offload/security/ban_list.py",
]
NGHTTP2_BUILD = "src/offload/proto/h2_nghttp2_build.py"
NGHTTP2_MODULE = "offload.proto._nghttp2"
NGHTTP2_HEADER = "nghttp2/nghttp2.h"
MODSECURITY_BUILD = "src/offload/security/modsecurity_build.py"
MODSECURITY_MODULE = "offload.security._modsecurity"
MODSECURITY_HEADER = "modsecurity/modsecurity.h"
OPTIONAL_MODULES = {NGHTTP2_MODULE: "nghttp2", MODSECURITY_MODULE: "modsecurity"}
"""Bindings that may fail alone (recorded under their key) without failing the install."""
BUILD_RECORD = "offload/_build.json"
"""What the build did about compiling, read by ``offload version`` and at start
(offload/build_info.py)."""


def _module(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def _short(error: BaseException) -> str:
    """A build error in a line: which command failed, not its hundred arguments."""
    text = str(error)
    failed = re.search(r"Command '\['([^']+)'.*returned non-zero exit status (\d+)", text)
    if failed:
        return f"{failed.group(1)} exited with status {failed.group(2)}"
    return text if len(text) <= 200 else text[:200] + "..."


def _announce(message: str) -> None:
    """Say it so that it stands out in a build log (``pip install -v``)."""
    line = "*" * 78
    print(f"\n{line}\noffload: {message}\n{line}\n", file=sys.stderr)


def _plan() -> tuple[list[object], dict[str, object]]:
    """The extensions to build, and the record of that decision."""
    modules = [_module(path) for path in COMPILED]
    if os.environ.get("OFFLOAD_COMPILE", "1") == "0":
        return [], {"compile": "skipped", "reason": "OFFLOAD_COMPILE=0", "modules": modules}
    if {"editable_wheel", "develop"} & set(sys.argv):
        return [], {"compile": "skipped", "reason": "editable install", "modules": modules}
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only a build needs it
    except ImportError as error:
        reason = f"mypyc is not available ({error})"
        _announce(f"compiling the data path failed: {reason}; this install runs as pure "
                  "Python, about a fifth slower")
        return [], {"compile": "failed", "reason": reason, "modules": modules}
    return list(mypycify(COMPILED, opt_level="3")), {"compile": "compiled", "reason": "",
                                                      "modules": modules}


def _nghttp2_header_found(header: str = NGHTTP2_HEADER) -> bool:
    """Whether the C compiler will find ``header`` (the usual places, and CPATH)."""
    places = ["/usr/include", "/usr/local/include",
              *os.environ.get("CPATH", "").split(os.pathsep),
              *os.environ.get("C_INCLUDE_PATH", "").split(os.pathsep)]
    places += [str(path) for path in Path("/usr/include").glob("*-linux-gnu*")]
    return any(place and (Path(place) / header).is_file() for place in places)


def _cffi_extension(build_script: str, library: str) -> tuple[list[object], dict[str, str]]:
    """The extension a cffi build script describes; none (and why) if cffi cannot prepare it."""
    try:
        import importlib.util  # noqa: PLC0415 - only a build needs it

        spec = importlib.util.spec_from_file_location(f"_offload_{library}_build", build_script)
        assert spec is not None and spec.loader is not None
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        extension = script.builder().distutils_extension(tmpdir="build/cffi")
    except Exception as error:  # cffi missing or the script broken: no binding, no failure
        reason = f"cffi could not prepare the binding ({_short(error)})"
        _announce(f"not building the {library} binding: {reason}")
        return [], {"status": "failed", "reason": reason}
    return [extension], {"status": "built", "reason": ""}


def _plan_nghttp2() -> tuple[list[object], dict[str, str]]:
    """The libnghttp2 binding, if it can be built here (module docstring)."""
    if os.environ.get("OFFLOAD_NGHTTP2", "1") == "0":
        return [], {"status": "skipped", "reason": "OFFLOAD_NGHTTP2=0"}
    if not _nghttp2_header_found():
        reason = (f"{NGHTTP2_HEADER} not found (Debian/Ubuntu: apt-get install libnghttp2-dev; "
                  "then reinstall offload)")
        _announce(f"not building the libnghttp2 binding: {reason}; HTTP/2 runs on python-hyper "
                  "h2, slower")
        return [], {"status": "skipped", "reason": reason}
    return _cffi_extension(NGHTTP2_BUILD, "libnghttp2")


def _plan_modsecurity() -> tuple[list[object], dict[str, str]]:
    """The libmodsecurity3 binding, if it can be built here (module docstring)."""
    if os.environ.get("OFFLOAD_MODSECURITY", "1") == "0":
        return [], {"status": "skipped", "reason": "OFFLOAD_MODSECURITY=0"}
    if not _nghttp2_header_found(MODSECURITY_HEADER):
        reason = (f"{MODSECURITY_HEADER} not found (Debian/Ubuntu: apt-get install "
                  "libmodsecurity-dev modsecurity-crs; then reinstall offload)")
        _announce(f"not building the libmodsecurity binding: {reason}; the waf key is refused")
        return [], {"status": "skipped", "reason": reason}
    return _cffi_extension(MODSECURITY_BUILD, "libmodsecurity")


EXTENSIONS, RECORD = _plan()
NGHTTP2_EXTENSIONS, NGHTTP2_RECORD = _plan_nghttp2()
RECORD["nghttp2"] = NGHTTP2_RECORD
MODSECURITY_EXTENSIONS, MODSECURITY_RECORD = _plan_modsecurity()
RECORD["modsecurity"] = MODSECURITY_RECORD


def _write_record(build_lib: str, record: dict[str, object]) -> None:
    target = Path(build_lib) / BUILD_RECORD
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


class RecordingBuildPy(build_py):
    """Ship the record of what the build did about compiling (not in editable installs,
    which always run the sources as they are)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            _write_record(self.build_lib, RECORD)


class OptionalBuildExt(build_ext):
    """Compile if we can; otherwise the pure-Python modules are used as they are, and the
    build says so (and so does offload, at every start)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # any build failure means: ship pure Python
            _announce(f"compiling the data path failed ({_short(error)}); this install runs as "
                      "pure Python, about a fifth slower")
            RECORD.update(compile="failed", reason=_short(error))
            self.extensions = [ext for ext in self.extensions if ext.name in OPTIONAL_MODULES]
            if self.extensions:  # the binding stands on its own
                super().run()
            if not self.inplace:
                _write_record(self.build_lib, RECORD)

    def build_extension(self, ext: Any) -> None:
        """A binding may fail alone: recorded (HTTP/2 then runs on ``h2``; a ``waf`` is
        refused)."""
        key = OPTIONAL_MODULES.get(ext.name)
        if key is None:
            super().build_extension(ext)
            return
        try:
            super().build_extension(ext)
        except Exception as error:
            reason = _short(error)
            _announce(f"building the {ext.name} binding failed ({reason})")
            RECORD[key] = {"status": "failed", "reason": reason}
            if not self.inplace:
                _write_record(self.build_lib, RECORD)


setup(ext_modules=EXTENSIONS + NGHTTP2_EXTENSIONS + MODSECURITY_EXTENSIONS,
      cmdclass={"build_ext": OptionalBuildExt, "build_py": RecordingBuildPy})
