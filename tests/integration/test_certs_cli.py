"""``offload certs list`` and ``offload certs check``, run as the command, on generated files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from offload.demo.pki import Authority, Issued, KeyType, key_pem, write_private

HEADER = ["NAMES", "KEY", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATUS", "SOURCE", "FRONTEND"]
JSON_FIELDS = {"names", "key", "issuer", "not_after", "days_left", "status", "source", "frontends",
               "fingerprint_sha256"}
PASSPHRASE = "correct horse battery staple"


def offload_cli(*args: str, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "offload", *args], capture_output=True,
                            text=True, timeout=60, check=False, cwd=cwd,
                            env={**os.environ, **(env or {})})
    assert "Traceback" not in result.stderr
    for output in (result.stdout, result.stderr):  # whatever the command, never a key
        assert "PRIVATE KEY" not in output
        assert PASSPHRASE not in output
    return result


@dataclass
class Files:
    """Certificates in every state, written to one directory."""

    directory: Path
    issued: dict[str, Issued]

    def __truediv__(self, name: str) -> Path:
        return self.directory / name

    def date(self, name: str) -> str:
        return f"{self.issued[name].certificate.not_valid_after_utc:%Y-%m-%d}"

    def fingerprint(self, name: str) -> str:
        der = self.issued[name].certificate.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()

    def key_bodies(self) -> list[str]:
        """A line of every private key written, to look for in the output."""
        return [key_pem(issued.key).decode().splitlines()[1] for issued in self.issued.values()]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("certs")
    authority = Authority("offload certs CA")
    now = dt.datetime.now(dt.UTC)
    issued: dict[str, Issued] = {}

    def issue(name: str, names: list[str], key_type: KeyType = "ecdsa", *, before: float = -1,
              after: float) -> Issued:
        issued[name] = authority.issue(names, key_type,
                                       not_before=now + dt.timedelta(days=before),
                                       not_after=now + dt.timedelta(days=after))
        return issued[name]

    # Expiry times sit half a day from a day boundary: "days left" is the same a minute later.
    write_private(directory / "expired.pem",
                  issue("expired", ["old.example.test"], before=-100, after=-2.5).bundle())
    write_private(directory / "soon.pem",
                  issue("soon", ["soon.example.test", "www.soon.example.test"], after=5.5).bundle())
    write_private(directory / "good.pem", issue("good", ["good.example.test"], after=90.5).bundle())
    rsa = issue("rsa", ["rsa.example.test"], "rsa", after=60.5)
    (directory / "rsa.crt").write_bytes(rsa.cert_chain())
    write_private(directory / "rsa.key", key_pem(rsa.key))
    (directory / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    mismatched = issue("mismatch", ["mismatch.example.test"], after=90.5)
    write_private(directory / "mismatch.pem",
                  mismatched.cert_chain() + key_pem(issue("other", ["x.test"], after=9).key))
    write_private(directory / "future.pem",
                  issue("future", ["future.example.test"], before=3, after=100.5).bundle())
    open_file = directory / "open.pem"
    open_file.write_bytes(issue("open", ["open.example.test"], after=90.5).bundle())
    open_file.chmod(0o644)
    locked = issue("locked", ["locked.example.test"], after=90.5)
    (directory / "locked.crt").write_bytes(locked.cert_chain())
    write_private(directory / "locked.key", locked.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode())))
    bundles = directory / "bundles"
    bundles.mkdir()
    write_private(bundles / "a.pem", issue("a", ["a.example.test"], after=40.5).bundle())
    b = issue("b", ["b.example.test"], after=20.5)
    (bundles / "b.crt").write_bytes(b.cert_chain())
    write_private(bundles / "b.key", key_pem(b.key))
    (bundles / "notes.txt").write_text("not a certificate\n")
    (directory / "offload.toml").write_text("""
[[frontends]]
name = "web"
bind = "127.0.0.1:8443"
backend = "app"
certificates = ["good.pem", { cert = "rsa.crt", key = "rsa.key" }, "bundles"]

