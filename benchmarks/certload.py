"""Benchmark: load 10,000 certificates from one directory the way ``offload run`` does at start.

Why: issue 4 asks that 10,000 certificates in one directory load in ≤ 10 s and cost ≤ 30 KiB of
memory each (HAProxy users report 501 s for 50,000 certificates, hitch users about 10 minutes
for 15,000), with the per-name TLS contexts built lazily on first SNI use and cached. This is a
benchmark, not a timed test: its figures depend on the machine, and are recorded in
docs/benchmarks.md.

Each measurement runs in a fresh process, so that memory figures start clean:

1. the load: ``prepare()`` on a quick-mode configuration naming the directory (FrontendSources
   reads and checks every bundle, CertificateStore indexes them): wall time, and RSS growth per
   certificate (with ``--tracemalloc``, also the Python heap kept per certificate, in a second run);
2. the lazy contexts: the first context build for a name (what the SNI callback does on a name's
   first handshake), the RSS cost per context over ``--contexts`` names, and a cached lookup;
3. with ``--process``: ``offload run`` itself, with one bundle and with the whole directory: time
   until the "offload ready" log line, RSS and PSS of the supervisor and its worker, and the first
   and second real handshake for one name.

The certificates (two names each, one authority, mode 0600) are generated once, not measured, and
cached under ``--dir``; RSA keys take about 50 ms each, so they are made on every core.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import multiprocessing
import os
import pstats
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from offload.config.quick import QuickOptions, quick_config, quick_issue
from offload.demo.pki import Authority, KeyType, key_pem, write_private
from offload.server.prepare import prepare

_ISSUER: dict[str, Any] = {}
"""The authority and bundle directory of a generator process (set by its initializer)."""


def site_name(index: int) -> str:
    return f"site{index:05d}.example.test"


def _init_issuer(root: str, key_type: KeyType) -> None:
    directory = Path(root)
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    certificate = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    _ISSUER.update(authority=Authority(key=key, certificate=certificate),  # type: ignore[arg-type]
                   bundles=directory / "bundles", key_type=key_type)


def _issue(index: int) -> None:
    name = site_name(index)
    issued = _ISSUER["authority"].issue([name, f"www.{name}"], _ISSUER["key_type"], days=3650)
    write_private(_ISSUER["bundles"] / f"site{index:05d}.pem", issued.bundle())


def generate(root: Path, count: int, key_type: KeyType) -> Path:
    """``count`` bundles in ``root/bundles`` (made once: a rerun finds them there)."""
    bundles, done = root / "bundles", root / "complete"
    if done.exists():
        return bundles
    bundles.mkdir(parents=True, exist_ok=True)
    authority = Authority("offload certload CA", key_type)
    write_private(root / "ca.key", key_pem(authority.key))
    (root / "ca.crt").write_bytes(authority.pem())
    started = time.perf_counter()
    with multiprocessing.Pool(initializer=_init_issuer, initargs=(str(root), key_type)) as pool:
        for _ in pool.imap_unordered(_issue, range(count), chunksize=32):
            pass
    done.write_text(f"{count} {key_type}\n")
    print(f"generated {count} {key_type} bundles in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return bundles


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, and Pss and Private_Dirty of the whole process, in KiB."""
    figures: dict[str, int] = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Pss", "Private_Dirty"):
                figures[key] = int(value.split()[0])
    return figures


def measure(bundles: Path, contexts: int, *, trace: bool, profile: bool) -> dict[str, float]:
    """In a fresh process: load the directory as ``offload run`` does, then build contexts."""
    config = quick_config(QuickOptions(listen="127.0.0.1:1", certs=(str(bundles),),
                                       backends=("127.0.0.1:1",)))
    gc.collect()
    if trace:
        tracemalloc.start()
    before = memory_kib()["VmRSS"]
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    prepared = prepare(config, "certload", quick_issue)
    if profiler is not None:
        profiler.disable()
    load_s = time.perf_counter() - started
    gc.collect()
    store = prepared.frontends[0].store
    count = len(store.certificates())
    result = {"count": count, "load_s": load_s,
              "rss_kib_per_cert": (memory_kib()["VmRSS"] - before) / count}
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        return result | {"heap_kib_per_cert": current / 1024 / count,
                         "heap_peak_kib_per_cert": peak / 1024 / count}
    names = [certificate.names[0] for certificate in store.certificates()[:contexts]]
    before = memory_kib()["VmRSS"]
    builds = []
    for name in names:
        started = time.perf_counter()
        store.context_for(store.index.select(name)[0])
        builds.append(time.perf_counter() - started)
    gc.collect()
    built_kib = memory_kib()["VmRSS"] - before
    started = time.perf_counter()
    for name in names:
        store.context_for(store.index.select(name)[0])
    lookup_s = (time.perf_counter() - started) / len(names)
    return result | {"contexts": len(names), "first_context_ms": builds[0] * 1e3,
                     "context_median_ms": statistics.median(builds) * 1e3,
                     "rss_kib_per_context": built_kib / len(names), "lookup_us": lookup_s * 1e6}


