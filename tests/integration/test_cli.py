"""The offload command: version, check, quick mode, demo; exit codes and messages."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from conftest import tcp_config
from harness import Offload, client_context, echo, free_port, recv_all, tls_connect

from offload import __version__
from offload.config.loader import load_file

ROOT = Path(__file__).resolve().parents[2]


def offload_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "offload", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd)


def test_version():
    result = offload_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"offload {__version__} (Python ")
    assert "OpenSSL" in result.stdout


def test_version_says_whether_the_data_path_is_compiled():
    """The install the test runs from: compiled (.venv-compiled) or pure Python (.venv)."""
    import offload.tls.stream

    compiled = offload.tls.stream.__file__.endswith(tuple(EXTENSION_SUFFIXES))
    line = offload_cli("version").stdout.splitlines()[1]
    if compiled:
        assert line.startswith("data path compiled (mypyc, ")
    else:
        assert line.startswith("data path pure Python (not compiled: ")


def test_check_valid_config_prints_a_summary(pki, tmp_path, backend):
    server = backend(echo)
    ecdsa = pki.bundle(["www.example.test", "example.test"], name="site.pem", directory=tmp_path)
    config = tmp_path / "offload.toml"
    config.write_text(tcp_config(8443, [Path("site.pem")], [server.address]).replace(
        'log_level = "debug"', "") + '\n[admin]\nbind = "9404"\n[bans]\nthreshold = 5\n')
    result = offload_cli("check", "-c", str(config), cwd=ROOT)  # relative to the file's dir
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config}: configuration is valid"
    assert 'frontend "test": 127.0.0.1:8443 (tcp, tls_policy intermediate) -> backend "app"' in (
        result.stdout)
    assert "certificate www.example.test, example.test [ECDSA 256] expires" in result.stdout
    assert f"from {ecdsa}" in result.stdout and "days left" in result.stdout
    assert f'backend "app" (roundrobin, connect 2s): {server.address}' in result.stdout
    assert "admin: http://127.0.0.1:9404/ (no token, loopback only)" in result.stdout
    assert "bans: 5 offences within 1m ban a client for 10m" in result.stdout
    assert "no active health check; ejected for 30s after 5 failures in a row" in result.stdout
    assert len(lines) < 25


def test_check_shows_everything_that_changes_behaviour(pki, tmp_path):
    """HSTS, redirect listeners, client certificates, limits, rules, health checks, settings
    changed from their defaults, ACME, admin and bans: on one screen."""
    pki.bundle(["www.example.test"], name="site.pem", directory=tmp_path)
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    config = tmp_path / "offload.toml"
    config.write_text("""
[global]
workers = 2

[[frontends]]
name = "web"
bind = [":8443", "127.0.0.1:9443"]
backend = "app"
certificates = ["site.pem"]
hsts = "max-age=63072000"
redirect_http = ":8080"
client_auth = "optional"
client_ca = "ca.pem"
max_body_size = "10MiB"
idle_timeout = "1m"
limits = { max_connections_per_ip = 50, request_rate_per_ip = "20/s burst 40" }
inspect = { builtin = ["sqli"], dry_run = true, rules = [
    { name = "no-admin", action = "deny", path = "^/admin" }] }

[[frontends]]
name = "mail"
mode = "tcp"
bind = "127.0.0.1:9993"
backend = "app"
certificates = ["site.pem"]

[[backends]]
name = "app"
servers = ["127.0.0.1:8081"]
proxy_protocol = "none"
pool_max_idle = 8
health_check = { path = "/health", interval = "2s", fall = 2 }
ejection = { failures = 0 }

[acme]
agree_to_terms = true
frontends = ["web"]
storage = "acme"

[[acme.certificates]]
names = ["example.org", "www.example.org"]

[admin]
bind = "9404"

[bans]
threshold = 5
""")
    result = offload_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in [
        'frontend "web": :8443 (IPv4 and IPv6), 127.0.0.1:9443 (http, tls_policy intermediate)',
        '    HSTS "max-age=63072000"',
        "    redirect plain HTTP on :8080 (IPv4 and IPv6) to https port 8443",
        "    client certificates: optional, 1 CA file(s), no revocation check",
        "    limits: max_connections_per_ip 50, request_rate_per_ip 20/s burst 40",
        "    inspection: 1 rule(s) (1 deny); built-in sqli (deny); DRY RUN: nothing denied",
        "    settings: idle_timeout 1m, max_body_size 10MiB",
        'frontend "mail": 127.0.0.1:9993 (tcp, tls_policy intermediate)',
        "    health check GET /health expecting 200-399 every 2s (timeout 2s, down after 2, "
        "up after 2); passive ejection off",
        "    settings: pool_max_idle 8",
        "  acme: example.org, www.example.org from https://acme-v02.api.letsencrypt.org/directory "
        "(tls-alpn-01, http-01; for web; storage acme)",
        "  admin: http://127.0.0.1:9404/ (no token, loopback only)",
        "  bans: 5 offences within 1m ban a client for 10m",
    ]:
        assert text in out, f"{text!r} not in:\n{out}"
    mail = out.split('frontend "mail"')[1].split("backend")[0]
    assert "HSTS" not in mail, "a TCP frontend has no HSTS line"
    assert len(out.splitlines()) <= 30


def test_check_lists_every_error_with_path_and_fix(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(f"""
[global]
wokers = 2

