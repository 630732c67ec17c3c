"""Real Redis, Sentinel and HAProxy processes for the fleet tests, on 127.0.0.1 only.

Each test starts its own ``redis-server`` on a free port (never the system's service), with
persistence off and its files in the test's directory; HAProxy runs in ``mode tcp`` with
``send-proxy-v2`` in front of offload instances, round robin, in the foreground.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis
from harness import WAIT, free_port, need


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"{what} exited with status {process.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port}")


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a peer started with its output piped, and close the pipe."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=WAIT)
    if process.stdout is not None:
        process.stdout.close()


class RedisServer:
    """A ``redis-server`` of the test's own; ``kill`` and ``start`` again on the same port."""

    def __init__(self, directory: Path, *, port: int | None = None,
                 replica_of: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = [need("redis-server", "redis-server"), "--port", str(self.port),
                   "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory), "--protected-mode", "no"]
        if self.replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, "redis-server")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.process is not None:
            _kill(self.process)
        self.process = None


class SentinelServer:
    """One ``redis-sentinel`` watching ``master`` (quorum 2, fast failure detection)."""

    def __init__(self, directory: Path, master_port: int, name: str = "fleetmaster") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n"
            f"sentinel parallel-syncs {name} 1\n")
        self.process = subprocess.Popen(
            [need("redis-sentinel", "redis-sentinel"), str(config)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, "redis-sentinel")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        _kill(self.process)


class HaProxy:
    """HAProxy in ``mode tcp``, round robin over ``ports``, each with ``send-proxy-v2``."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.port = free_port()
        servers = "\n".join(f"    server n{i} 127.0.0.1:{port} send-proxy-v2"
                            for i, port in enumerate(ports))
        config = directory / "haproxy.cfg"
        config.write_text(f"""
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fleet
    bind 127.0.0.1:{self.port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
""")
        self.process = subprocess.Popen([need("haproxy", "haproxy"), "-db", "-f", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, "haproxy")

    def kill(self) -> None:
        _kill(self.process)
