"""What TLS to the backend costs: keep-alive requests through offload to a plain backend and to
a TLS backend, in one run, with HAProxy (``ssl verify required``) to the same backends as the
reference.

peerbench has no TLS backend, so this script follows its method on a smaller scale: one
nginx (one worker) serves ``/small`` (100 bytes) both in plain HTTP and over TLS (its
certificate from a CA made here); the proxies run with one worker pinned to CPU 0; h2load
(``--h1 -c 32``, one request in flight per connection) and nginx share CPU 1. Each round runs
every target once, the order rotated per round; the figure is the proxy's own CPU time per
request (utime+stime of its process group from /proc, over the requests h2load completed),
with how busy CPU 0 was outside the proxy ("CPU0 other%"). Everything on 127.0.0.1, bounded in
time, and stopped on every exit path.

    python benchmarks/backend_tls.py [--rounds 3] [--duration 3] [--python .venv-compiled/bin/python]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from offload.demo.pki import Authority, write_private

PEER_CPU, CLIENT_CPU = "0", "1"
BODY = "x" * 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every process in the group (its threads included)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu0_busy_seconds() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]
            return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError("no cpu0 in /proc/stat")


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None


def start(command: list[str], cpu: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", cpu, *command], stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def write_configs(work: Path, ports: dict[str, int], python: str) -> dict[str, list[str]]:
    authority = Authority("backend-tls bench CA")
    (work / "ca.crt").write_bytes(authority.pem())
    backend = authority.issue(["backend.test", "127.0.0.1"]).bundle()
    write_private(work / "backend.pem", backend)
    write_private(work / "front.pem", authority.issue(["localhost", "127.0.0.1"]).bundle())
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    ssl_session_cache shared:bench:1m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{ports['plain']};
        listen 127.0.0.1:{ports['tls']} ssl;
        ssl_certificate {work}/backend.pem;
        ssl_certificate_key {work}/backend.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /small {{ return 200 "{BODY}"; }}
    }}
}}
""")
    (work / "offload.toml").write_text(f"""
[global]
workers = 1
log_level = "warning"

[defaults]
access_log = "off"

[[frontends]]
name = "plain"
bind = "127.0.0.1:{ports['offload-plain']}"
backend = "plain"
certificates = "{work}/front.pem"

[[frontends]]
name = "tls"
bind = "127.0.0.1:{ports['offload-tls']}"
backend = "tls"
certificates = "{work}/front.pem"

[[backends]]
name = "plain"
servers = ["127.0.0.1:{ports['plain']}"]

[[backends]]
name = "tls"
servers = ["127.0.0.1:{ports['tls']}"]
tls = true
ca = "{work}/ca.crt"
""")
    (work / "haproxy.cfg").write_text(f"""
global
    nbthread 1
    maxconn 4096
    ssl-server-verify required
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse safe
frontend plain
    bind 127.0.0.1:{ports['haproxy-plain']} ssl crt {work}/front.pem alpn http/1.1
    default_backend plain
frontend tls
    bind 127.0.0.1:{ports['haproxy-tls']} ssl crt {work}/front.pem alpn http/1.1
    default_backend tls
backend plain
    server s1 127.0.0.1:{ports['plain']}
backend tls
    server s1 127.0.0.1:{ports['tls']} ssl verify required ca-file {work}/ca.crt sni req.hdr(host),field(1,:) alpn http/1.1
""")
    return {
        "nginx": ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)],
        "offload": [python, "-m", "offload", "run", "-c", str(work / "offload.toml")],
        "haproxy": ["haproxy", "-db", "-f", str(work / "haproxy.cfg")],
    }


def check(port: int) -> None:
    """One request through the target must give the exact body (the proxy really works)."""
    result = subprocess.run(
        ["curl", "-s", "--max-time", "10", "--cacert", "/dev/null", "-k",
         "-H", "Host: backend.test", f"https://127.0.0.1:{port}/small"],
        capture_output=True, text=True, check=False)
    if result.stdout != BODY:
        raise RuntimeError(f"port {port} answered {result.stdout[:200]!r} {result.stderr!r}")


