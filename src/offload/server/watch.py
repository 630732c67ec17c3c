"""Watch certificate files and directories with Linux inotify, from the supervisor's selector.

Why: an added, replaced or removed certificate must be applied within 2 s, and the supervisor
may neither poll (it waits on events) nor run a thread (it forks). inotify gives a file
descriptor that becomes readable when something changes; the stdlib has no binding, so the
three calls are reached through ``ctypes`` and checked when a watcher is made.

Theory of operation. Certificates change by being rewritten in place, renamed over (certbot
and other ACME clients), re-pointed symlinks (``ln -sf``; Kubernetes flips a ``..data``
symlink) or deleted. A watch on a file follows its inode and misses all but the first, so we
only ever watch *directories* and filter their events by name. Each watched path is
*resolved* into an :class:`Interest`: the ``(directory, name)`` entries whose change can change
what the path denotes (every symlink met on the way, then the final name) and, for a
directory, the directory itself. A missing path is watched through the nearest existing
ancestor's entry for the missing name, so it is reported when it appears. After every batch
of events the paths are resolved again and the watches moved to match; resolution repeats
until it is stable, so that a change made between resolving and placing a watch is reported
rather than lost. The kernel gives one watch per inode, so a directory watched for several
paths delivers each event once.

Debouncing is the caller's: :class:`Debounce` collects changed paths until they have been
quiet for a while, on an injected clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

IN_ATTRIB, IN_CLOSE_WRITE = 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000

WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB
              | IN_DELETE_SELF | IN_MOVE_SELF)
"""What we ask for: every way a directory entry gains, loses or changes its content."""
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT
_ADD_FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK  # paths given are resolved already

EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name
READ_SIZE = 64 * 1024
_MAX_READS = 16  # per read_changes(); the selector reports the rest, so a flood cannot hog it
_MAX_HOPS = 40  # symlinks followed per path, like the kernel's ELOOP limit
_SETTLE_ROUNDS = 8


def parse_events(buffer: bytes) -> list[tuple[int, int, str]]:
    """Split a read() of an inotify descriptor into ``(wd, mask, name)``; name is "" if none.

    The kernel only returns whole records; a truncated one is an error, not something to skip.
    """
    events: list[tuple[int, int, str]] = []
    offset = 0
    while offset < len(buffer):
        if offset + EVENT_HEADER.size > len(buffer):
            raise ValueError(f"truncated inotify event header at offset {offset}")
        wd, mask, _cookie, length = EVENT_HEADER.unpack_from(buffer, offset)
        offset += EVENT_HEADER.size
        if offset + length > len(buffer):
            raise ValueError(f"inotify event name runs past the buffer at offset {offset}")
        name = buffer[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((wd, mask, os.fsdecode(name)))
    return events


@dataclass(frozen=True)
class Interest:
    """What one watched path depends on; see the module's theory of operation."""

    entries: frozenset[tuple[str, str]]
    whole: str | None = None
    """The resolved directory, when the path is one: any change inside it counts."""
    missing: bool = False

    def directories(self) -> set[str]:
        found = {directory for directory, _ in self.entries}
        if self.whole is not None:
            found.add(self.whole)
        return found


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def resolve(path: str) -> Interest:
    """Follow ``path`` component by component, symlinks included, and note what it rests on."""
    entries: set[tuple[str, str]] = set()
    pending = _parts(os.path.abspath(path))[::-1]
    current, is_dir, hops = "/", True, 0
    while pending:
        name = pending.pop()
        if name == "..":
            current, is_dir = os.path.dirname(current), True
            continue
        candidate = os.path.join(current, name)
        entry = (current, name)
        try:
            info = os.lstat(candidate)
        except OSError:
            entries.add(entry)
            return Interest(frozenset(entries), missing=True)
        if stat.S_ISLNK(info.st_mode):
            entries.add(entry)
            hops += 1
            try:
                target = os.readlink(candidate)
            except OSError:
                return Interest(frozenset(entries), missing=True)
            if hops > _MAX_HOPS:
                return Interest(frozenset(entries), missing=True)
            if target.startswith("/"):
                current = "/"
            pending.extend(_parts(target)[::-1])
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if not pending:
            entries.add(entry)
        elif not is_dir:  # a file where a directory should be
            entries.add(entry)
            return Interest(frozenset(entries), missing=True)
        current = candidate
    return Interest(frozenset(entries), current if is_dir else None)


class _Libc:
    """The three inotify calls from libc, checked once; failures raise OSError with errno."""

    def __init__(self, lib: Any) -> None:
        try:
            self._init1: Any = lib.inotify_init1
            self._add: Any = lib.inotify_add_watch
            self._rm: Any = lib.inotify_rm_watch
        except AttributeError as error:
            raise OSError(f"this C library has no inotify ({error}); watching files needs Linux"
                          ) from None
        self._init1.argtypes, self._init1.restype = [ctypes.c_int], ctypes.c_int
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm.argtypes, self._rm.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int

    @classmethod
    def load(cls) -> _Libc:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        except OSError as error:
            raise OSError(f"cannot load the C library for inotify: {error}") from None
        return cls(lib)

    def init1(self, flags: int) -> int:
        return _checked(int(self._init1(flags)), "inotify_init1")

    def add_watch(self, fd: int, path: str, mask: int) -> int:
        return _checked(int(self._add(fd, os.fsencode(path), mask)), path)

    def rm_watch(self, fd: int, wd: int) -> None:
        _checked(int(self._rm(fd, wd)), "inotify_rm_watch")


