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
from typing import Any, ClassVar, Literal

from state_core.security.principal import GRANT

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.json")
MAX_POLICY_BYTES = 1_000_000


class PolicyError(Exception):
    """The policy file is missing or invalid; every request is refused until it is fixed."""


# A dataclass that pydantic validates (parse_role_policy), not a pydantic model: the handlers import this
# module, and only the first request that loads the policy pays for pydantic.
@dataclass(frozen=True)
class RolePolicy:
    """Roles to grants, as loaded from the policy file."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    version: Literal[1]
    roles: dict[str, tuple[str, ...]]

    def grants_for(self, roles: Iterable[str]) -> frozenset[str]:
        """The grants (scope-shaped strings) the given roles hold; unknown roles grant nothing."""
        return frozenset(grant for role in roles for grant in self.roles.get(role, ()))


def _grant_errors(roles: dict[str, tuple[str, ...]]) -> list[str]:
    for role, grants in roles.items():
        if not role:
            return ["roles: a role name is empty"]
        for grant in grants:
            if not GRANT.match(grant):
                return [
                    f"roles: role {role}: {grant!r} is not state:read|state:write[:<key pattern>]"
                    " (${sub} only before ':' or at the end)"
                ]
    return []


def parse_role_policy(document: Mapping[str, object] | object) -> RolePolicy:
    from pydantic import TypeAdapter, ValidationError

    try:
        policy = TypeAdapter(RolePolicy).validate_python(document)
    except ValidationError as exc:
        reasons = [
            f"{'.'.join(str(part) for part in error['loc']) or 'policy'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
    else:
        reasons = _grant_errors(policy.roles)
        if not reasons:
            return policy
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
