"""The role policy: which permissions each role from the token grants.

A JSON file, by default `policy.json` shipped in this package, else the file `STATE_POLICY_FILE` names:

    {"version": 1,
     "roles": {"state-admin": ["state:read", "state:write"],
               "support": ["state:read:user:*"],
               "self-service": ["state:read:user:${sub}:*", "state:write:user:${sub}:*"]},
     "sensitive": ["secret:*", "billing:card"]}

Each grant has the grammar of a scope: `state:read` / `state:write`, optionally narrowed to a key pattern
(an exact key, or a prefix ending in `*`, `${sub}` standing for the caller's subject and followed by `:` or
the end of the pattern, as in `principal.py`). An optional `approvals` section protects keys (approvals.md):

    "approvals": [{"pattern": "flags:prod:*", "approvals": 2, "expires_after_seconds": 604800}]

a write to a key a rule's pattern matches becomes a proposal that `approvals` other subjects holding
`state:approve` on the key must approve within `expires_after_seconds` (default 7 days). A pattern has the
grants' language; `${sub}` in it stands for any one key segment, whoever writes (a rule that followed the
writer's subject would protect `user:alice:limits` from alice and not from an administrator). A key several
rules match takes the strictest: the most approvals, the shortest life. `sensitive` (optional) lists the
key patterns whose values are encrypted (security/envelope.py): an exact key, a prefix ending in `*`, or `*`.
The file is checked
completely at load; anything unexpected (an unknown member, a misspelt permission, a pattern no key could
match) makes it invalid, and an invalid policy fails closed: every request is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from state_core.domain.keys import MAX_KEY_LENGTH
from state_core.security.principal import GRANT

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.json")
_MEMBERS = {"version", "roles", "approvals", "sensitive"}
# A sensitive-values pattern: the grants' key patterns without `${sub}` (sensitivity is the key's, not the caller's).
SENSITIVE_PATTERN = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.:-]*\*?|\*)\Z")
MAX_POLICY_BYTES = 1_000_000
DEFAULT_PROPOSAL_SECONDS = 7 * 86_400
MAX_PROPOSAL_SECONDS = 90 * 86_400
MAX_REQUIRED_APPROVALS = 20
_RULE_MEMBERS = {"pattern", "approvals", "expires_after_seconds"}
# A rule's pattern: the grants' pattern language (a key, a prefix ending in `*`, `${sub}` as a whole segment).
_RULE_PATTERN = re.compile(r"((?:[A-Za-z0-9_.:-]|\$\{sub\}(?=:|\Z))+\*?|\*)\Z")
# `${sub}` in a rule: any one key segment.
_ANY_SEGMENT = "[A-Za-z0-9_.-]+"


class PolicyError(Exception):
    """The policy file is missing or invalid; every request is refused until it is fixed."""


@dataclass(frozen=True)
class ApprovalRule:
    """What protects a key: how many approvals a change needs, and how long a proposal lives."""

    approvals: int
    expires_after_seconds: int = DEFAULT_PROPOSAL_SECONDS


@dataclass(frozen=True)
class _CompiledRule:
    pattern: str
    matcher: re.Pattern[str]
    rule: ApprovalRule


@dataclass(frozen=True)
class RolePolicy:
    """Roles to grants, and the protected keys' approval rules, as loaded from the policy file."""

    version: Literal[1]
    roles: dict[str, tuple[str, ...]]
    approvals: tuple[_CompiledRule, ...] = ()
    # Key patterns whose values are sealed (security/envelope.py): an exact key, a prefix ending in `*`, or `*`.
    sensitive: tuple[str, ...] = ()

    def grants_for(self, roles: Iterable[str]) -> frozenset[str]:
        """The grants (scope-shaped strings) the given roles hold; unknown roles grant nothing."""
        return frozenset(grant for role in roles for grant in self.roles.get(role, ()))

    def approval_rule(self, key: str) -> ApprovalRule | None:
        """The strictest rule protecting `key`, or None: an unprotected key costs a few regex matches in
        memory, no I/O."""
        matched = [compiled.rule for compiled in self.approvals if compiled.matcher.match(key)]
        if not matched:
            return None
        return ApprovalRule(
            approvals=max(rule.approvals for rule in matched),
            expires_after_seconds=min(rule.expires_after_seconds for rule in matched),
        )

    @property
    def protects_any_key(self) -> bool:
        return bool(self.approvals)


def _compile(pattern: str) -> re.Pattern[str]:
    wildcard = pattern.endswith("*")
    body = pattern[:-1] if wildcard else pattern
    regex = _ANY_SEGMENT.join(re.escape(part) for part in body.split("${sub}"))
    return re.compile(regex if wildcard else regex + r"\Z")


