"""Memory of offload's processes before any connection and per idle TLS connection.

Load-independent (no timing): starts ``offload run`` (quick mode, ``--workers N``) in front of
a one-worker nginx, reads ``/proc/PID/smaps_rollup`` of the supervisor and of every worker
(RSS, PSS, USS = private clean + private dirty), then opens C idle TLS connections to
127.0.0.1 (each sends one keep-alive ``GET /small``, reads the answer and stays open, as in
peerbench's ``mem_idle``), waits until they are all established, and reads the figures again.
Per connection = (sum of the workers' figure with connections - before) / C.

    python benchmarks/memory.py [--python .venv-compiled/bin/python] [--workers 1 4]
                                [--modes http tcp] [--connections 2000]

Also ``--modules``: print the modules the supervisor had imported when it forked a worker
(what every worker inherits), grouped by top-level package.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

from _rig import certificate, free_port, nginx_backend, start, stop, wait_listening, wait_ready

BODY = b"x" * 100


def rollup(pid: int) -> dict[str, int]:
    """KiB figures of one process from smaps_rollup (RSS, PSS, USS)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return {"rss": values["Rss"], "pss": values["Pss"],
            "uss": values["Private_Clean"] + values["Private_Dirty"]}


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the workers of a supervisor)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def open_idle(port: int, count: int, ca: Path) -> list[asyncio.StreamWriter]:
    """``count`` TLS connections, each after one complete keep-alive request."""
    context = ssl.create_default_context(cafile=str(ca))
    request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost")
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if await reader.readexactly(length) != BODY:
                raise RuntimeError("wrong body")
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return writers


def measure(python: str, work: Path, backend_port: int, mode: str, *, workers: int,
            connections: int) -> dict[str, float]:
    port = free_port()
    log = work / f"offload-{mode}-{workers}.log"
    process = start([python, "-m", "offload", "run", "--mode", mode, "--workers", str(workers),
                     "--cert", str(work / "front.pem"), "--listen", f"127.0.0.1:{port}",
                     "--backend", f"127.0.0.1:{backend_port}", "--log-level", "info",
                     *(["--access-log", "off"] if mode == "http" else [])], None, log)
    try:
        wait_ready(log, process)
        wait_listening(port)
        time.sleep(1)  # let start-up garbage settle
        pids = children(process.pid)
        if len(pids) != workers:
            raise RuntimeError(f"expected {workers} workers, found {pids}")
        supervisor = rollup(process.pid)
        before = [rollup(pid) for pid in pids]
        result: dict[str, float] = {f"sup_{k}": v / 1024 for k, v in supervisor.items()}
        for key in ("rss", "pss", "uss"):
            result[f"worker_{key}"] = sum(b[key] for b in before) / len(before) / 1024
        if connections:
            loop = asyncio.new_event_loop()
            try:
                writers = loop.run_until_complete(open_idle(port, connections,
                                                            work / "ca.crt"))
                time.sleep(1)
                after = [rollup(pid) for pid in pids]
                for key in ("rss", "uss"):
                    grown = sum(a[key] for a in after) - sum(b[key] for b in before)
                    result[f"conn_{key}_kib"] = grown / connections
                for writer in writers:
                    writer.close()
            finally:
                loop.close()
        return result
    finally:
        stop(process)


def modules(python: str, work: Path, backend_port: int) -> None:
    """What a worker inherits: the supervisor's modules at fork, by top-level package."""
    probe = work / "modules_probe.py"
    out = work / "modules.txt"
    probe.write_text(f"""
import os, sys
import offload.cli
real_fork = os.fork
def fork():
    pid = real_fork()
    if pid == 0:
        with open({str(out)!r}, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
    return pid
os.fork = fork
offload.cli.main(["run", "--workers", "1", "--cert", {str(work / "front.pem")!r},
                  "--listen", "127.0.0.1:{free_port()}", "--backend", "127.0.0.1:{backend_port}"])
""")
    log = work / "modules.log"
    process = start([python, str(probe)], None, log)
    try:
        wait_ready(log, process)
    finally:
        stop(process)
    names = out.read_text().split()
    tops: dict[str, int] = {}
    for name in names:
        top = name.split(".")[0]
        tops[top] = tops.get(top, 0) + 1
    print(f"{len(names)} modules at fork")
    print(", ".join(f"{top} {n}" for top, n in sorted(tops.items(), key=lambda t: -t[1])[:30]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose offload is measured (the compiled install)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["http", "tcp"])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--modules", action="store_true")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        print("nginx is missing: apt-get install -y nginx", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="offload-memory-"))
    certificate(work)
    backend_port = free_port()
    nginx = nginx_backend(work, backend_port, BODY.decode())
    try:
        wait_listening(backend_port)
        if args.modules:
            modules(args.python, work, backend_port)
            return 0
        print("| mode | workers | supervisor RSS / PSS / USS MiB | per worker RSS / PSS / USS MiB "
              "| per idle conn RSS / USS KiB |")
        print("|---|---|---|---|---|")
        for mode in args.modes:
            for workers in args.workers:
                r = measure(args.python, work, backend_port, mode, workers=workers,
                            connections=args.connections if workers == 1 else 0)
                conn = (f"{r['conn_rss_kib']:.1f} / {r['conn_uss_kib']:.1f}"
                        if "conn_rss_kib" in r else "-")
                print(f"| {mode} | {workers} | {r['sup_rss']:.1f} / {r['sup_pss']:.1f} / "
                      f"{r['sup_uss']:.1f} | {r['worker_rss']:.1f} / {r['worker_pss']:.1f} / "
                      f"{r['worker_uss']:.1f} | {conn} |", flush=True)
    finally:
        stop(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
