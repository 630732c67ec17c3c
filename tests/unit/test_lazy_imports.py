"""What the supervisor imports before it forks, every worker inherits (and holds in memory):
the libraries only the ACME process or the metrics endpoint use must not be among them."""

from __future__ import annotations

import json
import subprocess
import sys

ONLY_ON_DEMAND = ("acme", "josepy", "requests", "urllib3", "OpenSSL", "prometheus_client")
"""The ACME client and what it brings, and the Prometheus writer (first scrape only)."""


def _imported_by(module: str) -> set[str]:
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return set(json.loads(out))


def test_the_supervisor_and_the_command_line_do_not_load_acme_or_prometheus() -> None:
    for module in ("offload.cli", "offload.server.supervisor", "offload.server.worker"):
        loaded = _imported_by(module) & set(ONLY_ON_DEMAND)
        assert not loaded, f"importing {module} loads {sorted(loaded)}"


def test_the_metrics_endpoint_still_renders_prometheus_text() -> None:
    from offload.observe.exposition import CONTENT_TYPE, render_text
    from offload.observe.metrics import Merged, SupervisorFacts

    text = render_text(Merged(), SupervisorFacts(version="1", start_time=0.0, workers=1,
                                                 reloads={}, worker_restarts=0,
                                                 certificates=()))
    assert b"offload_build_info" in text
    assert CONTENT_TYPE.startswith("text/plain")