[[frontends]]
name = "web"
bind = "0.0.0.0:443"
backend = "app"
certificates = ["{tmp_path}/missing.pem"]
handshake_timeout = 10

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]
""")
    result = offload_cli("check", "-c", str(config))
    assert result.returncode == 1
    err = result.stderr
    assert f"offload: {config}: 2 errors" in err
    assert 'global.wokers: unknown key\n      fix: did you mean "workers"?' in err
    assert "frontends[0].handshake_timeout: a duration needs a unit" in err


def test_check_reports_certificate_problems_by_key_path(tmp_path):
    config = tmp_path / "certs.toml"
    (tmp_path / "empty.pem").write_text("")
    config.write_text("""
[[frontends]]
name = "web"
bind = "127.0.0.1:8443"
backend = "app"
certificates = ["empty.pem", {cert = "nowhere.crt", key = "nowhere.key"}]

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]
""")
    result = offload_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert f"frontends[0].certificates[0]: {tmp_path}/empty.pem: no certificate found" in result.stderr
    assert f"frontends[0].certificates[1]: {tmp_path}/nowhere.crt: certificate file not found" in (
        result.stderr)


def test_example_config_is_valid():
    config = load_file(ROOT / "examples" / "offload.toml")
    assert [frontend.name for frontend in config.frontends]
    assert config.frontends[0].mode == "tcp"


def test_check_reports_an_http_key_on_a_tcp_frontend(tmp_path):
    """The issue's case: hsts on a TCP frontend used to pass the check and send nothing."""
    config = tmp_path / "tcp.toml"
    config.write_text("""
[[frontends]]
name = "web"
mode = "tcp"
bind = ":8443"
backend = "app"
certificates = ["site.pem"]
hsts = "max-age=600"

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]
""")
    result = offload_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert ('frontends[0].hsts: hsts only applies to HTTP requests, and this frontend is in '
            'mode "tcp"\n      fix: set mode = "http" on this frontend, or remove hsts') in result.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["run", "--listen", "127.0.0.1:1"], 2, "quick mode needs --cert, --backend"),
    (["run", "--listen", "127.0.0.1:1", "--cert", "x", "--backend", "127.0.0.1:2",
      "--admin", "nowhere:x"], 1, "--admin: "),
    (["run", "--listen", "127.0.0.1:1", "--cert", "x", "--backend", "127.0.0.1:2",
      "--client-ca", "/nonexistent-ca.pem"], 1, "--client-ca: cannot read /nonexistent-ca.pem"),
    (["run", "-c", "x.toml", "--listen", "127.0.0.1:1"], 2, "give either -c FILE or the quick"),
    (["run", "--listen", "nowhere", "--cert", "x", "--backend", "127.0.0.1:2"], 1,
     '--listen: "nowhere" has no port'),
    (["run", "--listen", "8443", "--cert", "x", "--backend", "127.0.0.1:2"], 1,
     '--listen: "8443" is a port without a host\n      fix: write ":8443" to listen on every '
     'address (IPv4 and IPv6), or a host and the port, like "127.0.0.1:8443"'),
    (["run", "--listen", "127.0.0.1:1", "--cert", "/nonexistent.pem", "--backend", "127.0.0.1:2"],
     1, "--cert: /nonexistent.pem: certificate file not found"),
    (["run", "--listen", "127.0.0.1:1", "--cert", "x", "--backend", "127.0.0.1:2",
      "--upstream-timeout", "30"], 1, '--upstream-timeout: "30" is not a duration'),
    (["run", "--mode", "ftp"], 2, "invalid choice: 'ftp'"),
])
def test_command_line_errors(args, code, message):
    result = offload_cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _serves(port: int, ca: Path) -> None:
    with tls_connect(port, client_context(ca)) as tls:
        tls.sendall(b"quick")
        assert tls.recv(10) == b"quick"


