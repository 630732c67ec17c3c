"""A real ICAP antivirus service for tests: c-icap with its virus_scan module on clamd (ClamAV),
on 127.0.0.1, with a signature database made here (the machines cannot download ClamAV's).

The database holds one body signature (``.ndb``: any file containing :data:`INFECTED_MARKER`),
reported by ClamAV as :data:`SIGNATURE`. Everything (databases, sockets, logs, temporary files)
lives in one temporary directory; both daemons are started once per test module and stopped by
their process ids.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import free_port, need

INFECTED_MARKER = b"offload-icap-test-signature-7f3a9c1e"
"""Any body containing these bytes matches the test signature."""
SIGNATURE = "Offload.Test.Signature.UNOFFICIAL"
"""How ClamAV names a match of a database it did not sign itself."""
START_TIMEOUT = 20.0

_C_ICAP_MODULES = Path("/usr/lib/x86_64-linux-gnu/c_icap")


@dataclass
class IcapServer:
    port: int
    directory: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"icap://127.0.0.1:{self.port}/avscan"

    def log(self) -> str:
        parts = []
        for name in ("server.log", "clamd.log", "c-icap.out"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _modules_dir() -> Path:
    for candidate in (_C_ICAP_MODULES, *Path("/usr/lib").glob("*/c_icap")):
        if (candidate / "virus_scan.so").exists() and (candidate / "clamd_mod.so").exists():
            return candidate
    pytest.fail("c-icap's virus_scan module is not installed; install it with: "
                "apt-get install -y libc-icap-mod-virus-scan")


def _wait_until(ready: object, what: str, processes: list[subprocess.Popen[bytes]],
                server: IcapServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        for process in processes:
            if process.poll() is not None:
                server.stop()
                pytest.fail(f"{what} exited with {process.returncode}\n{server.log()}")
        time.sleep(0.05)  # an external daemon offers no event to wait on
    server.stop()
    pytest.fail(f"{what} not ready within {START_TIMEOUT} s\n{server.log()}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def start_icap_server(directory: Path) -> IcapServer:
    """clamd on a Unix socket in ``directory``, then c-icap on a free 127.0.0.1 port."""
    clamd = need("clamd", "clamav-daemon")
    c_icap = need("c-icap", "c-icap")
    modules = _modules_dir()
    database = directory / "db"
    database.mkdir()
    # .ndb: name:target type (0 = any file):offset (* = anywhere):hex signature
    (database / "offload-test.ndb").write_text(
        f"Offload.Test.Signature:0:*:{INFECTED_MARKER.hex()}\n")
    work = directory / "tmp"
    work.mkdir()
    clamd_socket = directory / "clamd.sock"
    (directory / "clamd.conf").write_text(
        f"DatabaseDirectory {database}\nLocalSocket {clamd_socket}\nForeground yes\n"
        f"TemporaryDirectory {work}\nLogFile {directory / 'clamd.log'}\n"
        "SelfCheck 3600\nMaxThreads 4\n")
    port = free_port()
    magic = Path("/etc/c-icap/c-icap.magic")
    templates = Path("/usr/share/c_icap/templates")
    (directory / "c-icap.conf").write_text("\n".join([
        f"PidFile {directory / 'c-icap.pid'}",
        f"CommandsSocket {directory / 'c-icap.ctl'}",
        "Timeout 30", "MaxKeepAliveRequests 1000", "KeepAliveTimeout 600",
        "StartServers 1", "MaxServers 1", "MinSpareThreads 2", "MaxSpareThreads 8",
        "ThreadsPerChild 8", f"Port 127.0.0.1:{port}", f"TmpDir {work}",
        "MaxMemObject 131072", "DebugLevel 1",
        f"ModulesDir {modules}", f"ServicesDir {modules}",
        f"TemplateDir {templates}/", "TemplateDefaultLanguage en",
        *([f"LoadMagicFile {magic}"] if magic.exists() else []),
        f"ServerLog {directory / 'server.log'}", f"AccessLog {directory / 'access.log'}",
        "Module common clamd_mod.so", f"clamd_mod.ClamdSocket {clamd_socket}",
        "Service antivirus_module virus_scan.so",
        "ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple",
        "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE",
        "virus_scan.MaxObjectSize 5M", "virus_scan.DefaultEngine clamd", ""]))
    env = {**os.environ, "TMPDIR": str(work)}
    processes: list[subprocess.Popen[bytes]] = []
    server = IcapServer(port, directory, processes)
    processes.append(subprocess.Popen(
        [clamd, "-c", str(directory / "clamd.conf")], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True))
    _wait_until(clamd_socket.exists, "clamd", processes, server)
    with (directory / "c-icap.out").open("wb") as out:
        processes.append(subprocess.Popen(
            [c_icap, "-N", "-f", str(directory / "c-icap.conf")], stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    _wait_until(lambda: _accepts(port), "c-icap", processes, server)
    return server


@contextmanager
def running_icap_server(directory: Path) -> Iterator[IcapServer]:
    """c-icap + clamd for as long as the block runs (a test module's fixture uses this)."""
    server = start_icap_server(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
