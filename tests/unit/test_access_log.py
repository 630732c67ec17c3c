"""The access log on a failing disk: lines dropped and counted, errors logged once a minute,
a bounded queue, and recovery when space returns.

The full disk is real: a 64 KiB tmpfs mounted for the test (needs root, as the test suite runs
here and in CI) and ``/dev/full`` for ENOSPC on every write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.observe.access_log import ERROR_LOG_INTERVAL, AccessLog, LineWriter
from offload.observe.exposition import render_text as render
from offload.observe.metrics import Merged, SupervisorFacts


class Clock:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail("this test mounts a 64 KiB tmpfs to get a real full disk and needs root "
                    f"(or CAP_SYS_ADMIN): `mount` said {done.stderr.strip()!r}; run the tests "
                    "as root, as CI does")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the filler file, to delete to make room again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"x" * 4096):
                pass
        with contextlib.suppress(OSError):
            while os.write(fd, b"x"):
                pass
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space"):
        (disk / "probe").write_bytes(b"x" * 8192)
    return filler


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def line(number: int) -> str:
    return json.dumps({"n": number, "path": "/" + "p" * 90})


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def whole_numbers(path: Path) -> list[int]:
    """The ``n`` of every complete line in the file (torn fragments are skipped)."""
    numbers = []
    for text in file_lines(path):
        try:
            numbers.append(json.loads(text)["n"])
        except ValueError:
            continue
    return numbers


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "access log write failed, lines dropped"]


def test_a_full_disk_drops_and_counts_lines_and_recovers(small_disk: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "offload.access_log")
    clock = Clock()
    path = small_disk / "access.log"
    writer = LineWriter(open_log(path), str(path), clock)
    writer.write([line(n) for n in range(10)])
    filler = fill(small_disk)

    sent = 10
    for _ in range(5):  # the disk is full: every batch fails
        writer.write([line(n) for n in range(sent, sent + 20)])
        sent += 20
    kept = whole_numbers(path)
    assert writer.dropped == sent - len(kept) > 0
    assert kept == list(range(len(kept))), "what was written is whole and in order"
    assert len(failures(caplog)) == 1, "one error line, not one per batch"
    assert failures(caplog)[0].fields["errno"] == "ENOSPC"  # type: ignore[attr-defined]

    clock.now += ERROR_LOG_INTERVAL / 2
    writer.write([line(sent)])
    sent += 1
    assert len(failures(caplog)) == 1
    clock.now += ERROR_LOG_INTERVAL / 2
    writer.write([line(sent)])
    sent += 1
    assert len(failures(caplog)) == 2, "a minute later, one more line"
    reported = [r.fields["dropped"] for r in failures(caplog)]  # type: ignore[attr-defined]
    assert sum(reported) == writer.dropped, "each line says how many were lost since the last"

    filler.unlink()  # the disk has room again
    writer.write([line(n) for n in range(sent, sent + 5)])
    assert whole_numbers(path)[-5:] == list(range(sent, sent + 5))
    assert [r.getMessage() for r in caplog.records][-1] == "access log writable again"
    dropped = writer.dropped
    writer.write([line(sent + 5)])
    assert writer.dropped == dropped
    assert len(failures(caplog)) == 2
    # a line torn by the full disk stands on its own: every other line is valid JSON
    torn = [text for text in file_lines(path) if not text.startswith('{"n"') or
            not text.endswith("}")]
    assert len(torn) <= 1
    writer.close()


def test_dev_full_counts_every_line(caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    clock = Clock()
    writer = LineWriter(fd, "/dev/full", clock)
    for batch in range(100):
        writer.write([line(batch), line(batch)])
        clock.now += 1.0
    assert writer.dropped == 200
    assert len(failures(caplog)) == 2  # at 0 s and at 60 s
    writer.close()


def test_the_queue_is_bounded() -> None:
    log = AccessLog("/nonexistent/never-opened.log", limit=100)
    for number in range(250):
        log.write({"n": number})
    assert log.dropped() == {"queue_full": 150, "write_error": 0, "format_error": 0}


def test_the_writer_thread_outlives_a_full_disk(small_disk: Path) -> None:
    """The thread keeps running through a full disk and writes again once there is room."""
    path = small_disk / "access.log"
    log = AccessLog(str(path), "json")
    log.start()
    try:
        log.write({"n": 0})
        assert log.sync(5)
        filler = fill(small_disk)
        for number in range(1, 200):
            log.write({"n": number, "pad": "x" * 200})
        assert log.sync(5), "the writer thread must still be alive"
        assert log.dropped()["write_error"] > 0
        filler.unlink()
        log.write({"n": 1000})
        assert log.sync(5)
        assert whole_numbers(path)[-1] == 1000
        written = len(whole_numbers(path))
        assert written + log.dropped()["write_error"] == 201
    finally:
        log.stop()


def test_an_entry_that_cannot_be_formatted_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "combined")
    log.start()
    try:
        log.write({"method": "GET"})  # no time: the combined format cannot write it
        log.write({"time": "2026-01-01T00:00:00.000Z", "method": "GET", "path": "/",
                   "http": "1.1", "status": 200, "client": "127.0.0.1:5"})
        assert log.sync(5)
    finally:
        log.stop()
    assert log.dropped()["format_error"] == 1
    assert file_lines(path) == ['127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" '
                                '200 - "-" "-"']


def test_dropped_lines_are_a_metric() -> None:
    merged = Merged()
    merged.counters["access_log_dropped", "/var/log/a.log", "write_error"] = 7
    text = render(merged, SupervisorFacts("1", 0.0, 1, {}, 0, ())).decode()
    assert ('offload_access_log_dropped_total{log="/var/log/a.log",reason="write_error"} 7.0'
            in text)


def test_write_error_names_the_errno(caplog: pytest.LogCaptureFixture) -> None:
    read_only = os.open("/dev/null", os.O_RDONLY)
    writer = LineWriter(read_only, "/dev/null", Clock())
    writer.write(["x"])
    assert failures(caplog)[0].fields["errno"] == errno.errorcode[errno.EBADF]  # type: ignore[attr-defined]
    writer.close()