def test_quick_mode_with_bundle_and_two_backends(pki, localhost_bundle, backend):
    first, second = backend(echo), backend(echo)
    port = free_port()
    instance = Offload("", args=["run", "--listen", f"127.0.0.1:{port}", "--cert",
                                 str(localhost_bundle), "--backend", first.address,
                                 "--backend", second.address, "--workers", "1", "--mode", "tcp",
                                 "--tls-policy", "modern", "--upstream-timeout", "5s"])
    try:
        instance.wait_ready()
        for _ in range(2):
            _serves(port, pki.ca)
        assert len(first.connections) == len(second.connections) == 1
    finally:
        assert instance.stop() == 0


def test_quick_mode_with_separate_key_and_proxy_protocol(pki, tmp_path, backend):
    from harness import record

    issued = pki.authority.issue(["localhost"], "rsa")
    from offload.demo.pki import key_pem, write_private

    (tmp_path / "site.crt").write_bytes(issued.cert_chain())
    write_private(tmp_path / "site.key", key_pem(issued.key))
    server = backend(record)
    port = free_port()
    instance = Offload("", args=["run", "--listen", f"127.0.0.1:{port}",
                                 "--cert", str(tmp_path / "site.crt"),
                                 "--key", str(tmp_path / "site.key"),
                                 "--backend", server.address, "--proxy-protocol", "v1",
                                 "--workers", "1", "--mode", "tcp"])
    try:
        instance.wait_ready()
        with tls_connect(port, client_context(pki.ca)):
            pass
        recording = server.wait_connections(1)[0]
        assert recording.closed.wait(10)
        assert recording.data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    finally:
        instance.kill()


def test_quick_mode_with_a_directory_of_bundles(pki, tmp_path, backend):
    directory = tmp_path / "certs"
    directory.mkdir()
    pki.bundle(["a.test"], name="a.pem", directory=directory)
    pki.bundle(["localhost"], name="b.pem", directory=directory)
    server = backend(echo)
    port = free_port()
    instance = Offload("", args=["run", "--listen", f"127.0.0.1:{port}", "--cert", str(directory),
                                 "--backend", server.address, "--workers", "1", "--mode", "tcp"])
    try:
        instance.wait_ready()
        _serves(port, pki.ca)  # SNI localhost picks b.pem although a.pem is the default
    finally:
        instance.kill()


def test_demo_runs_and_reuses_its_ca(tmp_path):
    data = tmp_path / "demo"
    port = free_port()
    admin_port = free_port()
    demo = Offload("", args=["demo", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                             "--admin", str(admin_port)])
    try:
        demo.wait_for(lambda e: "curl --cacert" in e.get("raw", ""))
        assert any(f"http://127.0.0.1:{admin_port}/" in e.get("raw", "") for e in demo.events)
        with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as admin:
            admin.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_all(admin).startswith(b"HTTP/1.1 200 OK")
        command = next(e["raw"].strip() for e in demo.events if "curl --cacert" in e.get("raw", ""))
        assert command == f"curl --cacert {data / 'ca.crt'} https://localhost:{port}/"
        with tls_connect(port, client_context(data / "ca.crt")) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            page = recv_all(tls).decode()
        assert page.startswith("HTTP/1.1 200 OK")
        assert "Hello from the offload demo backend." in page
        assert "Your address (X-Forwarded-For): 127.0.0.1" in page
        assert "Protocol (X-Forwarded-Proto): https" in page
        curl = shutil.which("curl")
        if curl:
            fetched = subprocess.run(command.split(), capture_output=True, text=True, timeout=20,
                                     check=False)
            assert fetched.returncode == 0, fetched.stderr
            assert "Hello from the offload demo backend." in fetched.stdout
    finally:
        demo.signal(signal.SIGINT)
        assert demo.process.wait(15) == 0
        demo.kill()
    ca_before = (data / "ca.crt").read_bytes()
    again = Offload("", args=["demo", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                              "--admin", "off"])
    try:
        again.wait_for(lambda e: "curl --cacert" in e.get("raw", ""))
        assert (data / "ca.crt").read_bytes() == ca_before
        assert (data / "ca.key").stat().st_mode & 0o077 == 0
    finally:
        again.kill()


