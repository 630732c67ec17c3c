"""What the profiling scripts in benchmarks/ share: ports, processes, a one-worker nginx backend
and a certificate. Everything on 127.0.0.1; every process in its own group, stopped by it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from offload.demo.pki import Authority, write_private

BODY = "x" * 100
"""What the backend answers on /small (as peerbench's backend)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_ready(log: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until offload's log (at level info) says it is ready (its workers are)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b'"offload ready"' in log.read_bytes():
            return
        if process.poll() is not None:
            raise RuntimeError(f"offload exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"offload not ready after {timeout}s:\n{log.read_text()[-2000:]}")


def start(command: list[str], cpu: str | None, log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``command`` in its own process group, pinned to ``cpu`` when given."""
    prefix = ["taskset", "-c", cpu] if cpu is not None else []
    return subprocess.Popen([*prefix, *command], stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM,
         timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def certificate(work: Path) -> None:
    """``work/ca.crt`` and ``work/front.pem`` (ECDSA P-256, for localhost and 127.0.0.1)."""
    authority = Authority("offload profiling CA")
    (work / "ca.crt").write_bytes(authority.pem())
    write_private(work / "front.pem", authority.issue(["localhost", "127.0.0.1"]).bundle())


def nginx_backend(work: Path, port: int, body: str = BODY,
                  cpu: str | None = None, tls_port: int | None = None) -> subprocess.Popen[bytes]:
    """A one-worker nginx answering ``/small`` with ``body``, keeping connections alive; with
    ``tls_port``, over TLS there too (``work/front.pem`` from :func:`certificate`)."""
    tls = "" if tls_port is None else f"""
        listen 127.0.0.1:{tls_port} ssl reuseport;
        ssl_certificate {work}/front.pem;
        ssl_certificate_key {work}/front.pem;"""
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} reuseport;{tls}
        location /small {{ return 200 "{body}"; }}
    }}
}}
""")
    return start(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], cpu,
                 work / "nginx.log")
