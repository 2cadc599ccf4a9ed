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
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from state_core.security.principal import GRANT

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.json")
MAX_POLICY_BYTES = 1_000_000


class PolicyError(Exception):
    """The policy file is missing or invalid; every request is refused until it is fixed."""


class RolePolicy(BaseModel):
    """Roles to grants, as loaded from the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    roles: dict[str, tuple[str, ...]]

    @field_validator("roles")
    @classmethod
    def _grants_are_scopes(cls, roles: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for role, grants in roles.items():
            if not role:
                raise ValueError("a role name is empty")
            for grant in grants:
                if not GRANT.match(grant):
                    raise ValueError(
                        f"role {role}: {grant!r} is not state:read|state:write[:<key pattern>]"
                        " (${sub} only before ':' or at the end)"
                    )
        return roles

    def grants_for(self, roles: Iterable[str]) -> frozenset[str]:
        """The grants (scope-shaped strings) the given roles hold; unknown roles grant nothing."""
        return frozenset(grant for role in roles for grant in self.roles.get(role, ()))


def parse_role_policy(document: Mapping[str, object] | object) -> RolePolicy:
    try:
        return RolePolicy.model_validate(document)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'policy'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise PolicyError(f"invalid role policy: {reasons}") from exc


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