[[frontends]]
name = "api"
bind = "127.0.0.1:8444"
backend = "app"
certificates = [
    "./good.pem",
    "soon.pem",
    { cert = "locked.crt", key = "locked.key", passphrase_env = "OFFLOAD_TEST_PASS" },
]

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]
""")
    return Files(directory, issued)


def table(output: str) -> list[list[str]]:
    """The cells of a text table (columns are two or more spaces apart)."""
    return [re.split(r" {2,}", line.strip()) for line in output.splitlines()]


def test_list_shows_every_state(files: Files) -> None:
    result = offload_cli(
        "certs", "list", "--cert", str(files / "rsa.crt"), "--key", str(files / "rsa.key"),
        "--cert", str(files / "expired.pem"), "--cert", str(files / "soon.pem"),
        "--cert", str(files / "good.pem"), "--cert", str(files / "broken.pem"),
        "--cert", str(files / "mismatch.pem"), "--cert", str(files / "future.pem"),
        "--cert", str(files / "open.pem"), "--cert", str(files / "missing.pem"))
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == HEADER
    assert rows[1:] == [
        ["rsa.example.test", "RSA 2048", "offload certs CA", files.date("rsa"), "60", "ok",
         f"{files / 'rsa.crt'} + {files / 'rsa.key'}", "-"],
        ["old.example.test", "ECDSA 256", "offload certs CA", files.date("expired"), "-3",
         "expired", str(files / "expired.pem"), "-"],
        ["soon.example.test, www.soon.example.test", "ECDSA 256", "offload certs CA",
         files.date("soon"), "5", "expires soon", str(files / "soon.pem"), "-"],
        ["good.example.test", "ECDSA 256", "offload certs CA", files.date("good"), "90", "ok",
         str(files / "good.pem"), "-"],
        ["-", "-", "-", "-", "-", "broken: not a valid PEM file", str(files / "broken.pem"), "-"],
        ["mismatch.example.test", "ECDSA 256", "offload certs CA", files.date("mismatch"), "90",
         "broken: the private key does not match the certificate", str(files / "mismatch.pem"),
         "-"],
        ["future.example.test", "ECDSA 256", "offload certs CA", files.date("future"), "100",
         "not yet valid", str(files / "future.pem"), "-"],
        ["open.example.test", "ECDSA 256", "offload certs CA", files.date("open"), "90",
         "key readable by others (mode 0644)", str(files / "open.pem"), "-"],
        ["-", "-", "-", "-", "-", "broken: certificate file not found",
         str(files / "missing.pem"), "-"],
    ]
    lines = result.stdout.splitlines()
    starts = {line.index(str(files.directory)) for line in lines[1:]}
    assert starts == {lines[0].index("SOURCE")}  # aligned columns
    assert {line.index(" not yet valid") for line in lines if "not yet valid" in line} == {
        lines[0].index(" STATUS")}


def test_list_a_configuration_resolves_paths_from_its_directory(files: Files, tmp_path: Path) -> None:
    result = offload_cli("certs", "list", "-c", str(files / "offload.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == HEADER
    assert [(row[0], row[5], row[6], row[7]) for row in rows[1:]] == [
        ("good.example.test", "ok", str(files / "good.pem"), "web, api"),
        ("rsa.example.test", "ok", f"{files / 'rsa.crt'} + {files / 'rsa.key'}", "web"),
        ("a.example.test", "ok", str(files / "bundles" / "a.pem"), "web"),
        ("b.example.test", "expires soon",
         f"{files / 'bundles' / 'b.crt'} + {files / 'bundles' / 'b.key'}", "web"),
        ("soon.example.test, www.soon.example.test", "expires soon", str(files / "soon.pem"),
         "api"),
        ("locked.example.test", "key encrypted (not checked)",
         f"{files / 'locked.crt'} + {files / 'locked.key'}", "api"),
    ]


def test_list_as_json(files: Files) -> None:
    result = offload_cli("certs", "list", "--json", "--cert", str(files / "bundles"),
                         "--cert", str(files / "expired.pem"), "--cert", str(files / "broken.pem"))
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [set(entry) for entry in entries] == [JSON_FIELDS] * 4
    assert entries[0] == {
        "names": ["a.example.test"], "key": "ECDSA 256", "issuer": "offload certs CA",
        "not_after": files.issued["a"].certificate.not_valid_after_utc.isoformat(),
        "days_left": 40, "status": "ok", "source": str(files / "bundles" / "a.pem"),
        "frontends": [], "fingerprint_sha256": files.fingerprint("a"),
    }
    assert entries[1]["source"] == f"{files / 'bundles' / 'b.crt'} + {files / 'bundles' / 'b.key'}"
    assert (entries[1]["days_left"], entries[1]["status"]) == (20, "expires soon")
    assert (entries[2]["days_left"], entries[2]["status"]) == (-3, "expired")
    assert entries[2]["fingerprint_sha256"] == files.fingerprint("expired")
    assert entries[3] == {
        "names": [], "key": None, "issuer": None, "not_after": None, "days_left": None,
        "status": "broken: not a valid PEM file", "source": str(files / "broken.pem"),
        "frontends": [], "fingerprint_sha256": None,
    }


def test_list_json_names_the_frontends(files: Files) -> None:
    result = offload_cli("certs", "list", "--json", "-c", str(files / "offload.toml"))
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [entry["frontends"] for entry in entries] == [
        ["web", "api"], ["web"], ["web"], ["web"], ["api"], ["api"]]


def test_check_within_seven_days_reports_each_problem(files: Files) -> None:
    result = offload_cli(
        "certs", "check", "--days", "7", "--cert", str(files / "good.pem"),
        "--cert", str(files / "soon.pem"), "--cert", str(files / "expired.pem"),
        "--cert", str(files / "broken.pem"), "--cert", str(files / "open.pem"),
        "--cert", str(files / "future.pem"), "--cert", str(files / "bundles"),
        "--cert", str(files / "mismatch.pem"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{files / 'soon.pem'}: soon.example.test, www.soon.example.test: expires in 5 days "
        f"({files.date('soon')})",
        f"{files / 'expired.pem'}: old.example.test: expired on {files.date('expired')}",
        f"{files / 'broken.pem'}: broken: not a valid PEM file",
        f"{files / 'open.pem'}: open.example.test: key readable by others (mode 0644)",
        f"{files / 'future.pem'}: future.example.test: not valid before "
        f"{files.issued['future'].certificate.not_valid_before_utc:%Y-%m-%d}",
        f"{files / 'mismatch.pem'}: mismatch.example.test: broken: the private key does not "
        "match the certificate",
    ]


def test_check_within_one_day_passes_a_certificate_expiring_in_five(files: Files) -> None:
    args = ["certs", "check", "--cert", str(files / "rsa.crt"), "--key", str(files / "rsa.key"),
            "--cert", str(files / "good.pem"), "--cert", str(files / "soon.pem")]
    result = offload_cli(*args, "--days", "1")
    assert result.returncode == 0, result.stdout
    assert result.stdout == "all 3 certificates are valid for at least 1 more day\n"
    result = offload_cli(*args, "--days", "7")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{files / 'soon.pem'}: soon.example.test, www.soon.example.test: expires in 5 days "
        f"({files.date('soon')})"]


def test_check_defaults_to_thirty_days(files: Files) -> None:
    result = offload_cli("certs", "check", "--cert", str(files / "good.pem"))
    assert (result.returncode, result.stdout) == (
        0, "the certificate is valid for at least 30 more days\n")
    result = offload_cli("certs", "check", "--cert", str(files / "bundles"))
    assert result.returncode == 1
    assert result.stdout == (f"{files / 'bundles' / 'b.crt'} + {files / 'bundles' / 'b.key'}: "
                             f"b.example.test: expires in 20 days ({files.date('b')})\n")


def test_check_a_configuration(files: Files) -> None:
    result = offload_cli("certs", "check", "--days", "5", "-c", str(files / "offload.toml"))
    assert result.returncode == 0, result.stdout
    assert result.stdout == "all 6 certificates are valid for at least 5 more days\n"


def test_keys_are_checked_by_the_rules_of_run(files: Files, tmp_path: Path) -> None:
    # An encrypted key with no passphrase configured, a readable key allowed on purpose.
    config = tmp_path / "offload.toml"
    config.write_text(f"""
