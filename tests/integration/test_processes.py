"""Supervisor and workers: shared session tickets, drain, restart, reload, start failures."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from conftest import tcp_config
from harness import Recording, assert_resumes_on_every_worker, client_context, echo, recv_all, tls_connect

from offload.demo.pki import write_private


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid), f"process {pid} is still running"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_ticket_from_one_worker_resumes_on_another(pki, localhost_bundle, backend, offload, port,
                                                   version):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address], workers=2))
    assert_resumes_on_every_worker(instance, port, client_context(pki.ca, maximum=version))


def test_sigterm_drains_an_open_transfer(pki, localhost_bundle, backend, offload, port):
    payload = os.urandom(8 * 1024 * 1024)

    def send_payload(conn: socket.socket, recording: Recording) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    server = backend(send_payload)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    received = bytearray()
    with tls_connect(port, client_context(pki.ca)) as tls:
        received += tls.recv(65536)
        instance.signal(signal.SIGTERM)
        instance.wait_msg("worker draining")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        while chunk := tls.recv(65536):
            received += chunk
            time.sleep(0.001)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert instance.process.wait(15) == 0


def test_drain_deadline_closes_what_is_left(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    config = tcp_config(port, [localhost_bundle], [server.address]).replace(
        'drain_timeout = "10s"', 'drain_timeout = "1s"')
    instance = offload(config)
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"x")
        assert tls.recv(1) == b"x"
        started = time.monotonic()
        instance.signal(signal.SIGTERM)
        assert recv_all(tls) == b""
        assert time.monotonic() - started < 6
    instance.wait_msg("drain deadline reached, closing connections")
    assert instance.process.wait(10) == 0


def test_a_dead_worker_is_replaced(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address], workers=2))
    victim = sorted(instance.worker_pids())[0]
    slot = next(e["slot"] for e in instance.messages("worker started") if e["pid"] == victim)
    os.kill(victim, signal.SIGKILL)
    died = instance.wait_msg("worker died; restarting it", pid=victim)
    assert died["exit_code"] == -signal.SIGKILL
    replacement = instance.wait_for(lambda e: e.get("msg") == "worker started"
                                    and e.get("slot") == slot and e.get("pid") != victim)
    instance.wait_msg("worker ready", slot=slot, pid=replacement["pid"])
    assert len(instance.worker_pids()) == 2
    for _ in range(6):
        with tls_connect(port, client_context(pki.ca)) as tls:
            tls.sendall(b"ok")
            assert tls.recv(2) == b"ok"


@pytest.mark.parametrize("breakage", ["invalid toml", "mismatched key"])
def test_a_bad_reload_keeps_the_running_configuration(pki, localhost_bundle, backend, offload,
                                                      port, tmp_path, breakage):
    server = backend(echo)
    config = tcp_config(port, [localhost_bundle], [server.address])
    instance = offload(config)
    if breakage == "invalid toml":
        instance.config.write_text(config + "\n[[frontends]\n")
    else:
        broken = tmp_path / "broken.pem"
        one, other = pki.authority.issue(["localhost"]), pki.authority.issue(["localhost"])
        from offload.demo.pki import key_pem

        write_private(broken, one.cert_chain() + key_pem(other.key))
        instance.config.write_text(tcp_config(port, [broken], [server.address]))
    workers = instance.worker_pids()
    mark = len(instance.events)
    instance.signal(signal.SIGHUP)
    refused = instance.wait_for(lambda e: str(e.get("msg", "")).startswith("reload refused"),
                                after=mark)
    assert refused["level"] == "error"
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"still here")
        assert tls.recv(20) == b"still here"
    assert instance.worker_pids() == workers


def test_reload_adds_a_listener(pki, localhost_bundle, backend, offload, port):
    from harness import free_port

    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    second = free_port()
    instance.config.write_text(tcp_config(port, [localhost_bundle], [server.address]).replace(
        f'bind = ["127.0.0.1:{port}"]', f'bind = ["127.0.0.1:{port}", "127.0.0.1:{second}"]'))
    mark = len(instance.events)
    instance.signal(signal.SIGHUP)
    instance.wait_msg("reload complete", after=mark)
    for target in (port, second):
        with tls_connect(target, client_context(pki.ca)) as tls:
            tls.sendall(b"hi")
            assert tls.recv(2) == b"hi"


def test_a_taken_port_fails_the_start(pki, localhost_bundle, offload, port):
    with socket.create_server(("127.0.0.1", port)):
        instance = offload(tcp_config(port, [localhost_bundle], ["127.0.0.1:9"]), ready=False)
        assert instance.process.wait(15) == 1
    assert any(f"cannot listen on 127.0.0.1:{port}" in line for line in instance.lines)


def test_workers_drain_when_the_supervisor_dies(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address], workers=2))
    workers = instance.worker_pids()
    os.kill(instance.process.pid, signal.SIGKILL)
    for pid in workers:
        _wait_gone(pid)


def test_sigint_stops_like_sigterm(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address], workers=2))
    instance.signal(signal.SIGINT)
    assert instance.process.wait(15) == 0
    assert instance.messages("stopping: draining the workers")[0]["signal"] == "SIGINT"


def test_config_file_is_not_needed_after_start(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    assert instance.config is not None
    Path(instance.config).unlink()
    mark = len(instance.events)
    instance.signal(signal.SIGHUP)
    instance.wait_for(lambda e: str(e.get("msg", "")).startswith("reload refused"), after=mark)
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"ok")
        assert tls.recv(2) == b"ok"


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_workers_drop_privileges(pki, localhost_bundle, backend, offload, port):
    import pwd

    server = backend(echo)
    config = tcp_config(port, [localhost_bundle], [server.address],
                        global_='user = "nobody"\ngroup = "nogroup"')
    if os.geteuid() != 0:
        instance = offload(config, ready=False)
        assert instance.process.wait(15) == 1
        assert any("need offload to be started as root" in line for line in instance.lines)
        return
    instance = offload(config)
    (worker,) = instance.worker_pids()
    assert _uid_of(worker) == pwd.getpwnam("nobody").pw_uid
    assert _uid_of(instance.process.pid) == 0  # the supervisor keeps root for reloads
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"as nobody")
        assert tls.recv(20) == b"as nobody"


def test_repeated_stops_always_exit_cleanly(pki, localhost_bundle, backend, offload, port):
    """A stop signal and the workers' exits can arrive in one batch of events; the supervisor
    once read a pipe it had just closed (EBADF) and exited 1 about one stop in five."""
    server = backend(echo)
    config = tcp_config(port, [localhost_bundle], [server.address], workers=2)
    for _ in range(8):
        instance = offload(config)
        instance.signal(signal.SIGINT)
        assert instance.process.wait(15) == 0, "\n".join(instance.lines[-10:])