def test_demo_goes_on_without_the_status_page_when_its_port_is_taken(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin_port = taken.getsockname()[1]
        demo = Offload("", args=["demo", "--data-dir", str(tmp_path), "--listen",
                                 f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin_port}"])
        try:
            demo.wait_for(lambda e: "curl --cacert" in e.get("raw", ""))
            assert any(f"127.0.0.1:{admin_port} is taken" in e.get("raw", "")
                       for e in demo.events)
        finally:
            demo.kill()


def test_demo_port_in_use_is_a_clear_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = offload_cli("demo", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert (f"offload: demo: --listen: cannot listen on 127.0.0.1:{port}: Address already in use; "
            f"fix: stop what holds port {port}") in result.stderr


@pytest.mark.parametrize("key", ["frontends[0].bind[1]", "frontends[0].redirect_http[0]",
                                 "admin.bind"])
def test_an_address_in_use_at_start_names_the_key_and_the_fix(pki, tmp_path, key):
    bundle = pki.bundle(["localhost"], directory=tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        free = free_port()
        binds = {"frontends[0].bind[1]": f'bind = ["127.0.0.1:{free}", "127.0.0.1:{port}"]',
                 "frontends[0].redirect_http[0]": f'bind = "127.0.0.1:{free}"\n'
                                                  f'redirect_http = "127.0.0.1:{port}"',
                 "admin.bind": f'bind = "127.0.0.1:{free}"'}[key]
        admin = f'\n[admin]\nbind = "{port}"\n' if key == "admin.bind" else ""
        config = tmp_path / "inuse.toml"
        config.write_text(f"""
[[frontends]]
name = "web"
{binds}
backend = "app"
certificates = ["{bundle}"]

[[backends]]
name = "app"
servers = ["127.0.0.1:9"]
{admin}""")
        result = offload_cli("run", "-c", str(config))
    assert result.returncode == 1
    line = (f"offload: {config}: {key}: cannot listen on 127.0.0.1:{port}: Address already in "
            f"use; fix: stop what holds port {port} (`ss -ltnp 'sport = :{port}'` shows it), or "
            "choose another address")
    assert line in result.stderr.splitlines(), result.stderr
    assert "Traceback" not in result.stderr


def test_a_quick_mode_readable_key_suggests_the_flag_that_allows_it(pki, tmp_path, backend):
    bundle = pki.bundle(["localhost"], directory=tmp_path)
    bundle.chmod(0o644)
    args = ["run", "--listen", f"127.0.0.1:{free_port()}", "--cert", str(bundle), "--backend",
            "127.0.0.1:9", "--workers", "1"]
    refused = offload_cli(*args)
    assert refused.returncode == 1
    assert "--cert: " in refused.stderr and "readable by group and others" in refused.stderr
    assert "add --allow-readable-keys if this is on purpose" in refused.stderr
    assert "global.allow_readable_keys" not in refused.stderr
    instance = Offload("", args=[*args, "--allow-readable-keys"])
    try:
        instance.wait_ready()
    finally:
        instance.kill()


# --- ":PORT": every address, IPv4 and IPv6 ------------------------------------------------------


def test_a_dual_stack_listener_reports_ipv4_clients_as_ipv4(pki, localhost_bundle, backend):
    """On ":PORT" an IPv4 client arrives as ::ffff:127.0.0.1; the backend must learn
    127.0.0.1 (PROXY TCP4), as from an IPv4 socket."""
    from harness import record

    server = backend(record)
    port = free_port()
    instance = Offload("", args=["run", "--listen", f":{port}", "--cert", str(localhost_bundle),
                                 "--backend", server.address, "--mode", "tcp", "--workers", "1",
                                 "--proxy-protocol", "v1"])
    try:
        instance.wait_ready()
        assert instance.messages("offload ready")[0]["listening"] == [f":{port}"]
        with tls_connect(port, client_context(pki.ca)):
            pass
        recording = server.wait_connections(1)[0]
        assert recording.closed.wait(10)
        assert recording.data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    finally:
        instance.kill()


def test_a_deny_rule_for_a_network_holds_on_a_dual_stack_listener(pki, localhost_bundle,
                                                                  http_backend, tmp_path):
    """A rule for 127.0.0.0/8 must match a client of ":PORT" whose address the kernel gives as
    ::ffff:127.0.0.1; otherwise every rule on IPv4 networks is bypassed."""
    server = http_backend()
    port = free_port()
    config = tmp_path / "dual.toml"
    config.write_text(f"""
[global]
workers = 1

[[frontends]]
name = "web"
bind = ":{port}"
backend = "app"
certificates = ["{localhost_bundle}"]
access_log = "off"
inspect = {{ rules = [{{ name = "no-loopback", action = "deny", client = ["127.0.0.0/8"] }}] }}

[[backends]]
name = "app"
servers = ["{server.address}"]
""")
    instance = Offload(config)
    try:
        instance.wait_ready()
        with tls_connect(port, client_context(pki.ca)) as tls:  # from 127.0.0.1
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = recv_all(tls)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:100]
        assert server.requests == []
    finally:
        instance.kill()


def test_check_refuses_an_unknown_user(pki, tmp_path):
    bundle = pki.bundle(["localhost"], directory=tmp_path)
    config = tmp_path / "user.toml"
    config.write_text(tcp_config(8443, [bundle], ["127.0.0.1:8080"],
                                 global_='user = "no-such-user-x1"\ngroup = "no-such-group-x1"'))
    result = offload_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert 'global.user: no user "no-such-user-x1" on this system' in result.stderr
    assert 'global.group: no group "no-such-group-x1" on this system' in result.stderr
