"""From a frontend's ``waf`` settings to what libmodsecurity loads, in order.

The order matters to ModSecurity (rules run in the order they were loaded, per phase)::

    offload's engine settings       SecRuleEngine, body access and limit, body processors
    crs-setup.conf                  the operator's (Debian: /etc/modsecurity/crs/)
    paranoia level and threshold    after crs-setup.conf, so the frontend's values win
    exclusions under a path         SecRule ... ctl:ruleRemove... (before the CRS rules)
    the CRS rules                   REQUEST-900 (Debian's), rules/*.conf, RESPONSE-999
    other exclusions                SecRuleRemoveById / SecRuleUpdateTargetById (after)
    the operator's rule files       ``rules``, in the order given (globs sorted)

offload's own rules use ids 100000-101999 (ModSecurity's range for local rules). A body the
engine cannot parse (malformed JSON, XML or multipart) only sets a flag logged as rule
:data:`BODY_ERROR_RULE`; :mod:`offload.http.waf` refuses it (400) when offload gave the engine
the whole body, and not when it gave only a prefix (a prefix of valid JSON is not valid JSON).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from offload.errors import Issue
from offload.security.waf_config import WafConfig

BODY_ERROR_RULE = 100010
MULTIPART_ERROR_RULE = 100011
EXCLUSION_FIRST_ID = 101000

DEBIAN_CRS = (Path("/etc/modsecurity/crs/crs-setup.conf"), Path("/usr/share/modsecurity-crs/rules"))
"""Where Debian's and Ubuntu's ``modsecurity-crs`` package installs the CRS."""
DEBIAN_BEFORE = Path("/etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf")
DEBIAN_AFTER = Path("/etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf")

CRS_HINT = ("install the OWASP Core Rule Set (Debian/Ubuntu: apt-get install modsecurity-crs), "
            "or set crs to the directory holding crs-setup.conf and rules/")


@dataclass(frozen=True, slots=True)
class WafPlan:
    """What to load, checked to exist; :class:`~offload.security.waf_engine.Engine` loads it."""

    sources: tuple[tuple[str, str], ...]
    crs: str
    """Where the CRS came from ("" when none is loaded), for ``offload check``."""


def engine_directives(config: WafConfig) -> str:
    """offload's engine settings: what ModSecurity's recommended configuration sets, with the
    frontend's mode and body limit."""
    limit = config.request_body_limit
    return "\n".join([
        f"SecRuleEngine {'On' if config.mode == 'block' else 'DetectionOnly'}",
        "SecRequestBodyAccess On",
        f"SecRequestBodyLimit {limit}",
        f"SecRequestBodyNoFilesLimit {limit}",
        "SecRequestBodyLimitAction ProcessPartial",
        f"SecResponseBodyAccess {'Off'}",
        "SecAuditEngine Off",
        "SecArgumentSeparator &",
        "SecCookieFormat 0",
        'SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.+-]+\\+)?json" '
        '"id:100001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"',
        'SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\\+|/)|text/)xml" '
        '"id:100002,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"',
        f'SecRule REQBODY_ERROR "!@eq 0" "id:{BODY_ERROR_RULE},phase:2,t:none,pass,log,'
        "msg:'offload: the request body could not be parsed'\"",
        f'SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:{MULTIPART_ERROR_RULE},phase:2,t:none,'
        "pass,log,msg:'offload: the multipart body is malformed'\"",
    ]) + "\n"


def _levels(config: WafConfig) -> str:
    return (f'SecAction "id:100020,phase:1,nolog,pass,t:none,'
            f'setvar:tx.paranoia_level={config.paranoia_level},'
            f'setvar:tx.inbound_anomaly_score_threshold={config.anomaly_threshold}"\n')


def _exclusions(config: WafConfig) -> tuple[str, str]:
    """The exclusions as directives: (before the CRS rules, after them)."""
    before, after = [], []
    for index, exclusion in enumerate(config.exclusions):
        ids = [str(rule) for rule in exclusion.rules]
        if exclusion.path is not None:
            if exclusion.target is None:
                actions = ",".join(f"ctl:ruleRemoveById={rule}" for rule in ids)
            else:
                actions = ",".join(f"ctl:ruleRemoveTargetById={rule};{exclusion.target}"
                                   for rule in ids)
            before.append(f'SecRule REQUEST_FILENAME "@beginsWith {exclusion.path}" '
                          f'"id:{EXCLUSION_FIRST_ID + index},phase:1,pass,nolog,t:none,'
                          f'{actions}"')
        elif exclusion.target is None:
            after.append("SecRuleRemoveById " + " ".join(ids))
        else:
            after.extend(f'SecRuleUpdateTargetById {rule} "!{exclusion.target}"' for rule in ids)
    return "\n".join(before) + "\n", "\n".join(after) + "\n"


def _find_crs(config: WafConfig, base_dir: Path, where: str
              ) -> tuple[Path | None, list[Path], str, list[Issue]]:
    """The CRS's setup file, its rule files and where they came from."""
    if config.crs == "auto":
        setup, rules_dir = DEBIAN_CRS
        if not setup.is_file() or not rules_dir.is_dir():
            return None, [], "", [Issue(f"{where}.crs", "no OWASP Core Rule Set found (looked "
                                        f"for {setup} and {rules_dir})", CRS_HINT)]
        return setup, sorted(rules_dir.glob("*.conf")), str(rules_dir.parent), []
    directory = base_dir / config.crs
    setup_candidates = [directory / "crs-setup.conf", directory / "crs-setup.conf.example"]
    setup_found = next((path for path in setup_candidates if path.is_file()), None)
    rules = sorted((directory / "rules").glob("*.conf"))
    if setup_found is None or not rules:
        return None, [], "", [Issue(f"{where}.crs", f"{directory} does not hold the OWASP Core "
                                    "Rule Set (crs-setup.conf and rules/*.conf)", CRS_HINT)]
    return setup_found, rules, str(directory), []


def plan_waf(config: WafConfig, base_dir: Path, where: str) -> tuple[WafPlan | None, list[Issue]]:
    """What to load for ``config`` (``where``: its key path), or the issues found."""
    issues: list[Issue] = []
    sources: list[tuple[str, str]] = [("text", engine_directives(config))]
    crs = ""
    before, after = _exclusions(config)
    if config.crs != "none":
        setup, rules, crs, problems = _find_crs(config, base_dir, where)
        issues.extend(problems)
        if setup is not None:
            sources.append(("file", str(setup)))
            sources.append(("text", _levels(config)))
            sources.append(("text", before))
            if config.crs == "auto" and DEBIAN_BEFORE.is_file():
                sources.append(("file", str(DEBIAN_BEFORE)))
            sources.extend(("file", str(path)) for path in rules)
            if config.crs == "auto" and DEBIAN_AFTER.is_file():
                sources.append(("file", str(DEBIAN_AFTER)))
    else:
        sources.append(("text", before))
    sources.append(("text", after))
    for index, pattern in enumerate(config.rules):
        full = str(base_dir / pattern)
        found = sorted(glob.glob(full)) if glob.has_magic(full) else (
            [full] if Path(full).is_file() else [])
        if not found:
            issues.append(Issue(f"{where}.rules[{index}]", f"no rule file matches {full}",
                                "name an existing file (relative to the configuration file) "
                                "or a glob like \"waf/*.conf\""))
        sources.extend(("file", path) for path in found)
    if issues:
        return None, issues
    return WafPlan(tuple(sources), crs), []


__all__ = ["BODY_ERROR_RULE", "CRS_HINT", "MULTIPART_ERROR_RULE", "WafPlan", "engine_directives",
           "plan_waf"]
