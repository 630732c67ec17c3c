"""Tests for offload.server.watch: real inotify on files in tmp_path, the event parser, Debounce.

inotify queues an event before the system call that caused it returns, so once a test has
changed the file system its events are already waiting: a selector with a bounded timeout
only guards against a broken watcher hanging the test. A negative test first checks that the
descriptor *is* readable (the kernel saw the change) and then that nothing was reported.
"""

from __future__ import annotations

import os
import selectors
import shutil
import struct
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.server.watch import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_IGNORED,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Debounce,
    PathWatcher,
    _Libc,
    parse_events,
)

BOUND = 2.0  # the reload promise: a change must be seen within 2 s


@pytest.fixture
def watcher() -> Iterator[PathWatcher]:
    with PathWatcher() as made:
        yield made


def readable(watcher: PathWatcher, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(watcher.fileno(), selectors.EVENT_READ)
        return bool(selector.select(timeout))


def changes(watcher: PathWatcher) -> set[str]:
    """Wait (bounded) for the watcher to be readable, then read everything it has."""
    assert readable(watcher, BOUND), "no inotify event arrived"
    found: set[str] = set()
    while readable(watcher, 0):
        found |= watcher.read_changes()
    return found


def nothing_reported(watcher: PathWatcher) -> bool:
    """The kernel delivered events, yet none of them concerned a watched path."""
    assert readable(watcher, BOUND), "the kernel reported nothing at all"
    return watcher.read_changes() == set()


def write(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def replace_atomically(path: Path, text: str) -> None:
    """What ACME clients do: write a temporary file beside the target, rename it over."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary, text)
    os.replace(temporary, path)


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    path = tmp_path / "cert.pem"
    write(path, "one")
    return path


# ---------------------------------------------------------------------- single files


def test_rewritten_in_place(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    assert not readable(watcher, 0)
    write(cert, "two")
    assert changes(watcher) == {str(cert)}


def test_atomic_replace(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    replace_atomically(cert, "two")
    assert changes(watcher) == {str(cert)}
    replace_atomically(cert, "three")  # the watch survives the old inode's removal
    assert changes(watcher) == {str(cert)}


def test_deleted(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    cert.unlink()
    assert changes(watcher) == {str(cert)}
    assert watcher.missing() == {str(cert)}


def test_renamed_away(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    cert.rename(cert.with_name("old.pem"))
    assert changes(watcher) == {str(cert)}
    assert watcher.missing() == {str(cert)}


def test_missing_file_reported_when_it_appears(watcher: PathWatcher, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cert.pem"
    watcher.watch(str(path))
    assert watcher.missing() == {str(path)}
    path.parent.mkdir(parents=True)
    write(path, "one")
    assert str(path) in changes(watcher)
    assert watcher.missing() == set()
    replace_atomically(path, "two")
    assert changes(watcher) == {str(path)}


def test_unrelated_file_in_same_directory(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    replace_atomically(cert.with_name("other.pem"), "x")
    write(cert.with_name("notes.txt"), "x")
    assert nothing_reported(watcher)


def test_two_files_in_one_directory(watcher: PathWatcher, cert: Path) -> None:
    key = cert.with_name("key.pem")
    write(key, "k")
    watcher.watch(str(cert))
    watcher.watch(str(key))
    replace_atomically(key, "k2")
    assert changes(watcher) == {str(key)}
    write(cert, "two")
    assert changes(watcher) == {str(cert)}


def test_same_path_watched_twice_gives_one_event(watcher: PathWatcher, cert: Path) -> None:
    watcher.watch(str(cert))
    watcher.watch(str(cert))
    watcher.watch(str(cert.parent))  # the same directory again, as a watched directory
    replace_atomically(cert, "two")
    assert readable(watcher, BOUND)
    events = parse_events(os.read(watcher.fileno(), 65536))
    assert [mask & IN_MOVED_TO for _, mask, name in events if name == "cert.pem"] == [IN_MOVED_TO]


# ---------------------------------------------------------------------- symlinks


def test_symlink_swapped(watcher: PathWatcher, tmp_path: Path) -> None:
    write(tmp_path / "a.pem", "a")
    write(tmp_path / "b.pem", "b")
    link = tmp_path / "cert.pem"
    os.symlink("a.pem", link)
    watcher.watch(str(link))
    os.symlink("b.pem", tmp_path / "cert.pem.tmp")
    os.replace(tmp_path / "cert.pem.tmp", link)
    assert changes(watcher) == {str(link)}
    write(tmp_path / "a.pem", "a2")  # no longer the target
    assert nothing_reported(watcher)
    write(tmp_path / "b.pem", "b2")  # the new target, edited in place
    assert changes(watcher) == {str(link)}


def test_symlink_target_in_other_directory(watcher: PathWatcher, tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "live").mkdir()
    write(tmp_path / "archive" / "cert1.pem", "one")
    link = tmp_path / "live" / "cert.pem"
    os.symlink("../archive/cert1.pem", link)
    watcher.watch(str(link))
    write(tmp_path / "archive" / "cert1.pem", "edited")
    assert changes(watcher) == {str(link)}


def test_kubernetes_secret_volume(watcher: PathWatcher, tmp_path: Path) -> None:
    """A secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>, swapped by rename."""
    volume = tmp_path / "secret"
    volume.mkdir()

    def publish(version: str, text: str) -> None:
        (volume / version).mkdir()
        write(volume / version / "tls.crt", text)
        os.symlink(version, volume / "..data_tmp")
        os.replace(volume / "..data_tmp", volume / "..data")

    publish("..v1", "one")
    os.symlink("..data/tls.crt", volume / "tls.crt")
    path = str(volume / "tls.crt")
    watcher.watch(path)
    publish("..v2", "two")
    shutil.rmtree(volume / "..v1")
    assert changes(watcher) == {path}
    assert (volume / "tls.crt").read_text(encoding="ascii") == "two"
    write(volume / "..v2" / "tls.crt", "edited")  # the watch moved to the new version
    assert changes(watcher) == {path}


# ---------------------------------------------------------------------- directories


def test_new_file_in_watched_directory(watcher: PathWatcher, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    watcher.watch(str(certs))
    write(certs / "new.pem", "x")
    assert changes(watcher) == {str(certs)}


def test_file_removed_from_watched_directory(watcher: PathWatcher, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write(certs / "old.pem", "x")
    watcher.watch(str(certs))
    (certs / "old.pem").unlink()
    assert changes(watcher) == {str(certs)}


def test_watched_directory_removed_and_recreated(watcher: PathWatcher, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write(certs / "a.pem", "x")
    watcher.watch(str(certs))
    shutil.rmtree(certs)
    assert changes(watcher) == {str(certs)}
    assert watcher.missing() == {str(certs)}
    certs.mkdir()
    assert changes(watcher) == {str(certs)}
    write(certs / "b.pem", "x")
    assert changes(watcher) == {str(certs)}


def test_rewatch_after_directory_came_back(watcher: PathWatcher, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    watcher.watch(str(certs))
    certs.rmdir()
    certs.mkdir()  # both before the watcher reads anything
    assert changes(watcher) == {str(certs)}
    assert watcher.rewatch() == set()
    assert watcher.missing() == set()
    write(certs / "a.pem", "x")
    assert changes(watcher) == {str(certs)}


def test_queue_overflow_reports_everything(watcher: PathWatcher, tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text(encoding="ascii"))
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}; flooding it would take too long")
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    busy.mkdir()
    quiet.mkdir()
    write(busy / "a", "")
    write(busy / "b", "")
    write(quiet / "cert.pem", "x")
    watcher.watch(str(busy))
    watcher.watch(str(quiet / "cert.pem"))
    for _ in range(limit // 2 + 10):  # alternate names so the kernel cannot merge events
        os.utime(busy / "a")
        os.utime(busy / "b")
    assert changes(watcher) == {str(busy), str(quiet / "cert.pem")}


def test_close_is_idempotent() -> None:
    made = PathWatcher()
    assert made.fileno() >= 0
    made.close()
    made.close()
    assert made.fileno() == -1


def test_libc_without_inotify_is_refused() -> None:
    with pytest.raises(OSError, match="no inotify"):
        _Libc(types.SimpleNamespace())


# ---------------------------------------------------------------------- the parser


def record(wd: int, mask: int, name: bytes = b"", padded: int = 0) -> bytes:
    """One struct inotify_event; the name NUL-terminated and padded to ``padded`` bytes."""
    field = name + b"\0" * (padded - len(name)) if name or padded else b""
    assert len(field) == padded, "padding must leave room for the name's NUL"
    return struct.pack("iIII", wd, mask, 0, len(field)) + field


def test_parse_several_records_with_padding() -> None:
    buffer = (record(1, IN_CREATE, b"cert.pem", 16) + record(1, IN_CLOSE_WRITE, b"cert.pem", 16)
              + record(2, IN_IGNORED) + record(3, IN_MOVED_TO, b"a-rather-long-name.pem", 32))
    assert parse_events(buffer) == [
        (1, IN_CREATE, "cert.pem"), (1, IN_CLOSE_WRITE, "cert.pem"),
        (2, IN_IGNORED, ""), (3, IN_MOVED_TO, "a-rather-long-name.pem"),
    ]


def test_parse_overflow_record() -> None:
    assert parse_events(record(-1, IN_Q_OVERFLOW)) == [(-1, IN_Q_OVERFLOW, "")]


def test_parse_empty_buffer() -> None:
    assert parse_events(b"") == []


def test_parse_name_that_is_not_utf8() -> None:
    (event,) = parse_events(record(1, IN_CREATE, b"caf\xe9.pem", 16))
    assert os.fsencode(event[2]) == b"caf\xe9.pem"


@pytest.mark.parametrize("cut", [1, 15, 20])
def test_parse_rejects_truncated_records(cut: int) -> None:
    whole = record(1, IN_CREATE, b"cert.pem", 16) + record(2, IN_CREATE, b"key.pem", 16)
    with pytest.raises(ValueError, match="inotify event"):
        parse_events(whole[:len(whole) - cut])


# ---------------------------------------------------------------------- Debounce


def test_debounce_nothing_pending() -> None:
    debounce = Debounce(0.2)
    assert debounce.due(0.0) is None
    debounce.note(0.0, set())
    assert debounce.due(0.0) is None
    assert debounce.take(10.0) == set()


def test_debounce_waits_for_quiet() -> None:
    debounce = Debounce(0.2)
    debounce.note(1.0, {"a"})
    assert debounce.due(1.0) == pytest.approx(1.2)
    debounce.note(1.15, {"b"})
    assert debounce.due(1.15) == pytest.approx(1.35)
    assert debounce.take(1.3) == set()
    assert debounce.take(1.35) == {"a", "b"}
    assert debounce.due(1.35) is None
    assert debounce.take(5.0) == set()


def test_debounce_max_wait_bounds_a_steady_stream() -> None:
    debounce = Debounce(0.2, max_wait=1.0)
    taken: dict[int, set[str]] = {}
    for step in range(30):  # a change every 0.1 s for 3 s; exact times, no float drift
        now = step / 10
        debounce.note(now, {f"p{step}"})
        if batch := debounce.take(now):
            taken[step] = batch
    assert sorted(taken) == [10, 21]  # never held back more than max_wait (1 s)
    assert len(taken[10]) == 11


def test_debounce_next_batch_starts_fresh() -> None:
    debounce = Debounce(0.2, max_wait=0.5)
    debounce.note(0.0, {"a"})
    assert debounce.take(0.2) == {"a"}
    debounce.note(10.0, {"b"})
    assert debounce.due(10.0) == pytest.approx(10.2)


@pytest.mark.parametrize(("delay", "max_wait"), [(-1.0, None), (0.5, 0.1)])
def test_debounce_rejects_bad_settings(delay: float, max_wait: float | None) -> None:
    with pytest.raises(ValueError, match="delay"):
        Debounce(delay, max_wait)
