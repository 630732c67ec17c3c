"""The built-in rule sets, as data: small, conservative signatures of common attack probes.

Each set is a tuple of ordinary :class:`RuleConfig` objects (checked like the operators' own)
that a frontend enables by name (``builtin = ["sqli", "xss"]``); the set's action is the rule
set's ``builtin_action``. They are meant to stop scanners and copy-pasted probes, not a
determined attacker, and to stay silent on ordinary traffic, so:

* they never inspect bodies (nothing is held back from the backend) and only inspect headers
  that carry no user text (User-Agent, Cookie);
* SQL and script signatures need the shape of an attack (``union`` followed by ``select``, a
  quote closed before ``or x=x``, a tag name after ``<``), never a lone keyword, so a search
  for "union station" or "select a plan" passes;
* every pattern is linear: no nested quantifiers, and repeated parts are told apart by their
  first character, so a hostile 8 KiB path costs one pass.

Paths and queries are matched as sent, decoded once, and (paths) with dot segments removed
(see :mod:`offload.security.rules`), so one pattern covers ``../`` and ``%2e%2e%2f``; a
double-encoded ``%252e`` decodes once to ``%2e``, which the traversal patterns also match.
"""

from __future__ import annotations

from offload.security.rules_config import BUILTIN_PREFIX, RuleConfig

# A dot-dot segment: "..", or "%2e%2e" left after one decoding (double encoding), between
# separators ("/", "\" or their encodings) or at the end; "..;/" is how Tomcat-style path
# parameters hide one.
_DOT_DOT = r"(?:\.|%2e){2}(?:;[^/\\;]*)?"
_SEP = r"(?:[/\\]|%2f|%5c)"
# SQL whitespace: blanks, "(" or a /* comment */ (each alternative starts differently).
_SQL_GAP = r"(?:[\s(]|/\*[^*]*\*/)+"


def _rule(name: str, description: str, **conditions: object) -> RuleConfig:
    return RuleConfig.model_validate(
        {"name": BUILTIN_PREFIX + name, "action": "deny", "description": description, **conditions})


PATH_TRAVERSAL = (
    _rule("path-traversal",
          "A dot-dot segment in the path. Browsers and HTTP libraries remove these before "
          "sending, so one in a request is a probe for files outside the web root.",
          path=rf"(?i)(?:^|{_SEP}){_DOT_DOT}(?:{_SEP}|$)"),
    _rule("path-traversal-query",
          "Two or more dot-dot levels in the query (a file parameter walking up the tree); a "
          "single ../ is left alone, some applications pass relative links.",
          query=rf"(?i)(?:{_DOT_DOT}{_SEP}){{2}}"),
    _rule("path-sensitive-file",
          "A query value that ends in the path of a well-known system file (local file "
          "inclusion probes); a search for \"etc/passwd file format\" does not fire.",
          query=r"(?i)[/\\](?:etc[/\\](?:passwd|shadow)|proc[/\\]self[/\\]environ"
                r"|win(?:dows|nt)[/\\]win\.ini|boot\.ini)(?:$|[&\x00])"),
    _rule("path-nul",
          "A NUL byte in the path (%00): used to cut a file name short; never in a real path. "
          "Queries are left alone: binary parameters (BitTorrent trackers) carry %00.",
          path=r"\x00"),
)

