"""Sampling profiles of one offload worker under load: ``perf record -g`` (kernel and user
space, by shared object and symbol) or ``py-spy record --native`` (Python and native frames).

Samples give proportions of the worker's CPU time, not costs: they are meaningful on a busy
machine only as shares (and even those shift somewhat under contention). For costs that do
not depend on the load, use ``callgrind_costs.py`` (instructions) and ``syscalls.py``.

The load is ``drive.py`` (keep-alive requests, full or resumed handshakes) from 8 threads for
``--seconds``; the worker runs pinned to ``--cpu`` when given. Alternatively profile a
peerbench run: ``python3 peerbench.py --keep-workdir --targets offload ...``, find the worker
(``pgrep -f 'offload run'``; the worker is the supervisor's child) and run the same ``perf
record -g -p PID`` or ``py-spy record -p PID`` by hand while it measures.

    python benchmarks/profile_worker.py --tool perf|py-spy [--scenario ka|full|resumed]
        [--mode http|tcp] [--seconds 10] [--python .venv-compiled/bin/python]
        [--py-spy PATH] [--out DIR]

perf on a virtual machine often has no hardware counters (``perf stat -e instructions``
says "not supported"); the script then samples ``cpu-clock`` (a timer), which still gives
kernel and user stacks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _rig import certificate, free_port, nginx_backend, start, stop, wait_ready
from drive import Handshakes, KeepAlive, client_context


def has_hardware_counters() -> bool:
    result = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0 and "not supported" not in result.stderr


def load(port: int, ca: Path, scenario: str, stop_at: float) -> None:
    """Keep the worker busy until ``stop_at``."""
    context = client_context(ca)
    if scenario == "ka":
        clients = KeepAlive(port, context, 8)
        while time.monotonic() < stop_at:
            clients.requests(400)
        clients.close()
    else:
        handshakes = Handshakes(port, context, 8, resume=scenario == "resumed")
        while time.monotonic() < stop_at:
            handshakes.run(40)


def perf_profile(pid: int, seconds: float, out: Path) -> str:
    event = "cycles" if has_hardware_counters() else "cpu-clock"
    data = out / "perf.data"
    subprocess.run(["perf", "record", "-e", event, "-g", "-p", str(pid), "-o", str(data),
                    "--", "sleep", str(seconds)], capture_output=True, check=True)
    by_dso = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                             "--sort", "dso", "-g", "none", "--percent-limit", "0.5"],
                            capture_output=True, text=True, check=True).stdout
    by_symbol = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                                "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7"],
                               capture_output=True, text=True, check=True).stdout
    lines = [line for line in (by_dso + by_symbol).splitlines()
             if line.strip() and not line.startswith("#")]
    return (f"perf event: {event} (sampled; shares of the worker's CPU time)\n"
            f"data: {data} (perf report -i {data})\n" + "\n".join(lines))


def pyspy_profile(pid: int, seconds: float, out: Path, py_spy: str) -> str:
    raw = out / "py-spy.txt"
    subprocess.run([py_spy, "record", "--native", "--format", "raw", "--rate", "250",
                    "--duration", str(int(seconds)), "--pid", str(pid), "--output", str(raw)],
                   capture_output=True, check=True)  # native stacks need the pauses
    owners: Counter[str] = Counter()
    idle = busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "run_worker" not in stack:
            continue  # other threads (the log writer)
        frames = stack.split(";")
        named = [frame for frame in frames if "(libc.so" not in frame]
        if named and named[-1].startswith(("uv__io_poll", "uv__epoll")):
            idle += int(count)
            continue
        busy += int(count)
        owners[_owner(named)] += int(count)
    rows = [f"{100 * n / max(busy, 1):5.1f} %  {name}" for name, n in owners.most_common(30)]
    return (f"py-spy --native: {busy} busy samples of the event loop thread ({idle} idle "
            f"left out), by the innermost frame that is offload's, the event loop's, TLS or "
            f"HTTP parsing (the interpreter and libc count to their caller)\n"
            f"raw stacks: {raw} (collapsed format, for flamegraph.pl or speedscope)\n"
            + "\n".join(rows))


def _owner(frames: list[str]) -> str:
    """Who the innermost frames work for: ``function (file:line)`` as py-spy writes them."""
    for frame in reversed(frames):
        name, _, place = frame.partition(" (")
        place = place.rstrip(")").rsplit(":", 1)[0]
        mypyc = re.match(r"CPy(?:Def|Py)_([A-Za-z0-9_]+?)___", name)
        if mypyc is not None:
            return f"offload compiled: {mypyc.group(1)}"
        if "offload/" in place:
            return "offload: " + place.split("offload/", 1)[1]
        for marker, label in (("libssl", "OpenSSL"), ("libcrypto", "OpenSSL"),
                              ("_ssl", "Python ssl module"), ("ssl.py", "Python ssl module"),
                              ("loop.c", "event loop (uvloop)"), ("uvloop", "event loop (uvloop)"),
                              ("httptools", "httptools"), ("parser.c", "httptools")):
            if marker in place or marker in name:
                return label
    return "other: " + (frames[-1] if frames else "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=["perf", "py-spy"], required=True)
    parser.add_argument("--scenario", choices=["ka", "full", "resumed"], default="ka")
    parser.add_argument("--mode", choices=["http", "tcp"], default="http")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cpu", help="pin the worker to this CPU (taskset)")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose offload is profiled (the compiled install)")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy command")
    parser.add_argument("--out", type=Path, help="keep perf.data / the stacks here")
    args = parser.parse_args()
    tool = args.py_spy if args.tool == "py-spy" else "perf"
    if shutil.which(tool) is None or shutil.which("nginx") is None:
        print(f"{tool} or nginx is missing: apt-get install -y linux-perf nginx; "
              "pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="offload-profile-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    certificate(work)
    backend_port, port = free_port(), free_port()
    nginx = nginx_backend(work, backend_port)
    log = work / "offload.log"
    offload = start([args.python, "-m", "offload", "run", "--mode", args.mode, "--workers", "1",
                     "--cert", str(work / "front.pem"), "--listen", f"127.0.0.1:{port}",
                     "--backend", f"127.0.0.1:{backend_port}", "--log-level", "info",
                     *(["--access-log", "off"] if args.mode == "http" else [])], args.cpu, log)
    try:
        wait_ready(log, offload)
        supervisor = offload.pid  # taskset executes the command in its own process
        worker = int(Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
                     .split()[0])
        stop_at = time.monotonic() + args.seconds + 2
        driver = threading.Thread(target=load, args=(port, work / "ca.crt", args.scenario,
                                                     stop_at))
        driver.start()
        time.sleep(1)
        if args.tool == "perf":
            print(perf_profile(worker, args.seconds, out))
        else:
            print(pyspy_profile(worker, args.seconds, out, tool))
        driver.join()
    finally:
        stop(offload, signal.SIGTERM)
        stop(nginx)
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
