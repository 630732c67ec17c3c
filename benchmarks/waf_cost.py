"""Benchmark: the CPU cost of the WAF (OWASP CRS at paranoia level 1 on libmodsecurity3) per
request, on a small GET and on a 64 KiB form POST.

Two measures:

* ``engine``: the engine alone, in this process: a transaction per request (head, body,
  verdict), CPU time (``time.process_time``) per request over ``--requests``, best of
  ``--rounds``. What the WAF's thread pool spends, without offload around it.
* ``proxy``: a real offload (one worker) in front of a small backend, driven over keep-alive
  HTTPS by one client; the worker's CPU time (user + system, from /proc) per request, with the
  WAF and without it, interleaved ``--rounds`` times; the difference is what the WAF costs a
  request end to end (the engine, the thread hop, holding the body).

    python benchmarks/waf_cost.py engine
    python benchmarks/waf_cost.py proxy --requests 2000 --rounds 3

Run it with the interpreter of the install to measure (``.venv-compiled/bin/python`` is the
build that ships); it needs libmodsecurity-dev at install time and modsecurity-crs. The
machine should be otherwise idle (CPU time is less sensitive than wall time, not immune).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from offload.demo.pki import demo_files
from offload.security.waf_config import WafConfig
from offload.security.waf_engine import Engine
from offload.security.waf_rules import plan_waf

FORM = ("comment=" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit " * 1200)[:65536]
HEADERS = [(b"Host", b"shop.example"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
           (b"Accept", b"text/html,application/xhtml+xml"), (b"Accept-Language", b"en"),
           (b"Accept-Encoding", b"gzip, br")]
CASES: dict[str, tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = {
    "small GET": (b"GET", b"/products?category=books&page=2", HEADERS, b""),
    "64 KiB form POST": (b"POST", b"/comment", [*HEADERS, (
        b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", b"65536")], FORM.encode()),
}


def _engine() -> Engine:
    plan, issues = plan_waf(WafConfig(), Path("."), "waf")
    if plan is None:
        sys.exit("; ".join(issue.render() for issue in issues))
    return Engine(list(plan.sources))


def engine_cost(requests: int, rounds: int) -> None:
    engine = _engine()
    for name, (method, target, headers, body) in CASES.items():
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(requests):
                tx = engine.transaction()
                tx.head(("192.0.2.9", 50000), ("127.0.0.1", 443), uri=target, method=method,
                        version="1.1", headers=headers)
                outcome = tx.body(body)
                tx.close()
            best = min(best, (time.process_time() - start) / requests)
        assert not outcome.intervene, f"{name} was refused: the benchmark needs it to pass"
        print(f"engine  {name:18} {best * 1e6:9.1f} µs CPU per request (best of {rounds})")


class _Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_offload(directory: Path, backend_port: int, waf: bool
                   ) -> tuple[subprocess.Popen[bytes], int, int]:
    bundle = demo_files(directory).bundle
    port = _free_port()
    config = directory / f"offload-{waf}.toml"
    config.write_text(f"""
[global]
workers = 1
log_level = "info"

[[frontends]]
name = "web"
bind = ["127.0.0.1:{port}"]
mode = "http"
backend = "app"
access_log = "off"
certificates = ["{bundle}"]
{'waf = { mode = "block" }' if waf else ''}

[[backends]]
name = "app"
servers = ["127.0.0.1:{backend_port}"]
""")
    process = subprocess.Popen([sys.executable, "-m", "offload", "run", "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    worker = 0
    for raw in iter(process.stderr.readline, b""):
        line = json.loads(raw) if raw.startswith(b"{") else {}
        if line.get("msg") == "worker started":
            worker = int(line["pid"])
        if line.get("msg") == "offload ready":
            break
    stderr = process.stderr
    threading.Thread(target=stderr.read, daemon=True).start()  # keep the pipe drained
    return process, port, worker


def _drive(port: int, ca: Path, requests: int, send: Callable[[http.client.HTTPSConnection], None]
           ) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    for _ in range(requests):
        send(conn)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    conn.close()


def proxy_cost(requests: int, rounds: int) -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    senders: dict[str, Callable[[http.client.HTTPSConnection], None]] = {
        "small GET": lambda c: c.request("GET", "/products?category=books&page=2",
                                         headers={"User-Agent": "Mozilla/5.0"}),
        "64 KiB form POST": lambda c: c.request("POST", "/comment", body=FORM.encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Mozilla/5.0"}),
    }
    results: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = demo_files(directory).ca
        for _ in range(rounds):
            for waf in (False, True):
                process, port, worker = _start_offload(directory, backend.server_port, waf)
                try:
                    for name, send in senders.items():
                        _drive(port, ca, 50, send)  # warm up: connection, caches
                        before = _worker_cpu(worker)
                        _drive(port, ca, requests, send)
                        spent = (_worker_cpu(worker) - before) / requests
                        results.setdefault((name, waf), []).append(spent)
                finally:
                    process.terminate()
                    process.wait(30)
    backend.shutdown()
    for name in senders:
        plain = min(results[name, False])
        guarded = min(results[name, True])
        print(f"proxy   {name:18} without WAF {plain * 1e6:8.1f} µs, with CRS PL1 "
              f"{guarded * 1e6:8.1f} µs CPU per request: the WAF adds "
              f"{(guarded - plain) * 1e6:8.1f} µs (best of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measure", choices=["engine", "proxy", "both"], nargs="?",
                        default="both")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.measure in ("engine", "both"):
        engine_cost(args.requests, args.rounds)
    if args.measure in ("proxy", "both"):
        proxy_cost(args.requests, args.rounds)


if __name__ == "__main__":
    main()
