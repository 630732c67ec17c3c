"""Which HTTP/2 engine runs: libnghttp2 through offload's binding where it was built, else
python-hyper ``h2`` (:mod:`offload.proto.h2_engine` for the interface).

Kept apart from the interface so that importing the interface (the request translation, the
connection's types) never loads either library.
"""

from __future__ import annotations

import importlib

from offload.build_info import nghttp2_binding
from offload.proto.h2_engine import EngineFactory, EnginePreference, H2Engine, H2Settings


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run in this install; the message says why and what to do."""


def engine_factory(prefer: EnginePreference = "auto") -> EngineFactory:
    """The factory of the engine to use: ``auto`` takes nghttp2 when its binding imports."""
    if prefer == "h2":
        return _hyper()
    try:
        module = importlib.import_module("offload.proto.h2_nghttp2")
    except ImportError as error:
        if prefer == "nghttp2":
            raise EngineUnavailable(
                f"the HTTP/2 engine nghttp2 is not available: {nghttp2_binding().describe()} "
                f"({error}); fix: install libnghttp2-dev (Debian/Ubuntu) and reinstall offload, "
                "or choose the engine h2") from error
        return _hyper()
    factory: EngineFactory = module.make
    return factory


def make_engine(settings: H2Settings, prefer: EnginePreference = "auto") -> H2Engine:
    """A new engine for one connection (:func:`engine_factory` says which)."""
    return engine_factory(prefer)(settings)


def _hyper() -> EngineFactory:
    from offload.proto import h2_hyper  # noqa: PLC0415 - h2 is loaded only when it runs

    return h2_hyper.make