def _approval_rules(raw: object) -> tuple[list[_CompiledRule], list[str]]:
    if not isinstance(raw, list):
        return [], ["approvals: must be a list of rules"]
    rules: list[_CompiledRule] = []
    for index, entry in enumerate(raw):
        where = f"approvals[{index}]"
        if not isinstance(entry, Mapping):
            return [], [f"{where}: must be an object"]
        unknown = sorted(map(str, set(entry) - _RULE_MEMBERS))
        if unknown:
            return [], [f"{where}: unknown member {unknown[0]}"]
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or len(pattern) > MAX_KEY_LENGTH or not _RULE_PATTERN.match(pattern):
            return [], [
                f"{where}.pattern: not a key pattern (a key, or a prefix ending in *; ${{sub}} a whole segment)"
            ]
        required = entry.get("approvals")
        if type(required) is not int or not 1 <= required <= MAX_REQUIRED_APPROVALS:
            return [], [f"{where}.approvals: must be a whole number from 1 to {MAX_REQUIRED_APPROVALS}"]
        lifetime = entry.get("expires_after_seconds", DEFAULT_PROPOSAL_SECONDS)
        if type(lifetime) is not int or not 1 <= lifetime <= MAX_PROPOSAL_SECONDS:
            return [], [f"{where}.expires_after_seconds: must be a whole number from 1 to {MAX_PROPOSAL_SECONDS}"]
        rules.append(_CompiledRule(pattern, _compile(pattern), ApprovalRule(required, lifetime)))
    return rules, []


def _shape_errors(document: object) -> list[str]:
    """What keeps `document` from being {"version": 1, "roles": {name: [grant, ...]}}; names no grant's value
    beyond what a reader needs to find it."""
    if not isinstance(document, Mapping):
        return ["policy: must be a JSON object"]
    reasons = [f"{name}: unknown member" for name in sorted(map(str, set(document) - _MEMBERS))]
    version = document.get("version")
    if type(version) is not int or version != 1:
        reasons.append("version: must be 1")
    roles = document.get("roles")
    if not isinstance(roles, Mapping):
        return [*reasons, "roles: must be an object of role names to lists of grants"]
    for role, grants in roles.items():
        if not isinstance(grants, list) or not all(isinstance(grant, str) for grant in grants):
            reasons.append(f"roles: role {role}: must be a list of grant strings")
    return reasons


def _sensitive_errors(document: Mapping[str, object]) -> list[str]:
    patterns = document.get("sensitive", [])
    if not isinstance(patterns, list) or not all(isinstance(pattern, str) for pattern in patterns):
        return ["sensitive: must be a list of key patterns"]
    for pattern in patterns:
        if not SENSITIVE_PATTERN.match(pattern):
            # A pattern that matches nothing would leave values in plaintext that someone meant to protect.
            return [f"sensitive: {pattern!r} is not a key, a key prefix ending in '*', or '*'"]
    return []


def _grant_errors(roles: Mapping[str, list[str]]) -> list[str]:
    for role, grants in roles.items():
        if not role:
            return ["roles: a role name is empty"]
        for grant in grants:
            if not GRANT.match(grant):
                return [
                    f"roles: role {role}: {grant!r} is not"
                    " state:read|state:write|state:schema|state:approve|state:write:override[:<key pattern>]"
                    " (${sub} only before ':' or at the end)"
                ]
    return []


def parse_role_policy(document: Mapping[str, object] | object) -> RolePolicy:
    reasons = _shape_errors(document)
    if not reasons:
        roles = cast("Mapping[str, list[str]]", cast("Mapping[str, object]", document)["roles"])  # checked above
        reasons = _grant_errors(roles) + _sensitive_errors(cast("Mapping[str, object]", document))
        rules: list[_CompiledRule] = []
        if not reasons and "approvals" in cast("Mapping[str, object]", document):
            rules, reasons = _approval_rules(cast("Mapping[str, object]", document)["approvals"])
        if not reasons:
            sensitive = cast("list[str]", cast("Mapping[str, object]", document).get("sensitive", []))
            return RolePolicy(
                version=1,
                roles={role: tuple(grants) for role, grants in roles.items()},
                approvals=tuple(rules),
                sensitive=tuple(sensitive),
            )
    raise PolicyError(f"invalid role policy: {'; '.join(reasons)}")


def load_role_policy(path: str | Path) -> RolePolicy:
    """The policy in `path`, validated; PolicyError names the file and what is wrong with it."""
    try:
        raw = Path(path).read_bytes()
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"role policy {path} is over {MAX_POLICY_BYTES} bytes")
        document = json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PolicyError(f"role policy {path} cannot be read as JSON: {type(exc).__name__}: {exc}") from exc
    try:
        return parse_role_policy(document)
    except PolicyError as exc:
        raise PolicyError(f"role policy {path}: {exc}") from exc