[global]
allow_readable_keys = true

[[frontends]]
name = "web"
bind = "127.0.0.1:8443"
backend = "app"
certificates = ["{files / 'open.pem'}", {{ cert = "{files / 'locked.crt'}", key = "{files / 'locked.key'}" }}]

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]
""")
    result = offload_cli("certs", "list", "-c", str(config), env={"OFFLOAD_TEST_PASS": PASSPHRASE})
    assert result.returncode == 0, result.stderr
    assert [row[5] for row in table(result.stdout)[1:]] == [
        "key readable by others (mode 0644, allowed)", "key encrypted and no passphrase configured"]
    result = offload_cli("certs", "check", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == (f"{files / 'locked.crt'} + {files / 'locked.key'}: "
                             "locked.example.test: key encrypted and no passphrase configured\n")


def test_no_key_material_in_any_output(files: Files) -> None:
    every = [str(files / name) for name in ("expired.pem", "soon.pem", "good.pem", "broken.pem",
                                            "mismatch.pem", "future.pem", "open.pem", "bundles")]
    flags = [part for path in every for part in ("--cert", path)]
    outputs = []
    for args in (["list", *flags], ["list", "--json", *flags], ["check", *flags],
                 ["list", "-c", str(files / "offload.toml")],
                 ["list", "--json", "-c", str(files / "offload.toml")]):
        result = offload_cli("certs", *args, env={"OFFLOAD_TEST_PASS": PASSPHRASE})
        outputs.append(result.stdout + result.stderr)
    for output in outputs:
        assert "PRIVATE KEY" not in output and PASSPHRASE not in output
        for body in files.key_bodies():
            assert body not in output


@pytest.mark.parametrize(("args", "message"), [
    (["list"], "give a configuration file with -c FILE, or certificates with --cert FILE"),
    (["check", "-c", "offload.toml", "--cert", "site.pem"],
     "give either -c FILE or --cert FILE, not both"),
    (["list", "-c", "offload.toml", "--key", "site.key"], "give either -c FILE or --cert FILE"),
    (["list", "--cert", "a.pem", "--key", "a.key", "--key", "b.key"], "more --key than --cert"),
    (["check", "--cert", "a.pem", "--days", "-1"], "--days must be 0 or more"),
    (["check", "--cert", "a.pem", "--days", "soon"], "invalid int value: 'soon'"),
    (["list", "--cert", "a.pem", "--days", "3"], "unrecognized arguments: --days 3"),
    (["check", "--cert", "a.pem", "--json"], "unrecognized arguments: --json"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    result = offload_cli("certs", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_configuration_errors_are_reported_like_other_commands(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[frontends]]\nname = "web"\ncertificate = ["site.pem"]\n')
    result = offload_cli("certs", "list", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith(f"offload: {config}: ")
    assert 'frontends[0].certificate: unknown key\n      fix: did you mean "certificates"?' in (
        result.stderr)
    result = offload_cli("certs", "check", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


def test_many_names_are_shortened_in_the_table_only(tmp_path: Path) -> None:
    names = ["a.example.test", "b.example.test", "c.example.test", "d.example.test", "*.example.test"]
    write_private(tmp_path / "many.pem", Authority("many CA").issue(names).bundle())
    result = offload_cli("certs", "list", "--cert", str(tmp_path / "many.pem"))
    assert table(result.stdout)[1][0] == "a.example.test, b.example.test, c.example.test (+2 more)"
    result = offload_cli("certs", "list", "--json", "--cert", str(tmp_path / "many.pem"))
    assert json.loads(result.stdout)[0]["names"] == names


def test_list_includes_what_acme_has_issued(files: Files, tmp_path: Path) -> None:
    config = tmp_path / "offload.toml"
    base = f"""
