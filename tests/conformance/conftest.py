"""Fixtures for the conformance tests: the integration harness and fixtures, re-exported.

The integration ``conftest`` is loaded under another module name (both files are called
``conftest.py`` and there are no packages under tests/), so each directory keeps its own
fixtures. Every public name of it is mirrored here: given both directories on the command line,
pytest imports both conftests before any test module, and the integration modules' ``from
conftest import ...`` may then find this one.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_INTEGRATION = Path(__file__).parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))  # for ``harness`` and the integration conftest


def _load_integration_conftest() -> types.ModuleType:
    name = "offload_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _INTEGRATION / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_integration = _load_integration_conftest()
globals().update({k: v for k, v in vars(_integration).items() if not k.startswith("_")})

Pki = _integration.Pki
http_config = _integration.http_config
pki = _integration.pki
localhost_bundle = _integration.localhost_bundle
backend = _integration.backend
offload = _integration.offload
port = _integration.port

__all__ = ["Pki", "backend", "http_config", "localhost_bundle", "offload", "pki", "port"]
