"""The OWASP CRS regression tests against nginx + ModSecurity (Debian's
libnginx-mod-http-modsecurity), with the same engine directives and rule set offload loads
(detect mode, paranoia level 1), judged the same way: for a side-by-side with
``tools/crs-regression``.

    python tools/crs_nginx_compare.py [REPORT.json]

nginx's connector writes every rule message to nginx's error log; the rule ids of the lines a
request added are its matches (cases run one at a time). Needs nginx,
libnginx-mod-http-modsecurity and modsecurity-crs, and the CRS tests (``tools/crs-regression
--fetch``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from crs_cases import (
    DEFAULT_TESTS,
    Tally,
    applicable,
    judge,
    load_cases,
    rule_levels,
)

from offload.demo.pki import demo_files
from offload.security.waf_config import WafConfig
from offload.security.waf_rules import plan_waf

MODULE = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")
_ID = re.compile(rb'\[id "(\d+)"\]')


class _Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rules_file(directory: Path) -> Path:
    plan, issues = plan_waf(WafConfig(mode="detect"), Path("."), "waf")
    if plan is None:
        sys.exit("; ".join(issue.render() for issue in issues))
    lines = []
    for index, (kind, value) in enumerate(plan.sources):
        if kind == "file":
            lines.append(f"Include {value}")
        else:
            part = directory / f"offload-{index}.conf"
            part.write_text(value)
            lines.append(f"Include {part}")
    main = directory / "main.conf"
    main.write_text("\n".join(lines) + "\n")
    return main


def _send(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    head, sep, body = request.partition(b"\r\n\r\n")
    if sep and b"connection:" not in head.lower():
        request = head + b"\r\nConnection: close" + sep + body
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (OSError, ssl.SSLError):
            pass
    return answer


def main() -> None:
    if not MODULE.exists():
        sys.exit("install nginx's ModSecurity module: apt-get install libnginx-mod-http-modsecurity")
    report = Path(sys.argv[1] if len(sys.argv) > 1 else "crs-nginx-report.json")
    cases = load_cases(Path(os.environ.get("OFFLOAD_CRS_TESTS", DEFAULT_TESTS)))
    levels = rule_levels(Path("/usr/share/modsecurity-crs/rules"))
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        files = demo_files(directory / "pki")
        port = _free_port()
        error_log = directory / "error.log"
        config = directory / "nginx.conf"
        config.write_text(f"""
load_module {MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {error_log} info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {files.bundle};
        ssl_certificate_key {files.bundle};
        modsecurity on;
        modsecurity_rules_file {_rules_file(directory)};
        location / {{ proxy_pass http://127.0.0.1:{backend.server_port}; }}
    }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", str(config), "-p", str(directory)],
                                 stderr=subprocess.DEVNULL)
        context = ssl.create_default_context(cafile=str(files.ca))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"nginx did not start: {error_log.read_text()[-2000:]}")
                time.sleep(0.1)
        tally = Tally()
        try:
            for case in cases:
                if case.expect == "unsupported" or not case.request:
                    tally.add(case, "unsupported")
                    continue
                if not applicable(case, levels, 1):
                    tally.add(case, "not_at_this_level")
                    continue
                mark = error_log.stat().st_size
                answer = _send(port, context, case.request)
                with error_log.open("rb") as log:
                    log.seek(mark)
                    added = log.read()
                ids = sorted({int(found) for found in _ID.findall(added)})
                status = int(answer[9:12]) if answer[:5] == b"HTTP/" and answer[9:12].isdigit() \
                    else 0
                if not ids and status == 400 and b"ModSecurity" not in added:
                    tally.add(case, "refused_by_nginx")
                    continue
                outcome, detail = judge(case, {"waf": {"rules": ids}, "status": status,
                                               "method": "-"}, levels, 1)
                tally.add(case, outcome, detail)
        finally:
            nginx.terminate()
            nginx.wait(10)
            backend.shutdown()
    result = {"engine": "nginx 1.22 + libnginx-mod-http-modsecurity 1.0.3 + libmodsecurity "
              "3.0.9, CRS 3.3.4", "paranoia_level": 1, "cases": len(cases),
              "outcomes": dict(tally.outcomes), "pass_rate": round(tally.pass_rate, 4),
              "failures": tally.failures}
    report.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))


if __name__ == "__main__":
    main()