def _checked(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), what)
    return result


class PathWatcher:
    """An inotify instance watching paths; register :meth:`fileno` with a selector."""

    def __init__(self) -> None:
        self._libc = _Libc.load()
        self._fd = self._libc.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        self._interests: dict[str, Interest] = {}
        self._absolute: dict[str, str] = {}
        self._wd_by_dir: dict[str, int] = {}
        self._dirs_by_wd: dict[int, set[str]] = {}
        self._failed: set[str] = set()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PathWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def watch(self, path: str) -> None:
        """Watch a file or directory; a missing one is reported when it appears. Never raises
        for the file system's state: see :meth:`missing`."""
        if path in self._interests:
            return
        self._absolute[path] = os.path.abspath(path)
        self._interests[path] = resolve(self._absolute[path])
        self._settle()

    def missing(self) -> set[str]:
        """Watched paths that do not exist now, or whose directories could not be watched
        (for example when ``fs.inotify.max_user_watches`` is reached)."""
        return {path for path, interest in self._interests.items()
                if interest.missing or interest.directories() & self._failed}

    def rewatch(self) -> set[str]:
        """Resolve every path again and retry failed watches; returns paths that moved."""
        return self._refresh()

    def read_changes(self) -> set[str]:
        """Read the pending events (never blocks); return the watched paths they affect."""
        changed: set[str] = set()
        seen = False
        for _ in range(_MAX_READS):
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            seen = seen or bool(data)
            for wd, mask, name in parse_events(data):
                changed |= self._affected(wd, mask, name)
        if seen:
            changed |= self._refresh()
        return changed

    # ------------------------------------------------------------------ internals

    def _affected(self, wd: int, mask: int, name: str) -> set[str]:
        if mask & IN_Q_OVERFLOW:
            return set(self._interests)  # events were lost: anything may have changed
        dirs = self._dirs_by_wd.get(wd)
        if not dirs:
            return set()  # a watch we already dropped (its IN_IGNORED, late events)
        if mask & _GONE:
            self._forget(wd, still_there=bool(mask & IN_MOVE_SELF))
            return {path for path, interest in self._interests.items()
                    if interest.directories() & dirs}
        return {path for path, interest in self._interests.items()
                if interest.whole in dirs or any((d, name) in interest.entries for d in dirs)}

    def _refresh(self) -> set[str]:
        fresh = {path: resolve(self._absolute[path]) for path in self._interests}
        moved = {path for path, interest in fresh.items() if interest != self._interests[path]}
        self._interests = fresh
        return moved | self._settle()

    def _settle(self) -> set[str]:
        """Place the watches the interests need; repeat while resolution keeps changing."""
        moved: set[str] = set()
        for _ in range(_SETTLE_ROUNDS):
            self._place()
            fresh = {path: resolve(self._absolute[path]) for path in self._interests}
            drift = {path for path, interest in fresh.items() if interest != self._interests[path]}
            self._interests = fresh
            if not drift:
                break
            moved |= drift
        return moved

    def _place(self) -> None:
        needed: set[str] = set()
        for interest in self._interests.values():
            needed |= interest.directories()
        for directory in set(self._wd_by_dir) - needed:
            self._unwatch(directory)
        self._failed.clear()
        for directory in needed - set(self._wd_by_dir):
            try:
                wd = self._libc.add_watch(self._fd, directory, WATCH_MASK | _ADD_FLAGS)
            except OSError:
                self._failed.add(directory)  # gone meanwhile (resolution notices) or refused
                continue
            self._wd_by_dir[directory] = wd
            self._dirs_by_wd.setdefault(wd, set()).add(directory)

    def _unwatch(self, directory: str) -> None:
        wd = self._wd_by_dir.pop(directory)
        sharing = self._dirs_by_wd.get(wd, set())
        sharing.discard(directory)
        if not sharing:
            self._forget(wd, still_there=True)

    def _forget(self, wd: int, *, still_there: bool) -> None:
        for directory in self._dirs_by_wd.pop(wd, set()):
            self._wd_by_dir.pop(directory, None)
        if still_there:
            try:
                self._libc.rm_watch(self._fd, wd)
            except OSError:
                pass  # the kernel dropped it already (its IN_IGNORED is on the way)


class Debounce:
    """Collects changed paths until none has arrived for ``delay`` seconds.

    ``max_wait`` (default five delays) bounds how long a steady stream of changes can hold a
    batch back. Times are passed in, from the caller's monotonic clock.
    """

    def __init__(self, delay: float, max_wait: float | None = None) -> None:
        self.delay = delay
        self.max_wait = 5 * delay if max_wait is None else max_wait
        if delay < 0 or self.max_wait < delay:
            raise ValueError("need 0 <= delay <= max_wait")
        self._pending: set[str] = set()
        self._first = self._last = 0.0

    def note(self, now: float, paths: set[str]) -> None:
        if not paths:
            return
        if not self._pending:
            self._first = now
        self._pending |= paths
        self._last = now

    def due(self, now: float) -> float | None:
        """When the pending batch is due (it may be in the past), or None if there is none.

        ``now`` is not needed to answer; it is taken so every method reads the same clock."""
        if not self._pending:
            return None
        return min(self._last + self.delay, self._first + self.max_wait)

    def take(self, now: float) -> set[str]:
        """The pending batch if it is due at ``now`` (and forget it); else an empty set."""
        due = self.due(now)
        if due is None or now < due:
            return set()
        batch, self._pending = self._pending, set()
        return batch
