"""Shared ACME certificates over real processes: pebble, one redis-server and three offload
instances started at once on one port (SO_REUSEPORT spreads connections, pebble's validations
included, over the three, as an L4 balancer would). Exactly one instance orders; all serve."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tcp_config
from cryptography import x509
from fleet_harness import RedisServer
from harness import Offload, echo, free_port, tls_connect
from test_acme_pebble import NAME, _acme, pebble  # noqa: F401 - pebble is a fixture

pytestmark = pytest.mark.peers

SECRET = "c2VjcmV0LWZvci10aGUtZmxlZXQtYWNtZS1zdG9yZS0wMTIzNDU2Nzg5"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    yield instance
    instance.kill()


def _serial_served(pebble_roots: bytes, port: int) -> int:
    client = ssl.create_default_context(cadata=pebble_roots.decode("ascii"))
    with tls_connect(port, client, server_name=NAME) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
    return x509.load_der_x509_certificate(der).serial_number


def test_three_instances_started_at_once_order_once_and_all_serve(
        pki, pebble, backend, port, tmp_path, redis_server):  # noqa: F811
    server = backend(echo)
    ca = pebble(http_port=free_port(), tls_port=port)
    secret = tmp_path / "acme.secret"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    instances: list[Offload] = []
    storages: list[Path] = []
    try:
        for index in range(3):
            storage = tmp_path / f"acme-{index}"
            storages.append(storage)
            config = tcp_config(port, [], [server.address]) + _acme(
                ca, storage, ["tls-alpn-01"], [NAME])
            config = config.replace("[acme]\n", f'[acme]\nshared = true\nshared_key_file = '
                                    f'"{secret}"\n', 1)
            config += (f'\n[fleet]\nredis = "{redis_server.url}"\nnode = "edge-{index}"\n'
                       f'name = "acme-test"\n')
            path = tmp_path / f"offload{index}.toml"
            path.write_text(config)
            instances.append(Offload(path))  # all three at once: none waits for another
        for instance in instances:
            instance.wait_ready()
        for instance in instances:
            instance.wait_for(lambda e: e.get("msg") in ("ACME certificate obtained",
                                                         "ACME certificate taken from the fleet"),
                              timeout=60)
        requested = [len(i.messages("ACME certificate requested")) for i in instances]
        obtained = [len(i.messages("ACME certificate obtained")) for i in instances]
        acme_log = [f"{index}: {line}" for index, i in enumerate(instances) for line in i.lines
                    if '"offload.acme"' in line or "fleet" in line]
        assert sum(requested) == 1, "\n".join(acme_log)  # one order for the name, fleet-wide
        assert sum(obtained) == 1, obtained
        bundles = {(storage / "certificates" / f"{NAME}.pem").read_bytes()
                   for storage in storages}
        assert len(bundles) == 1  # every node holds the one certificate
        issued = x509.load_pem_x509_certificate(next(iter(bundles)))
        for instance in instances:
            for pid in instance.worker_pids():
                instance.wait_msg("certificates updated", pid=pid, timeout=30)
        roots = ca.roots(ssl.create_default_context(cafile=str(pki.ca)))
        serials = {_serial_served(roots, port) for _ in range(12)}  # spread over the three
        assert serials == {issued.serial_number}
        for instance in instances:
            assert "PRIVATE KEY" not in "\n".join(instance.lines)
        raw = redis_server_values(redis_server)
        assert raw, "nothing was stored in Redis"
        assert not any(b"PRIVATE KEY" in value for value in raw), "a key is in Redis in clear"
    finally:
        for instance in instances:
            instance.kill()


def redis_server_values(server: RedisServer) -> list[bytes]:
    import redis

    client = redis.Redis(port=server.port)
    values: list[bytes] = []
    for key in client.scan_iter("acme-test:acme:*"):
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"hash":
            values.extend(client.hgetall(key).values())
    client.close()
    return values


def test_a_node_started_later_serves_the_fleet_certificate_within_seconds(
        pki, pebble, backend, port, tmp_path, redis_server):  # noqa: F811
    server = backend(echo)
    ca = pebble(http_port=free_port(), tls_port=port)
    secret = tmp_path / "acme.secret"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    instances: list[Offload] = []

    def start(index: int, listen: int) -> Offload:
        config = tcp_config(listen, [], [server.address]) + _acme(
            ca, tmp_path / f"acme-{index}", ["tls-alpn-01"], [NAME])
        config = config.replace("[acme]\n", f'[acme]\nshared = true\nshared_key_file = '
                                f'"{secret}"\n', 1)
        config += f'\n[fleet]\nredis = "{redis_server.url}"\nnode = "n{index}"\nname = "late"\n'
        path = tmp_path / f"offload{index}.toml"
        path.write_text(config)
        instance = Offload(path)
        instances.append(instance)
        instance.wait_ready()
        return instance

    try:
        first = start(0, port)
        first.wait_msg("ACME certificate obtained", timeout=60)
        other = free_port()
        started = time.monotonic()
        late = start(1, other)  # empty storage, its own port: only the store can help it
        late.wait_msg("ACME certificate taken from the fleet", timeout=15)
        for pid in late.worker_pids():
            late.wait_msg("certificates updated", pid=pid, timeout=15)
        roots = ca.roots(ssl.create_default_context(cafile=str(pki.ca)))
        served = _serial_served(roots, other)
        assert time.monotonic() - started < 10
        assert not late.messages("ACME certificate requested")
        leaf = x509.load_pem_x509_certificate(
            (tmp_path / "acme-0" / "certificates" / f"{NAME}.pem").read_bytes())
        assert served == leaf.serial_number
    finally:
        for instance in instances:
            instance.kill()


def test_a_reload_that_changes_the_fleet_restarts_the_acme_process(
        pki, localhost_bundle, backend, port, tmp_path, redis_server):
    import signal

    server = backend(echo)
    secret = tmp_path / "acme.secret"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    acme = (f'\n[acme]\nshared = true\nshared_key_file = "{secret}"\nagree_to_terms = true\n'
            f'directory = "https://127.0.0.1:1/dir"\nstorage = "{tmp_path / "acme"}"\n'
            f'[[acme.certificates]]\nnames = ["{NAME}"]\n')
    path = tmp_path / "offload.toml"

    def write(node: str) -> None:
        path.write_text(tcp_config(port, [localhost_bundle], [server.address]) + acme
                        + f'\n[fleet]\nredis = "{redis_server.url}"\nnode = "{node}"\n')

    write("before")
    instance = Offload(path)
    try:
        instance.wait_ready()
        instance.wait_msg("ACME process started")
        mark = len(instance.events)
        write("after")
        instance.signal(signal.SIGHUP)
        instance.wait_msg("reload complete", after=mark)
        instance.wait_msg("ACME process started", after=mark)  # the new link, the new node
    finally:
        instance.kill()
