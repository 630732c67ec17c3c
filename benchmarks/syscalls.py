"""System calls of an offload worker (and of HAProxy, in the same way) per 10,000 keep-alive
requests and per 1,000 full and resumed handshakes, counted with ``strace -c -f``.

Counts, not times: they do not depend on the machine's load (strace's own time column does,
and is left out). The kernel's work per unit follows from what is asked of it: every
``write``/``sendmsg`` is a TCP segment and a wake-up of the peer, every ``epoll_wait`` an event
loop turn.

How: the proxy runs (one worker) in front of a one-worker nginx; the client (``drive.py``)
warms up, then ``strace -c -f -p PID`` is attached to the worker, the counted units are run,
and strace is stopped (SIGINT), which prints its table. The numbers include what the units
cause only (plus a handful of calls while strace attaches and detaches). The same units run
again without strace give the minor page faults (``/proc/PID/stat``) and the voluntary and
involuntary context switches (``/proc/PID/task/*/status``): the kernel work that system call
counts do not show (the involuntary ones do depend on the machine's load).

    python benchmarks/syscalls.py [--python .venv-compiled/bin/python]
        [--targets http tcp haproxy-http] [--scenarios ka full resumed]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _rig import certificate, free_port, nginx_backend, start, stop, wait_listening, wait_ready
from callgrind_costs import haproxy_config
from drive import Handshakes, KeepAlive, client_context

UNITS = {"ka": 10_000, "full": 1_000, "resumed": 1_000}
CLIENTS = 8


def strace_counts(pid: int, body: Callable[[], None]) -> dict[str, int]:
    """System calls of ``pid`` (all its threads) while ``body()`` ran."""
    out = tempfile.NamedTemporaryFile(suffix=".strace", delete=False)  # noqa: SIM115
    out.close()
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out.name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # strace says nothing when attached; give it the time to be
    try:
        body()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    counts: dict[str, int] = {}
    for line in Path(out.name).read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    Path(out.name).unlink()
    return counts


def process_counters(pid: int) -> dict[str, int]:
    """Minor page faults and context switches of ``pid`` so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    counters = {"minor page faults": int(stat[stat.rindex(")") + 2:].split()[7]),
                "voluntary context switches": 0, "involuntary context switches": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counters["voluntary context switches"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                counters["involuntary context switches"] += int(line.split()[1])
    return counters


def counted(pid: int, body: Callable[[], None]) -> dict[str, int]:
    """What ``body()`` cost ``pid`` in page faults and context switches (no strace)."""
    before = process_counters(pid)
    body()
    after = process_counters(pid)
    return {key: after[key] - before[key] for key in before}


def run_target(target: str, work: Path, python: str, backend_port: int,
               scenarios: list[str]) -> dict[str, dict[str, int]]:
    port = free_port()
    log = work / f"{target}.log"
    if target == "haproxy-http":
        process = start(["haproxy", "-db", "-f", str(haproxy_config(work, port, backend_port))],
                        None, log)
    else:
        process = start([python, "-m", "offload", "run", "--mode", target, "--workers", "1",
                         "--cert", str(work / "front.pem"), "--listen", f"127.0.0.1:{port}",
                         "--backend", f"127.0.0.1:{backend_port}", "--log-level", "info",
                         *(["--access-log", "off"] if target == "http" else [])], None, log)
    results: dict[str, dict[str, int]] = {}
    try:
        if target == "haproxy-http":
            wait_listening(port)
            pid = process.pid
        else:
            wait_ready(log, process)
            pid = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
                      .split()[0])
        context = client_context(work / "ca.crt")
        for name in scenarios:
            if name == "ka":
                load = KeepAlive(port, context, CLIENTS)
                load.requests(1000)
                results[name] = strace_counts(pid, partial(load.requests, UNITS[name]))
                results[name] |= counted(pid, partial(load.requests, UNITS[name]))
                load.close()
            else:
                hs = Handshakes(port, context, CLIENTS, resume=name == "resumed")
                hs.run(100)
                results[name] = strace_counts(pid, partial(hs.run, UNITS[name]))
                results[name] |= counted(pid, partial(hs.run, UNITS[name]))
                if hs.not_resumed:
                    raise RuntimeError(f"{hs.not_resumed} handshakes were not resumed")
    finally:
        stop(process)
    return results


def report(results: dict[str, dict[str, dict[str, int]]], scenarios: list[str]) -> None:
    titles = {"ka": "per 10,000 keep-alive requests",
              "full": "per 1,000 full handshakes (+ 1 request each)",
              "resumed": "per 1,000 resumed handshakes (+ 1 request each)"}
    targets = list(results)
    for name in scenarios:
        calls = sorted({call for t in targets for call in results[t].get(name, {})
                        if " " not in call},
                       key=lambda c: -max(results[t].get(name, {}).get(c, 0) for t in targets))
        print(f"\n#### System calls {titles[name]} (strace -c -f, {CLIENTS} clients)\n")
        print("| system call | " + " | ".join(targets) + " |")
        print("|---|" + "---|" * len(targets))
        for call in calls:
            print(f"| {call} | " + " | ".join(
                f"{results[t].get(name, {}).get(call, 0):,}" for t in targets) + " |")
        print("| **total** | " + " | ".join(
            f"**{sum(v for k, v in results[t].get(name, {}).items() if ' ' not in k):,}**"
            for t in targets) + " |")
        for key in ("minor page faults", "voluntary context switches",
                    "involuntary context switches"):
            print(f"| ({key}, no strace) | " + " | ".join(
                f"{results[t].get(name, {}).get(key, 0):,}" for t in targets) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose offload is measured (the compiled install)")
    parser.add_argument("--targets", nargs="+", default=["http", "tcp", "haproxy-http"])
    parser.add_argument("--scenarios", nargs="+", default=["ka", "full", "resumed"])
    args = parser.parse_args()
    for tool in ("strace", "nginx", *(["haproxy"] if "haproxy-http" in args.targets else [])):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y strace nginx haproxy",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="offload-syscalls-"))
    certificate(work)
    backend_port = free_port()
    nginx = nginx_backend(work, backend_port)
    try:
        wait_listening(backend_port)
        results = {target: run_target(target, work, args.python, backend_port,
                                      args.scenarios) for target in args.targets}
        report(results, args.scenarios)
    finally:
        stop(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
