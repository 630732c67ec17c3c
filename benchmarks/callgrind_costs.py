"""Instructions per keep-alive request, per full and per resumed TLS handshake, counted by
callgrind in a real offload worker, split by where they run (OpenSSL, the interpreter, the
event loop, offload's compiled modules by module, ...).

Instruction counts do not depend on the machine's load, so this runs fine on a busy machine
(it is slow: the worker runs about 50 times slower under valgrind). What it cannot see is the
kernel (system calls, loopback TCP): see ``syscalls.py`` for those.

How: ``offload run --workers 1`` (quick mode, HTTP or TCP mode) in front of a one-worker nginx,
the whole offload process tree under ``valgrind --tool=callgrind`` (a forked worker stays under
valgrind). For each scenario the client (``drive.py``, outside valgrind) first warms up, then
does a small run of B units and a large run of M units, each between ``callgrind_control -z``
(zero the counters) and ``callgrind_control -d`` (dump them); per unit = (M run - B run) /
(M - B), which cancels what each run costs besides its units (the zero and dump themselves,
the timers that fire meanwhile).

    python benchmarks/callgrind_costs.py [--python .venv-compiled/bin/python]
        [--modes http tcp] [--scenarios ka full resumed h2] [--keep DIR]
    python benchmarks/callgrind_costs.py --analyze SMALL_DUMP LARGE_DUMP UNITS

Prints one table per mode and scenario (instructions per unit by component, and offload's
compiled modules by module) and the total; ``--keep DIR`` keeps the callgrind files there
(open them with ``callgrind_annotate`` or kcachegrind).

Each table has two columns. "Where they ran": the object file the instructions belong to.
"On whose behalf": the interpreter, libc and mypyc's helpers are charged to the function that
called them (see :func:`charged`), so object allocation, dict look-ups and malloc done for
offload's compiled code count as that module's, pure-Python code counts to the compiled (or
uvloop, or ``_ssl``) function that called it, and OpenSSL's own malloc stays OpenSSL's.
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from _rig import certificate, free_port, nginx_backend, start, stop, wait_listening, wait_ready
from drive import Handshakes, KeepAlive, client_context

UNITS = {"ka": (200, 2200), "full": (20, 220), "resumed": (20, 220), "h2": (200, 2200)}
"""(B, M): the small and the large run of each scenario."""
WARMUP = {"ka": 400, "full": 40, "resumed": 40, "h2": 400}
CLIENTS = 8


def component(obj: str, function: str) -> str:
    """Which part of the stack an instruction belongs to, from its object file and function."""
    name = Path(obj).name
    if not obj:
        return "runtime, not placed"
    if name.startswith(("libssl", "libcrypto")):
        return "OpenSSL (libssl, libcrypto)"
    if name.startswith("_ssl."):
        return "Python ssl module (_ssl)"
    if name.startswith("loop.") and "uvloop" in obj:
        return "event loop (uvloop, libuv)"
    if "httptools" in obj:
        return "httptools (llhttp)"
    if "__mypyc" in name or ("/offload/" in obj and name.endswith(".so")):
        match = re.match(r"CPy(?:Def|Py|_)?_?([A-Za-z0-9_]+?)___", function)
        return f"offload compiled: {match.group(1) if match else 'mypyc runtime'}"
    if name.startswith(("python3", "libpython")):
        return "CPython (interpreter, objects, pure-Python modules)"
    if name.startswith("libc.") or name.startswith("libc-"):
        return "libc (malloc, memcpy, syscall wrappers)"
    if name.startswith("_nghttp2") or name.startswith("libnghttp2"):
        return "nghttp2"
    return f"other: {name}"


Node = tuple[str, str]
"""(object file, function) as callgrind names them."""


def parse(path: Path) -> tuple[Counter[Node], Counter[tuple[Node, Node]]]:
    """Self instructions per function, and the number of calls per call edge, of one dump.

    Read from the file itself: after a ``callgrind_control -z`` the functions that were on
    the stack carry call costs that ``callgrind_annotate`` adds up wrongly. A cost line right
    after a ``calls=`` line is the inclusive cost of that call; every other cost line is the
    current function's own; the ``calls=`` line says how many calls it was."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
    costs: Counter[Node] = Counter()
    edges: Counter[tuple[Node, Node]] = Counter()
    obj = function = callee_obj = callee = ""
    after_call = False

    def name(kind: str, value: str) -> str:
        match = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if match is None:
            return value
        if match.group(2) is not None:
            names[kind][match.group(1)] = match.group(2)
        return names[kind].get(match.group(1), "?")

    with path.open() as lines:
        for line in lines:
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if after_call:
                    after_call = False
                    callee_obj = obj  # a call without its own cob= is into the same object
                else:
                    costs[obj, function] += int(line.split()[-1])
            elif line.startswith("ob="):
                obj = callee_obj = name("ob", line[3:].rstrip("\n"))
            elif line.startswith("fn="):
                function = name("fn", line[3:].rstrip("\n"))
                callee_obj = obj
            elif line.startswith("cob="):
                callee_obj = name("ob", line[4:].rstrip("\n"))
            elif line.startswith("cfn="):
                callee = name("fn", line[4:].rstrip("\n"))
            elif line.startswith(("cfi=", "cfl=")):
                name("fl", line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                after_call = True
                edges[(obj, function), (callee_obj, callee)] += int(line[6:].split()[0])
    return costs, edges


def is_runtime(node: Node) -> bool:
    """The interpreter, libc and mypyc's own helpers: work done on someone else's behalf."""
    obj, function = node
    name = Path(obj).name
    if name.startswith(("python3", "libpython", "libc.", "libc-", "ld-linux", "libm.", "???")):
        return True
    return "__mypyc" in name and re.match(r"CPy(Def|Py)_", function) is None


def charged(costs: Counter[Node], edges: Counter[tuple[Node, Node]]) -> Counter[Node]:
    """Every instruction charged to a caller that is not the runtime (:func:`is_runtime`):
    a runtime function's own instructions are split among its callers in proportion to how
    often each called it, and passed up again while the caller is the runtime too.

    Callgrind keeps call edges, not whole stacks, so the split is an estimate (exact for a
    runtime function called from one place, e.g. a dict look-up inside one compiled method;
    it assumes every call of a runtime function costs alike); the sum is exact: every
    instruction is charged once. What is still unplaced after many
    rounds (recursion among runtime functions) is charged to ``("", "runtime, unplaced")``."""
    callers: dict[Node, list[tuple[Node, int]]] = {}
    for (caller, callee), cost in edges.items():
        if caller != callee and cost > 0:
            callers.setdefault(callee, []).append((caller, cost))
    result: Counter[Node] = Counter()
    pending: dict[Node, float] = {}
    for node, cost in costs.items():
        if is_runtime(node):
            pending[node] = pending.get(node, 0.0) + cost
        else:
            result[node] += cost
    for _ in range(200):
        if not pending:
            break
        passed: dict[Node, float] = {}
        for node, amount in pending.items():
            incoming = callers.get(node)
            if not incoming:
                result["", "runtime, unplaced"] += round(amount)
                continue
            total = sum(cost for _, cost in incoming)
            for caller, cost in incoming:
                share = amount * cost / total
                if is_runtime(caller):
                    passed[caller] = passed.get(caller, 0.0) + share
                else:
                    result[caller] += round(share)
        pending = {node: amount for node, amount in passed.items() if amount >= 0.5}
    for amount in pending.values():
        result["", "runtime, unplaced"] += round(amount)
    return result


def annotate(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Instructions of one dump by component: where they ran, and on whose behalf
    (:func:`charged`)."""
    costs, edges = parse(path)
    ran: Counter[str] = Counter()
    for (obj, function), count in costs.items():
        ran[component(obj, function)] += count
    behalf: Counter[str] = Counter()
    for (obj, function), count in charged(costs, edges).items():
        behalf[component(obj, function)] += count
    return ran, behalf


class Controlled:
    """The offload process tree under callgrind, and the worker's counters."""

    def __init__(self, work: Path, worker: int, poke: KeepAlive) -> None:
        self.work, self.worker, self.poke = work, worker, poke

    def _command(self, option: str) -> None:
        """Run ``callgrind_control option`` on the worker; keep it busy until it answered
        (valgrind takes commands while the worker runs)."""
        control = subprocess.Popen(["callgrind_control", option, str(self.worker)],
                                   cwd=self.work, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while control.poll() is None:
            if time.monotonic() > deadline:
                control.kill()
                raise RuntimeError(f"callgrind_control {option} did not answer")
            self.poke.requests(1)
        if control.returncode != 0:
            raise RuntimeError(f"callgrind_control {option} failed")

    def counted(self, body: Callable[[], None]) -> Path:
        """The callgrind dump of the worker's work while ``body()`` ran."""
        before = set(self.work.glob(f"callgrind.{self.worker}*"))
        self._command("-z")
        body()
        self._command("-d")
        dumps = sorted(set(self.work.glob(f"callgrind.{self.worker}*")) - before,
                       key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise RuntimeError("no callgrind dump")
        return dumps[-1]


def scenario(controlled: Controlled, name: str, port: int, ca: Path) -> tuple[Path, Path, int]:
    """The dumps of a small and a large run of ``name``, and how many units more the large
    one did."""
    context = client_context(ca)
    small, large = UNITS[name]
    if name == "ka":
        load = KeepAlive(port, context, CLIENTS)
        load.requests(WARMUP[name])
        b = controlled.counted(lambda: load.requests(small))
        m = controlled.counted(lambda: load.requests(large))
        load.close()
    elif name == "h2":  # h2load's connections and handshakes are the same in both runs
        def h2(count: int) -> None:
            done = subprocess.run(
                ["h2load", "-n", str(count), "-c", "4", "-m", "10",
                 f"https://127.0.0.1:{port}/small"],
                capture_output=True, text=True, timeout=900, check=False)
            if f"{count} succeeded" not in done.stdout:
                raise RuntimeError(f"h2load did not complete {count} requests: {done.stdout}")

        h2(WARMUP[name])
        b = controlled.counted(lambda: h2(small))
        m = controlled.counted(lambda: h2(large))
    else:
        hs = Handshakes(port, context, CLIENTS, resume=name == "resumed")
        hs.run(WARMUP[name])
        b = controlled.counted(lambda: hs.run(small))
        m = controlled.counted(lambda: hs.run(large))
        if hs.not_resumed:
            raise RuntimeError(f"{hs.not_resumed} handshakes were not resumed")
    return b, m, large - small


def per_unit(small: Path, large: Path, units: int) -> tuple[Counter[str], Counter[str],
                                                             Counter[Node]]:
    """Instructions per unit by component (where they ran, on whose behalf) and by function
    (on whose behalf), from the small and the large run."""
    b_costs, b_edges = parse(small)
    m_costs, m_edges = parse(large)
    b_charged, m_charged = charged(b_costs, b_edges), charged(m_costs, m_edges)
    ran: Counter[str] = Counter()
    behalf: Counter[str] = Counter()
    functions: Counter[Node] = Counter()
    for node in set(b_costs) | set(m_costs):
        ran[component(*node)] += m_costs.get(node, 0) - b_costs.get(node, 0)
    for node in set(b_charged) | set(m_charged):
        value = m_charged.get(node, 0) - b_charged.get(node, 0)
        behalf[component(*node)] += value
        functions[node] += value
    for table in (ran, behalf, functions):
        for key in list(table):
            table[key] = round(table[key] / units)
    return ran, behalf, functions


TITLES = {"ka": "keep-alive request", "full": "full TLS 1.3 handshake + 1 request",
          "resumed": "resumed TLS 1.3 handshake + 1 request",
          "h2": "HTTP/2 request (h2load: 4 connections, 10 streams each)"}


def report(title: str, ran: Counter[str], behalf: Counter[str], functions: Counter[Node],
           top: int = 15) -> None:
    total = sum(ran.values())
    print(f"\n#### {title}: {total:,} instructions (callgrind, user space)\n")
    print("| component | instructions where they ran | on whose behalf |")
    print("|---|---|---|")
    keys = sorted(set(ran) | set(behalf), key=lambda k: (k.startswith("offload compiled: "),
                                                          -max(ran[k], behalf[k])))
    for key in keys:
        if max(abs(ran[key]), abs(behalf[key])) < total * 0.005:
            continue
        label = (f"&nbsp;&nbsp;{key.removeprefix('offload compiled: ')}"
                 if key.startswith("offload compiled: ") else key)
        print(f"| {label} | {ran[key]:,} ({100 * ran[key] / total:.1f} %) | "
              f"{behalf[key]:,} ({100 * behalf[key] / total:.1f} %) |")
    compiled_ran = sum(v for k, v in ran.items() if k.startswith("offload compiled: "))
    compiled_behalf = sum(v for k, v in behalf.items() if k.startswith("offload compiled: "))
    print(f"| offload compiled (mypyc), all modules | {compiled_ran:,} | {compiled_behalf:,} |")
    print(f"\nTop {top} functions, on whose behalf:\n")
    for (obj, function), value in functions.most_common(top):
        print(f"    {value:9,}  {function}  [{Path(obj).name}]")


def haproxy_config(work: Path, port: int, backend_port: int) -> Path:
    """HAProxy in mode http, one thread, as peerbench runs it."""
    path = work / "haproxy.cfg"
    path.write_text(f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend web
    bind 127.0.0.1:{port} ssl crt {work}/front.pem alpn http/1.1
    default_backend app
backend app
    server s1 127.0.0.1:{backend_port}
""")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose offload is measured (the compiled install)")
    parser.add_argument("--modes", nargs="+", default=["http", "tcp"],
                        help="offload's modes (http, tcp, and http-tls or tcp-tls: TLS to the "
                             "backend too), and haproxy-http: HAProxy (mode http, one "
                             "thread) counted the same way, as the reference")
    parser.add_argument("--scenarios", nargs="+", default=["ka", "full", "resumed"])
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this folder")
    parser.add_argument("--analyze", nargs=3, metavar=("SMALL", "LARGE", "UNITS"),
                        help="only analyse two dumps kept earlier (UNITS: how many more the "
                             "large run did)")
    args = parser.parse_args()
    if args.analyze:
        small, large, units = args.analyze
        report(f"{large} - {small}", *per_unit(Path(small), Path(large), int(units)))
        return 0
    for tool in ("valgrind", "callgrind_control", "nginx",
                 *(["haproxy"] if "haproxy-http" in args.modes else [])):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y valgrind nginx haproxy",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="offload-callgrind-"))
    certificate(work)
    backend_port, tls_port = free_port(), free_port()
    nginx = nginx_backend(work, backend_port, tls_port=tls_port)
    try:
        wait_listening(backend_port)
        for mode in args.modes:
            port = free_port()
            log = work / f"{mode}.log"
            valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                        f"--callgrind-out-file={work}/callgrind.%p"]
            if mode == "haproxy-http":
                offload = start([*valgrind, "haproxy", "-db", "-f",
                                 str(haproxy_config(work, port, backend_port))], None, log)
            else:
                tls = mode.endswith("-tls")  # TLS to the backend too
                offload = start([*valgrind, args.python, "-m", "offload", "run",
                                 "--mode", mode.removesuffix("-tls"),
                                 "--workers", "1", "--cert", str(work / "front.pem"),
                                 "--listen", f"127.0.0.1:{port}",
                                 "--backend", f"127.0.0.1:{tls_port if tls else backend_port}",
                                 *(["--backend-tls", "--backend-ca", str(work / "ca.crt")]
                                   if tls else []),
                                 "--log-level", "info",
                                 *(["--access-log", "off"] if mode.startswith("http") else [])],
                                None, log)
            try:
                if mode == "haproxy-http":
                    wait_listening(port, timeout=300)
                    worker = offload.pid
                else:
                    wait_ready(log, offload, timeout=900)
                    workers = Path(f"/proc/{offload.pid}/task/{offload.pid}/children")
                    worker = int(workers.read_text().split()[0])
                poke = KeepAlive(port, client_context(work / "ca.crt"), 1)
                controlled = Controlled(work, worker, poke)
                for name in args.scenarios:
                    b, m, units = scenario(controlled, name, port, work / "ca.crt")
                    report(f"{mode} mode, per {TITLES[name]}", *per_unit(b, m, units))
                poke.close()
            finally:
                stop(offload, signal.SIGTERM, timeout=120)
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for dump in work.glob("callgrind.*"):
                    shutil.move(str(dump), args.keep / f"{mode}-{dump.name}")
    finally:
        stop(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
