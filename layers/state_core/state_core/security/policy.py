"""The role policy: which permissions each role from the token grants.

A JSON file, by default `policy.json` shipped in this package, else the file `STATE_POLICY_FILE` names:

    {"version": 1,
     "roles": {"state-admin": ["state:read", "state:write"],
               "support": ["state:read:user:*"],
               "self-service": ["state:read:user:${sub}:*", "state:write:user:${sub}:*"]}}

Each grant has the grammar of a scope: `state:read` / `state:write`, optionally narrowed to a key pattern
(an exact key, or a prefix ending in `*`, `${sub}` standing for the caller's subject and followed by `:` or
the end of the pattern, as in `principal.py`). The file is checked
completely at load; anything unexpected (an unknown member, a misspelt permission, a pattern no key could
match) makes it invalid, and an invalid policy fails closed: every request is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from state_core.security.principal import GRANT

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.json")
MAX_POLICY_BYTES = 1_000_000


class PolicyError(Exception):
    """The policy file is missing or invalid; every request is refused until it is fixed."""


@dataclass(frozen=True)
class RolePolicy:
    """Roles to grants, as loaded from the policy file."""

    version: Literal[1]
    roles: dict[str, tuple[str, ...]]

    def grants_for(self, roles: Iterable[str]) -> frozenset[str]:
        """The grants (scope-shaped strings) the given roles hold; unknown roles grant nothing."""
        return frozenset(grant for role in roles for grant in self.roles.get(role, ()))


def _shape_errors(document: object) -> list[str]:
    """What keeps `document` from being {"version": 1, "roles": {name: [grant, ...]}}; names no grant's value
    beyond what a reader needs to find it."""
    if not isinstance(document, Mapping):
        return ["policy: must be a JSON object"]
    reasons = [f"{name}: unknown member" for name in sorted(map(str, set(document) - {"version", "roles"}))]
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


def _grant_errors(roles: Mapping[str, list[str]]) -> list[str]:
    for role, grants in roles.items():
        if not role:
            return ["roles: a role name is empty"]
        for grant in grants:
            if not GRANT.match(grant):
                return [
                    f"roles: role {role}: {grant!r} is not state:read|state:write|state:schema[:<key pattern>]"
                    " (${sub} only before ':' or at the end)"
                ]
    return []


def parse_role_policy(document: Mapping[str, object] | object) -> RolePolicy:
    reasons = _shape_errors(document)
    if not reasons:
        roles = cast("Mapping[str, list[str]]", cast("Mapping[str, object]", document)["roles"])  # checked above
        reasons = _grant_errors(roles)
        if not reasons:
            return RolePolicy(version=1, roles={role: tuple(grants) for role, grants in roles.items()})
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
