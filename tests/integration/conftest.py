"""Fixtures for integration tests: a test CA, certificate bundles, backends, offload instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2_client import close_h2_clients  # noqa: F401 - autouse: closes raw HTTP/2 clients
from harness import Handler, Offload, TcpBackend, free_port
from http_backend import http_backend  # noqa: F401 - a fixture for the HTTP-mode tests
from http_client import close_http_clients  # noqa: F401 - autouse: closes HTTP clients

from offload.demo.pki import Authority, KeyType, write_private


class Pki:
    """A test CA whose bundles are written to a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = Authority("offload test CA")
        self.ca = directory / "ca.crt"
        self.ca.write_bytes(self.authority.pem())
        self._count = 0

    def bundle(self, names: list[str], key_type: KeyType = "ecdsa", *, days: int = 90,
               name: str | None = None, directory: Path | None = None) -> Path:
        """Issue a certificate for ``names`` and write chain + key to one PEM file."""
        self._count += 1
        path = (directory or self.directory) / (name or f"cert{self._count}-{key_type}.pem")
        write_private(path, self.authority.issue(names, key_type, days=days).bundle())
        return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def localhost_bundle(pki: Pki) -> Path:
    return pki.bundle(["localhost", "127.0.0.1"])


@pytest.fixture
def backend() -> Iterator[Callable[[Handler], TcpBackend]]:
    started: list[TcpBackend] = []

    def start(handler: Handler) -> TcpBackend:
        server = TcpBackend(handler)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _config(mode: str, port: int, certificates: list[Path], servers: list[str], *,
            workers: int, frontend: str, backend: str, global_: str) -> str:
    """A one-frontend configuration; servers may be TOML tables (start with "{")."""
    certs = ", ".join(f'"{path}"' for path in certificates)
    server_list = ", ".join(s if s.startswith("{") else f'"{s}"' for s in servers)
    return f"""
[global]
workers = {workers}
log_level = "debug"
drain_timeout = "10s"
{global_}

[[frontends]]
name = "{"test" if mode == "tcp" else "web"}"
bind = ["127.0.0.1:{port}"]
mode = "{mode}"
backend = "app"
certificates = [{certs}]
{frontend}

[[backends]]
name = "app"
servers = [{server_list}]
connect_timeout = "2s"
{backend}
"""


def tcp_config(port: int, certificates: list[Path], servers: list[str], *, workers: int = 1,
               frontend: str = "", backend: str = "", global_: str = "") -> str:
    """A one-frontend TCP-mode configuration, with extra TOML lines per section."""
    return _config("tcp", port, certificates, servers, workers=workers, frontend=frontend,
                   backend=backend, global_=global_)


def http_config(port: int, certificates: list[Path], servers: list[str], *, workers: int = 1,
                frontend: str = "", backend: str = "", global_: str = "",
                access_log: str = "stderr") -> str:
    """A one-frontend HTTP-mode configuration, with extra TOML lines per section."""
    return _config("http", port, certificates, servers, workers=workers,
                   frontend=f'access_log = "{access_log}"\n{frontend}', backend=backend,
                   global_=global_)


@pytest.fixture
def offload(tmp_path: Path) -> Iterator[Callable[..., Offload]]:
    """Start offload from config text; waits until it is ready; killed after the test."""
    running: list[Offload] = []

    def start(config: str, *, ready: bool = True) -> Offload:
        path = tmp_path / f"offload{len(running)}.toml"
        path.write_text(config)
        instance = Offload(path)
        running.append(instance)
        if ready:
            instance.wait_ready()
        return instance

    yield start
    for instance in running:
        instance.kill()


@pytest.fixture
def port() -> int:
    return free_port()
