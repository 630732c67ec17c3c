"""Backend servers as the data path uses them: resolved once, at load, before workers fork.

Host names are resolved when the configuration is loaded (as HAProxy and nginx do by default),
so that a connection never waits for DNS and ``offload check`` reports a name that does not
resolve.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from offload.config.model import BackendConfig, ServerConfig, UnixAddress
from offload.errors import Issue


@dataclass(frozen=True)
class Server:
    """One resolved backend server."""

    label: str
    host: str = ""
    port: int = 0
    unix_path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"


def resolve_server(server: ServerConfig) -> Server:
    """Resolve a configured server to an address, or raise OSError."""
    if isinstance(server.address, UnixAddress):
        return Server(server.label, unix_path=server.address.path)
    infos = socket.getaddrinfo(server.address.host, server.address.port,
                               type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    host, port = infos[0][4][0], infos[0][4][1]
    return Server(server.label, host=str(host), port=int(port))


def resolve_backend(backend: BackendConfig, where: str) -> tuple[tuple[Server, ...], list[Issue]]:
    """Resolve every server of a backend; problems come back as issues naming the server."""
    servers: list[Server] = []
    issues: list[Issue] = []
    for index, server in enumerate(backend.servers):
        try:
            servers.append(resolve_server(server))
        except OSError as error:
            issues.append(Issue(
                f"{where}.servers[{index}]",
                f"cannot resolve {server.address}: {error.strerror or error}",
                "use an IP address or a name this machine can resolve",
            ))
    return tuple(servers), issues
