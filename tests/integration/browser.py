"""Headless Chromium for tests: the rendered DOM of a page and a PNG screenshot of it.

Chromium runs with a fresh profile in a temporary directory and ``--virtual-time-budget``, so the
page's timers (offload's status page polls every 2 s) run several times in well under a second of
real time; the whole run is bounded by a timeout and its process group is killed on expiry.

HTTP Basic credentials can be given in the URL (``http://user:pass@127.0.0.1:port/``): Chromium
answers the server's 401 challenge for the page with them, keeps them in its auth cache and sends
them with the page's same-origin ``fetch()`` calls too (checked with Chromium 156). The page's
own ``location`` no longer carries them. Without them, a ``fetch()`` answered 401 with a Basic
challenge waits for a login dialog that headless mode never shows: the run hits its timeout.

``Browser`` drives one Chromium through the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in a NUL byte on descriptors 3 and 4, no port, no WebSocket library) for
tests that must act in a page: click a button, run a script on another origin, serve a page under
a name the test chooses.

``png_summary`` decodes the screenshot with zlib alone (no imaging library in the test venv) so a
test can tell a rendered page from a blank one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--mute-audio",
    "--hide-scrollbars", "--force-device-scale-factor=1", "--force-color-profile=srgb",
)


def find_chromium() -> str:
    """Path of a Chromium binary, or fail saying how to install one (never skip)."""
    for name in NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail("headless Chromium is needed to render the status page and was not found "
                f"(looked for {', '.join(NAMES)}); install it with: apt-get install -y chromium")


def _run(args: list[str], *, timeout: float) -> str:
    """Run Chromium with a throw-away profile; its stdout, or fail with its stderr."""
    with tempfile.TemporaryDirectory(prefix="offload-chromium-") as profile:
        command = [find_chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True,
                                   env=_environment(profile))
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"Chromium did not finish within {timeout:.0f} s (a page waiting for HTTP Basic "
                        "credentials never does: put them in the URL): "
                        f"{err.decode(errors='replace')[-2000:]}")
        finally:
            # The browser's helpers (zygote, renderers) share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if process.returncode != 0:
            pytest.fail(f"Chromium exited with {process.returncode}: {err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", "replace")


def dump_dom(url: str, *, budget_ms: int = 5000, timeout: float = 60.0, dark: bool = False,
             flags: tuple[str, ...] = ()) -> str:
    """The page's DOM after ``budget_ms`` of virtual time, serialised as HTML (``flags``: more
    command-line flags, such as ``--ignore-certificate-errors``)."""
    return _run([*_scheme(dark), *flags, f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                timeout=timeout)


def screenshot(url: str, path: Path, *, size: tuple[int, int] = (1280, 1600), budget_ms: int = 5000,
               timeout: float = 60.0, dark: bool = False) -> Path:
    """A PNG of the page after ``budget_ms`` of virtual time, written to ``path``."""
    path.unlink(missing_ok=True)
    _run([*_scheme(dark), f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
          f"--screenshot={path}", url], timeout=timeout)
    if not path.is_file():
        pytest.fail(f"Chromium exited without writing the screenshot {path}")
    return path


def _environment(profile: str) -> dict[str, str]:
    """The browser's environment: its temporary files go into the throw-away profile, which is
    removed with it (Chromium otherwise leaves an ``org.chromium.Chromium.*`` directory in
    /tmp per run)."""
    return {**os.environ, "TMPDIR": profile}


def _scheme(dark: bool) -> list[str]:
    """Flags for ``prefers-color-scheme: dark`` (light is Chromium's default)."""
    return ["--force-dark-mode"] if dark else []


class Browser:
    """One headless Chromium, one page, driven over the DevTools protocol (pipe transport).

    Every call waits at most ``timeout`` seconds; the browser's process group is killed on exit.
    ``resolve`` maps host names for Chromium alone (``--host-resolver-rules``); ``serve`` answers
    requests for a URL prefix with the test's own bytes (the Fetch domain), so a page can live at
    an origin no server listens on.
    """

    def __init__(self, *, timeout: float = 30.0, resolve: dict[str, str] | None = None,
                 size: tuple[int, int] = (1280, 1600), dark: bool = False,
                 flags: tuple[str, ...] = ()) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="offload-chromium-")
        rules = ",".join(f"MAP {name} {address}" for name, address in (resolve or {}).items())
        argv = [find_chromium(), *FLAGS, *_scheme(dark), f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe", f"--window-size={size[0]},{size[1]}",
                *([f"--host-resolver-rules={rules}"] if rules else []), *flags, "about:blank"]
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            self.pid = os.posix_spawn(argv[0], argv, _environment(self._profile.name), setsid=True,
                                      file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                (os.POSIX_SPAWN_DUP2, null, 2), (os.POSIX_SPAWN_DUP2, to_child, 3),
                (os.POSIX_SPAWN_DUP2, from_child, 4)])
        finally:
            for fd in (to_child, from_child, null):
                os.close(fd)
        self._buffer = b""
        self._ids = 0
        self.events: list[dict[str, Any]] = []
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._served: dict[str, tuple[str, bytes]] = {}
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                     flatten=True, browser=True)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    # ------------------------------------------------------------ the protocol

    def call(self, method: str, *, browser: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session unless ``browser``) and wait for its result."""
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if not browser and hasattr(self, "session"):
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        answer = self._next(lambda m: m.get("id") == message["id"], f"the answer to {method}")
        if "error" in answer:
            pytest.fail(f"Chromium refused {method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def wait_event(self, method: str, *, after: int = 0) -> dict[str, Any]:
        """The first event called ``method`` received after the first ``after`` events."""
        for event in self.events[after:]:
            if event["method"] == method:
                return event
        return self._next(lambda m: m.get("method") == method, method)

    def _next(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                    handler = self._handlers.get(message["method"])
                    if handler is not None:
                        handler(message)
                if wanted(message):
                    return dict(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                pytest.fail(f"Chromium did not send {what} within {self.timeout:.0f} s")
            data = os.read(self._in, 1 << 20)
            if not data:
                pytest.fail(f"Chromium exited while the test waited for {what}")
            self._buffer += data

    # ------------------------------------------------------------ pages

    def navigate(self, url: str) -> None:
        """Open ``url`` in the page and wait for its load event."""
        mark = len(self.events)
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            pytest.fail(f"Chromium could not open {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", after=mark)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, userGesture=True,
                           timeout=int(self.timeout * 1000))
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            pytest.fail(f"the page's script failed: {text}")
        return result["result"].get("value")

    def wait_until(self, condition: str, timeout: float = 10.0) -> Any:
        """Wait in the page until the JavaScript expression ``condition`` is truthy; its value."""
        return self.evaluate(f"""new Promise((resolve, reject) => {{
            const until = Date.now() + {int(timeout * 1000)};
            const look = () => {{
                let value;
                try {{ value = ({condition}); }} catch (error) {{ value = undefined; }}
                if (value) resolve(value);
                else if (Date.now() > until) reject(new Error("still false: " + {json.dumps(condition)}));
                else requestAnimationFrame(look);
            }};
            look();
        }})""")

    def serve(self, prefix: str, body: bytes, content_type: str = "text/html") -> None:
        """Answer requests whose URL starts with ``prefix`` with ``body`` (as a server at that
        origin would); other requests go to the network."""
        self._served[prefix] = (content_type, body)
        self._handlers["Fetch.requestPaused"] = self._fulfil
        self.call("Fetch.enable", patterns=[{"urlPattern": p + "*"} for p in self._served])

    def _fulfil(self, event: dict[str, Any]) -> None:
        params = event["params"]
        url = params["request"]["url"]
        for prefix, (content_type, body) in self._served.items():
            if url.startswith(prefix):
                self._send_quietly("Fetch.fulfillRequest", requestId=params["requestId"],
                                   responseCode=200, body=base64.b64encode(body).decode(),
                                   responseHeaders=[{"name": "Content-Type", "value": content_type},
                                                    {"name": "Cache-Control", "value": "no-store"}])
                return
        self._send_quietly("Fetch.continueRequest", requestId=params["requestId"])

    def _send_quietly(self, method: str, **params: Any) -> None:
        """A command sent from inside the reading loop: its answer is not waited for."""
        self._ids += 1
        os.write(self._out, json.dumps({"id": self._ids, "method": method, "params": params,
                                        "sessionId": self.session}).encode() + b"\0")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is now."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@dataclass(frozen=True)
class PngSummary:
    width: int
    height: int
    colours: int                        # distinct RGB values among the sampled pixels
    dominant: float                     # share of the sampled pixels taken by the most common colour
    background: tuple[int, int, int]    # that most common colour

    @property
    def dark(self) -> bool:
        """Whether the most common colour is dark (relative luminance under a quarter)."""
        red, green, blue = self.background
        return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 64


def png_summary(path: Path, *, sample_rows: int = 400) -> PngSummary:
    """Size and colour statistics of an 8-bit RGB or RGBA PNG (the first ``sample_rows`` rows)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        pytest.fail(f"{path} is not a PNG file")
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in (2, 6) or interlace:
        pytest.fail(f"{path}: unexpected PNG format (depth {depth}, colour type {colour_type})")
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(chunks))
    counts: Counter[bytes] = Counter()
    previous = bytearray(stride)
    for y in range(min(height, sample_rows)):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), previous, bpp)
        if y % 4 == 0:
            counts.update(bytes(row[x:x + 3]) for x in range(0, stride, bpp * 4))
        previous = row
    (background, most), = counts.most_common(1)
    red, green, blue = background[:3]
    return PngSummary(width, height, len(counts), most / sum(counts.values()), (red, green, blue))


def _unfilter(kind: int, row: bytearray, up: bytearray, bpp: int) -> bytearray:
    """Undo one scanline's PNG filter (RFC 2083 section 6)."""
    if kind == 0:
        return row
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        above = up[i]
        if kind == 1:
            predicted = left
        elif kind == 2:
            predicted = above
        elif kind == 3:
            predicted = (left + above) // 2
        else:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + above - corner
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - corner)
            predicted = left if pa <= pb and pa <= pc else above if pb <= pc else corner
        row[i] = (row[i] + predicted) & 0xFF
    return row