def child(bundles: Path, contexts: int, *, trace: bool = False, profile: bool = False
          ) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(bundles), "--contexts", str(contexts)]
    command += ["--tracemalloc"] * trace + ["--profile"] * profile
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_offload(cert: Path, ca: Path, name: str) -> dict[str, float]:
    """Start ``offload run`` on 127.0.0.1 with one worker; time it, weigh it, stop it."""
    backend = socket.create_server(("127.0.0.1", 0))  # a port that is ours; nothing answers
    listen = _free_port()
    command = [str(Path(sys.executable).with_name("offload")), "run", "--workers", "1",
               "--listen", f"127.0.0.1:{listen}", "--cert", str(cert),
               "--backend", f"127.0.0.1:{backend.getsockname()[1]}"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        if not any("offload ready" in line for line in proc.stderr):
            raise RuntimeError(f"offload exited with status {proc.wait()} before it was ready")
        ready_s = time.perf_counter() - started
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never block its logs
        client = ssl.create_default_context(cafile=str(ca))  # checks the name is served
        handshakes = []
        for _ in range(2):
            started = time.perf_counter()
            with socket.create_connection(("127.0.0.1", listen)) as raw, \
                    client.wrap_socket(raw, server_hostname=name):
                handshakes.append(time.perf_counter() - started)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        supervisor, worker = memory_kib(proc.pid), memory_kib(children[0])
        return {"ready_s": ready_s, "handshake_first_ms": handshakes[0] * 1e3,
                "handshake_second_ms": handshakes[1] * 1e3,
                "supervisor_rss_mib": supervisor["VmRSS"] / 1024,
                "worker_rss_mib": worker["VmRSS"] / 1024,
                "pss_mib": (supervisor["Pss"] + worker["Pss"]) / 1024,
                "worker_private_mib": worker["Private_Dirty"] / 1024}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        backend.close()


def report(key_type: str, load: dict[str, float], traced: dict[str, float] | None,
           runs: dict[str, dict[str, float]]) -> str:
    count = int(load["count"])
    heap = f"{traced['heap_kib_per_cert']:.1f}" if traced else "-"
    lines = [
        f"### {count:,} {key_type} certificates (Python {sys.version.split()[0]}, "
        f"{ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs)", "",
        "| load s | ms per cert | RSS KiB per cert | heap KiB per cert | first context ms "
        "| context median ms | RSS KiB per context | cached lookup µs |",
        "|---|---|---|---|---|---|---|---|",
        f"| {load['load_s']:.2f} | {load['load_s'] / count * 1e3:.3f} | "
        f"{load['rss_kib_per_cert']:.1f} | {heap} | {load['first_context_ms']:.2f} | "
        f"{load['context_median_ms']:.2f} | {load['rss_kib_per_context']:.1f} | "
        f"{load['lookup_us']:.1f} |",
    ]
    if runs:
        lines += ["", "| `offload run --workers 1` | ready s | supervisor RSS MiB | worker RSS MiB "
                  "| PSS both MiB | worker private MiB | 1st / 2nd handshake ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {what} | {r['ready_s']:.2f} | {r['supervisor_rss_mib']:.1f} | "
                  f"{r['worker_rss_mib']:.1f} | {r['pss_mib']:.1f} | {r['worker_private_mib']:.1f}"
                  f" | {r['handshake_first_ms']:.2f} / {r['handshake_second_ms']:.2f} |"
                  for what, r in runs.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "offload-certload",
                        help="where generated certificates are cached")
    parser.add_argument("--contexts", type=int, default=1000, help="names to build contexts for")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also measure the Python heap per certificate (a second load)")
    parser.add_argument("--profile", action="store_true", help="cProfile the load (to stderr)")
    parser.add_argument("--process", action="store_true", help="also time `offload run` itself")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.contexts, trace=args.tracemalloc,
                                 profile=args.profile)))
        return
    root = args.dir.resolve() / f"{args.key_type}-{args.count}"
    bundles = generate(root, args.count, args.key_type)
    load = child(bundles, args.contexts, profile=args.profile)
    traced = child(bundles, args.contexts, trace=True) if args.tracemalloc else None
    runs: dict[str, dict[str, float]] = {}
    if args.process:
        name = site_name(args.count // 2)
        runs["one bundle"] = run_offload(bundles / "site00000.pem", root / "ca.crt", site_name(0))
        runs[f"{args.count:,} bundles"] = run_offload(bundles, root / "ca.crt", name)
    if args.json:
        print(json.dumps({"key_type": args.key_type, "load": load, "tracemalloc": traced,
                          "process": runs}, indent=2))
    else:
        print(report(args.key_type, load, traced, runs))


if __name__ == "__main__":
    main()