SQLI = (
    _rule("sqli-union",
          "UNION [ALL|DISTINCT] SELECT in the query, also with comments or parentheses as "
          "blanks. \"union\" or \"select\" alone never fires.",
          query=rf"(?i)\bunion{_SQL_GAP}(?:(?:all|distinct){_SQL_GAP})?select\b"),
    _rule("sqli-tautology",
          "A quote closed, then OR and a comparison of a value with itself (' OR 1=1, "
          "' or 'a'='a): the classic login bypass. Apostrophes in names and text do not fire.",
          query=r"(?i)['\"`][\s)]*(?:or\b|\|\|)[\s(]*(['\"`]?)(\w{1,20})\1\s*(?:=|like\b)\s*\1\2\b"),
    _rule("sqli-probe",
          "Blind-injection timers and catalogue reads: sleep(5), pg_sleep(5), benchmark(, "
          "waitfor delay ', information_schema., @@version, load_file(, into outfile, and a "
          "stacked ; drop table.",
          query=r"(?i)\b(?:(?:pg_)?sleep\(\s*\d+(?:\.\d+)?\s*\)|benchmark\(\s*\d|waitfor\s+delay\s+'"
                r"|information_schema\.|load_file\(|into\s+(?:out|dump)file\b)|@@version\b"
                r"|;\s*(?:drop|truncate)\s+table\b"),
)

_XSS_TAG = r"(?i)<[\s/]*(?:script|iframe|object|embed|applet|svg|base)\b"
XSS = (
    _rule("xss-tag",
          "An executable tag (<script, <iframe, <svg, <object, <embed, <applet, <base) in the "
          "query.",
          query=_XSS_TAG),
    _rule("xss-tag-path",
          "The same tags in the path: scanners test whether error pages echo the path.",
          path=_XSS_TAG),
    _rule("xss-handler",
          "An event-handler attribute (onerror=, onload=, onmouseover=, ...) inside a tag or "
          "right after a closing quote (attribute break-out).",
          query=r"(?i)(?:<[a-z][^<>]*?[\s/\"']|['\"][\s/]*)on(?:error|load|click|focus|blur|toggle"
                r"|begin|mouse[a-z]{2,5}|pointer[a-z]{2,5}|key[a-z]{2,5}|animation[a-z]{3,9})\s*="),
    _rule("xss-script-uri",
          "A query value that starts with javascript: or vbscript: and calls something "
          "(javascript:alert(1)); a search for \"javascript: the good parts\" does not fire.",
          query=r"(?i)(?:^|[=&])\s*(?:java|vb)script\s*:[^&]*\("),
)

SCANNERS = (
    _rule("scanner-user-agent",
          "The default User-Agent of well-known attack and discovery tools. Your own scans with "
          "these tools are denied too: exempt their addresses or use dry_run while scanning.",
          header={"user-agent": r"(?i)\b(?:sqlmap|nikto|nmap scripting engine|masscan|zgrab|nuclei"
                                r"|acunetix|netsparker|wpscan|dirbuster|gobuster|feroxbuster|w3af"
                                r"|havij|openvas|fimap|commix|zmeu|jorgee)\b"}),
)

COOKIES = (
    _rule("cookie-oversized",
          "One cookie (name=value) longer than about 4 KiB: browsers refuse to store those "
          "(RFC 6265 section 6.1), so it was made by hand, to overflow a parser.",
          header={"cookie": r"(?:\A|;)[^;]{4100}"}),
    _rule("cookie-too-many",
          "More than 300 cookies in one Cookie field, beyond what browsers keep per site.",
          header={"cookie": r"\A(?:[^;]*;){300}"}),
    _rule("cookie-control-chars",
          "A control character in a Cookie field: never valid (RFC 6265 section 4.1.1), used "
          "to confuse cookie parsers.",
          header={"cookie": r"[\x00-\x08\x0a-\x1f\x7f]"}),
)

BUILTIN_SETS: tuple[tuple[str, tuple[RuleConfig, ...]], ...] = (
    ("path-traversal", PATH_TRAVERSAL),
    ("sqli", SQLI),
    ("xss", XSS),
    ("scanners", SCANNERS),
    ("cookies", COOKIES),
)


def builtin_set(name: str) -> tuple[RuleConfig, ...]:
    """The rules of the built-in set ``name`` (one of ``BUILTIN_SET_NAMES``)."""
    for set_name, rules in BUILTIN_SETS:
        if set_name == name:
            return rules
    raise KeyError(name)


__all__ = ["BUILTIN_SETS", "builtin_set"]