[[frontends]]
name = "web"
bind = "127.0.0.1:8443"
backend = "app"
certificates = ["{files / 'good.pem'}"]

[[frontends]]
name = "api"
bind = "127.0.0.1:8444"
backend = "app"
certificates = ["{files / 'good.pem'}"]

[[backends]]
name = "app"
servers = ["127.0.0.1:8080"]

[acme]
agree_to_terms = true
storage = "acme"
frontends = ["api"]

[[acme.certificates]]
names = ["issued.example.test"]
"""
    config.write_text(base)
    before = offload_cli("certs", "list", "-c", str(config))
    assert before.returncode == 0, before.stderr
    assert [row[0] for row in table(before.stdout)[1:]] == ["good.example.test"]
    issued = tmp_path / "acme" / "certificates"
    issued.mkdir(parents=True)
    authority = Authority("offload certs CA")
    write_private(issued / "issued.example.test.pem",
                  authority.issue(["issued.example.test"]).bundle())
    after = offload_cli("certs", "list", "-c", str(config))
    assert after.returncode == 0, after.stderr
    rows = table(after.stdout)[1:]
    assert [(row[0], row[5], row[6], row[7]) for row in rows] == [
        ("good.example.test", "ok", str(files / "good.pem"), "web, api"),
        ("issued.example.test", "ok", str(issued / "issued.example.test.pem"), "api"),
    ]
