"""Benchmark: the CPU cost of one small HTTP/2 request in each engine (sans-IO, no sockets).

Why: offload runs HTTP/2 on libnghttp2 (through its cffi binding) or on python-hyper ``h2``;
the lead picks the default from this figure. What one request costs here: a client HEADERS
frame in (a GET with five ordinary fields, HPACK-indexed after the first request as a browser's
would be), ``receive`` → ``RequestReceived``, then ``send_headers`` (``:status``,
``content-type``, ``content-length``), ``send_data`` of 100 bytes with END_STREAM, and
``data_to_send`` — on an already-open connection whose client opened its windows wide.

Two measures:

* CPU time (``time.process_time``) per request over ``--requests`` (10,000), best of
  ``--rounds``; quick, but shared machines make it noisy;
* with ``--callgrind``: instructions per request counted by valgrind's callgrind, as the
  difference between a run that serves ``--requests`` and one that only prepares them
  (start-up and the client's HPACK encoding cancel out);
  exact and independent of other load, about a minute per engine.

    python benchmarks/h2_engine_cost.py                 # both engines, CPU time
    python benchmarks/h2_engine_cost.py --callgrind     # both engines, instructions
    python benchmarks/h2_engine_cost.py --engine h2 --requests 2000 --profile   # cProfile top

Run it with the interpreter of the install to measure (``.venv-compiled/bin/python`` is the
build that ships).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"100")]
BODY = b"x" * 100


def _client_bytes(requests: int) -> tuple[bytes, list[bytes]]:
    """The client's preface, and one HEADERS frame per request (stream 1, 3, 5...)."""
    import hpack
    from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

    hello = (PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1})
             .serialize() + WindowUpdateFrame(0, window_increment=2**31 - 1 - 65_535).serialize()
             + SettingsFrame(0, flags=["ACK"]).serialize())
    encoder = hpack.Encoder()
    frames = []
    for index in range(requests):
        fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
                  (b":path", b"/index.html"), (b"user-agent", b"bench/1.0"),
                  (b"accept", b"*/*"), (b"accept-encoding", b"gzip, br"),
                  (b"accept-language", b"en"), (b"cookie", b"session=abc123")]
        frame = HeadersFrame(2 * index + 1, encoder.encode(fields),
                             flags=["END_HEADERS", "END_STREAM"])
        frames.append(bytes(frame.serialize()))
    return hello, frames


def run(engine_name: str, requests: int, profile: cProfile.Profile | None = None,
        serve: bool = True) -> float:
    """Serve ``requests`` requests; the CPU seconds the loop took (profiled if asked). Without
    ``serve``, only the preparation (the client's frames, the engine) is done."""
    from offload.proto.h2_engine import H2Settings, RequestReceived
    from offload.proto.h2_engines import make_engine

    hello, frames = _client_bytes(requests)
    engine = make_engine(H2Settings(max_concurrent_streams=100), prefer=engine_name)  # type: ignore[arg-type]
    engine.initiate()
    engine.receive(hello)
    engine.data_to_send()
    if not serve:
        return 0.0
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for frame in frames:
        for event in engine.receive(frame):
            if isinstance(event, RequestReceived):
                engine.send_headers(event.stream_id, RESPONSE, end_stream=False)
                engine.send_data(event.stream_id, BODY, end_stream=True)
        engine.data_to_send()
    spent = time.process_time() - started
    if profile is not None:
        profile.disable()
    assert engine.open_streams == 0, "every request was answered"
    return spent


def _callgrind_instructions(engine_name: str, requests: int, serve: bool) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--engine", engine_name,
                        "--requests", str(requests), "--rounds", "1",
                        "--quiet" if serve else "--prepare-only"],
                       check=True, capture_output=True)
        summary = re.search(r"^summary:\s+(\d+)", out.read_text(encoding="utf-8"), re.MULTILINE)
        assert summary, "callgrind wrote no summary"
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["nghttp2", "h2", "both"], default="both")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="one run, nothing printed")
    parser.add_argument("--prepare-only", action="store_true",
                        help="as --quiet, but only prepare (callgrind subtracts this run)")
    args = parser.parse_args()
    engines = ["nghttp2", "h2"] if args.engine == "both" else [args.engine]
    if args.quiet or args.prepare_only:  # one run, for callgrind
        run(engines[0], args.requests, serve=not args.prepare_only)
        return
    print(f"python {sys.version.split()[0]}, {os.path.basename(sys.executable)} at "
          f"{sys.prefix}; {args.requests:,} requests")
    for name in engines:
        if args.profile:
            profile = cProfile.Profile()
            run(name, args.requests, profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        elif args.callgrind:
            full = _callgrind_instructions(name, args.requests, serve=True)
            empty = _callgrind_instructions(name, args.requests, serve=False)
            print(f"{name:8} {(full - empty) / args.requests:12,.0f} instructions per request")
        else:
            best = min(run(name, args.requests) for _ in range(args.rounds))
            print(f"{name:8} {best / args.requests * 1e6:8.1f} µs CPU per request "
                  f"(best of {args.rounds})")


if __name__ == "__main__":
    main()
