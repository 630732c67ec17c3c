"""Headless Chromium for tests: the rendered DOM of a page and a PNG screenshot of it.

Chromium runs with a fresh profile in a temporary directory and ``--virtual-time-budget``, so the
page's timers (offload's status page polls every 2 s) run several times in well under a second of
real time; the whole run is bounded by a timeout and its process group is killed on expiry.

HTTP Basic credentials can be given in the URL (``http://user:pass@127.0.0.1:port/``): Chromium
answers the server's 401 challenge for the page with them, keeps them in its auth cache and sends
them with the page's same-origin ``fetch()`` calls too (checked with Chromium 156). The page's
own ``location`` no longer carries them. Without them, a ``fetch()`` answered 401 with a Basic
challenge waits for a login dialog that headless mode never shows: the run hits its timeout.

``png_summary`` decodes the screenshot with zlib alone (no imaging library in the test venv) so a
test can tell a rendered page from a blank one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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
                                   stderr=subprocess.PIPE, start_new_session=True)
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


def dump_dom(url: str, *, budget_ms: int = 5000, timeout: float = 60.0, dark: bool = False) -> str:
    """The page's DOM after ``budget_ms`` of virtual time, serialised as HTML."""
    return _run([*_scheme(dark), f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout=timeout)


def screenshot(url: str, path: Path, *, size: tuple[int, int] = (1280, 1600), budget_ms: int = 5000,
               timeout: float = 60.0, dark: bool = False) -> Path:
    """A PNG of the page after ``budget_ms`` of virtual time, written to ``path``."""
    path.unlink(missing_ok=True)
    _run([*_scheme(dark), f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
          f"--screenshot={path}", url], timeout=timeout)
    if not path.is_file():
        pytest.fail(f"Chromium exited without writing the screenshot {path}")
    return path


def _scheme(dark: bool) -> list[str]:
    """Flags for ``prefers-color-scheme: dark`` (light is Chromium's default)."""
    return ["--force-dark-mode"] if dark else []


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
