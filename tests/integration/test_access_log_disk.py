"""The access log on a disk that fills up, in a running offload: requests go on being answered,
lost lines are logged and counted in /metrics, and the log writes again once there is room.

A real full disk: a 64 KiB tmpfs mounted for the test (needs root, as the suite runs here and
in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import http_config
from harness import free_port
from http_client import get, https
from test_admin import samples, value, with_admin


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail("this test mounts a 64 KiB tmpfs to get a real full disk and needs root "
                    f"(or CAP_SYS_ADMIN): `mount` said {done.stderr.strip()!r}; run the tests "
                    "as root, as CI does")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"x" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def _wait_for_text(path: Path, text: str, timeout: float = 10.0) -> None:
    """The file is written by another process's thread: no event to wait on but the file."""
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never reached {path}"
        time.sleep(0.05)


def test_a_full_disk_loses_lines_not_the_log(pki, localhost_bundle, http_backend, offload,
                                             port, small_disk):
    server = http_backend()
    log = small_disk / "access.log"
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                              access_log=str(log)), admin_port))
    conn = https(port, pki.ca)
    assert get(conn, "/before")[0].status == 200
    _wait_for_text(log, '"path":"/before"')

    filler = fill(small_disk)
    for number in range(50):  # the disk is full: every request is still answered
        assert get(conn, f"/while-full/{number}")[0].status == 200
    failed = instance.wait_msg("access log write failed, lines dropped", file=str(log))
    assert failed["errno"] == "ENOSPC" and failed["dropped"] >= 1
    metrics = samples(admin_port)
    assert value(metrics, "offload_access_log_dropped_total", log=str(log),
                 reason="write_error") >= 1

    filler.unlink()
    assert get(conn, "/after")[0].status == 200
    instance.wait_msg("access log writable again", file=str(log))
    _wait_for_text(log, '"path":"/after"')
    assert len(instance.messages("access log write failed, lines dropped")) == 1
    written = 0
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line torn by the full disk is not JSON
            written += json.loads(line)["path"].startswith("/while-full/")
    dropped = value(samples(admin_port), "offload_access_log_dropped_total", log=str(log))
    assert written + dropped == 50