def run_h2load(port: int, duration: float) -> tuple[int, int]:
    """(requests that succeeded, that failed)."""
    result = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "h2load", "--h1", "-c", "32", "-D",
         f"{int(duration * 1000)}ms",
         "-H", ":authority: backend.test", f"https://127.0.0.1:{port}/small"],
        capture_output=True, text=True, timeout=duration + 30, check=False)
    out = result.stdout + result.stderr
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                      r"(\d+) failed", out)
    if match is None:
        raise RuntimeError(f"h2load said:\n{out}")
    return int(match.group(1)), int(match.group(2))


def measure(target: Target, duration: float) -> dict[str, float]:
    assert target.process is not None
    cpu_before, busy_before = group_cpu_seconds(target.process.pid), cpu0_busy_seconds()
    wall = time.monotonic()
    succeeded, failed = run_h2load(target.port, duration)
    wall = time.monotonic() - wall
    cpu = group_cpu_seconds(target.process.pid) - cpu_before
    busy = cpu0_busy_seconds() - busy_before
    return {"rps": succeeded / wall, "us_per_req": cpu / max(succeeded, 1) * 1e6,
            "peer_cpu_pct": 100 * cpu / wall, "cpu0_other_pct": 100 * max(busy - cpu, 0) / wall,
            "failed": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose offload is measured (the compiled install)")
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "h2load", "curl", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y nginx haproxy nghttp2-client curl "
                  "util-linux", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="backend-tls-bench-"))
    names = ["plain", "tls", "offload-plain", "offload-tls", "haproxy-plain", "haproxy-tls"]
    ports = {name: free_port() for name in names}
    commands = write_configs(work, ports, args.python)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start(commands["nginx"], CLIENT_CPU, work / "nginx.log"))
        offload = start(commands["offload"], PEER_CPU, work / "offload.log")
        haproxy = start(commands["haproxy"], PEER_CPU, work / "haproxy.log")
        processes += [offload, haproxy]
        targets = [Target("offload, plain backend", ports["offload-plain"], offload),
                   Target("offload, TLS backend", ports["offload-tls"], offload),
                   Target("haproxy, plain backend", ports["haproxy-plain"], haproxy),
                   Target("haproxy, ssl verify required", ports["haproxy-tls"], haproxy)]
        for name in ("plain", "tls", "offload-plain", "offload-tls", "haproxy-plain",
                     "haproxy-tls"):
            wait_listening(ports[name])
        for target in targets:
            check(target.port)
        print(f"machine before: {Path('/proc/loadavg').read_text().strip()}")
        results: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
            for target in order:
                results[target.name].append(measure(target, args.duration))
        print(f"machine after: {Path('/proc/loadavg').read_text().strip()}")
        report(results)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, list[dict[str, float]]]) -> None:
    print("| target | keep-alive req µs CPU (median, min-max) | req/s | peer CPU% | CPU0 other% "
          "| failed |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        cost = [run["us_per_req"] for run in runs]
        print(f"| {name} | {statistics.median(cost):.1f} ({min(cost):.1f}-{max(cost):.1f}) | "
              f"{statistics.median(run['rps'] for run in runs):,.0f} | "
              f"{statistics.median(run['peer_cpu_pct'] for run in runs):.0f} | "
              f"{statistics.median(run['cpu0_other_pct'] for run in runs):.0f} | "
              f"{sum(run['failed'] for run in runs):.0f} |")
    for proxy in ("offload", "haproxy"):
        plain = results[f"{proxy}, plain backend"]
        tls = results[f"{proxy}, TLS backend" if proxy == "offload"
                      else "haproxy, ssl verify required"]
        ratios = [t["us_per_req"] / p["us_per_req"] for p, t in zip(plain, tls, strict=True)]
        print(f"{proxy}: TLS / plain backend, paired per round: median "
              f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})")
    offload_tls = [r["us_per_req"] for r in results["offload, TLS backend"]]
    haproxy_tls = [r["us_per_req"] for r in results["haproxy, ssl verify required"]]
    ratios = [o / h for o, h in zip(offload_tls, haproxy_tls, strict=True)]
    print(f"offload TLS backend / haproxy ssl verify required: median "
          f"{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
