"""Who is calling and what they may do: the principal the authorizer put in the request
context, and RBAC by permission and key pattern, enforced on the validated key.

A grant is a scope `state:read` / `state:write` / `state:schema` / `state:approve` (every key) or
`state:read:<pattern>` / `state:write:<pattern>` / `state:schema:<pattern>` / `state:approve:<pattern>`, or the
break-glass `state:write:override[:<pattern>]` (approvals.md), where a pattern is an exact key or a prefix
ending in `*`, and `${sub}` stands for the caller's subject as one whole segment: followed by `:` or the end of
the pattern.
A subject that is not one key segment (empty, too long, holding `:`, `*` or any character a key cannot hold)
expands to nothing, so a `${sub}` grant grants it nothing; one subject's keys can then never be a prefix of
another's.
Grants come from the token's scopes and from its roles, mapped by the role policy (`policy.py`); both
must have the grammar below, or they grant nothing (the policy refuses to load).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import Forbidden, InvalidKey, Unauthenticated
from state_core.domain.keys import is_key_segment, validate_key
from state_core.domain.listing import KeyRange

if TYPE_CHECKING:
    from state_core.security.policy import RolePolicy

READ = "state:read"
WRITE = "state:write"
# Publishing value schemas (service.schemas) for the keys a pattern grants.
SCHEMA = "state:schema"
# Approving or rejecting proposed changes of protected keys (service/approvals.py).
APPROVE = "state:approve"
# Break glass: writing a protected key directly, without a proposal. `state:write:override[:<pattern>]` is
# this permission, never a write grant on a key named `override`.
OVERRIDE = "state:write:override"
_SUB = "${sub}"
# A grant: key characters and `${sub}` (only before `:` or at the end, so `user:${sub}*` is no grant),
# optionally ending in `*`; or `*` alone.
GRANT = re.compile(r"state:(read|write|schema|approve)(:((?:[A-Za-z0-9_.:-]|\$\{sub\}(?=:|\Z))+\*?|\*))?\Z")


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    roles: tuple[str, ...] = ()

    @classmethod
    def from_authorizer_context(cls, context: Mapping[str, Any] | None) -> Principal:
        """The principal from the authorizer's simple-response context: `sub`, `scopes` (space-separated)
        and `roles` (a JSON array). A request without it never passed the authorizer and is refused."""
        if not context or not isinstance(context.get("sub"), str) or not context["sub"]:
            raise Unauthenticated("the request carries no authorizer context")
        roles_text = context.get("roles") or "[]"
        try:
            roles = json.loads(roles_text)
        except (TypeError, ValueError):
            roles = []
        return cls(
            subject=context["sub"],
            scopes=frozenset(str(context.get("scopes") or "").split()),
            roles=tuple(role for role in roles if isinstance(role, str)) if isinstance(roles, list) else (),
        )

    def grants(self, policy: RolePolicy | None = None) -> frozenset[str]:
        """Scopes from the token plus what its roles grant under `policy`."""
        return self.scopes | policy.grants_for(self.roles) if policy is not None else self.scopes

    def patterns_for(self, permission: str, policy: RolePolicy | None = None) -> list[str]:
        """The key patterns this principal holds `permission` on ("*" for every key). A token's scope that
        is not a well-formed grant (`state:read:user:${sub}*`, `state:read:a*b`) holds nothing."""
        patterns = []
        for scope in self.grants(policy):
            if not GRANT.match(scope):
                continue
            if permission == WRITE and (scope == OVERRIDE or scope.startswith(OVERRIDE + ":")):
                continue  # the break-glass permission is not a grant to write a key named `override`
            if scope == permission:
                patterns.append("*")
            elif scope.startswith(permission + ":"):
                patterns.append(scope[len(permission) + 1 :])
        return patterns

    def allows(self, permission: str, key: str, policy: RolePolicy | None = None) -> bool:
        return any(_matches(pattern, key, self.subject) for pattern in self.patterns_for(permission, policy))

    def ranges_under(self, permission: str, prefix: str, policy: RolePolicy | None = None) -> list[KeyRange]:
        """The key ranges under `prefix` this principal holds `permission` on, disjoint and in key order; empty
        when its grants cover no key under `prefix`. A grant narrower than the prefix narrows the range
        (`user:alice:*` under `user:` is the range of `user:alice:`), an exact-key grant is that one key, a
        grant wider than the prefix covers all of it. The empty prefix is covered only by a grant on every
        key: listing everything is for full-access callers alone."""
        covered: set[tuple[str, bool]] = set()
        for pattern in self.patterns_for(permission, policy):
            if _SUB in pattern:
                if not is_key_segment(self.subject):
                    continue
                pattern = pattern.replace(_SUB, self.subject)
            if pattern.endswith("*"):
                granted = pattern[:-1]
                if granted.startswith(prefix):
                    covered.add((granted, False))
                elif prefix.startswith(granted):
                    covered.add((prefix, False))
            elif pattern.startswith(prefix) and _is_key(pattern):
                covered.add((pattern, True))
        if prefix == "" and ("", False) not in covered:
            return []
        wider = [start for start, exact in covered if not exact]
        kept = [
            (start, exact)
            for start, exact in covered
            if not any(start.startswith(other) and (exact or other != start) for other in wider)
        ]
        return sorted(KeyRange.key(start) if exact else KeyRange.prefix(start) for start, exact in kept)

    def allows_every_key_under(self, permission: str, prefix: str, policy: RolePolicy | None = None) -> bool:
        """Whether `permission` covers every key that starts with `prefix` (a watch of a prefix): only a
        wildcard grant whose pattern, `${sub}` expanded, is a prefix of it; an exact-key grant never does."""
        for pattern in self.patterns_for(permission, policy):
            if _SUB in pattern:
                if not is_key_segment(self.subject):
                    continue
                pattern = pattern.replace(_SUB, self.subject)
            if pattern.endswith("*") and prefix.startswith(pattern[:-1]):
                return True
        return False

    def allows_pattern(self, permission: str, pattern: str, policy: RolePolicy | None = None) -> bool:
        """Whether `permission` covers every key a schema pattern (a key, or a prefix ending in `*`) matches."""
        if pattern.endswith("*"):
            return self.allows_every_key_under(permission, pattern[:-1], policy)
        return self.allows(permission, pattern, policy)

    def allows_some_key_of(self, permission: str, pattern: str, policy: RolePolicy | None = None) -> bool:
        """Whether `permission` covers at least one key a schema pattern matches."""
        if pattern.endswith("*"):
            return bool(self.ranges_under(permission, pattern[:-1], policy))
        return self.allows(permission, pattern, policy)


def _is_key(text: str) -> bool:
    try:
        validate_key(text)
    except InvalidKey:
        return False
    return True


def _matches(pattern: str, key: str, subject: str) -> bool:
    if _SUB in pattern:
        if not is_key_segment(subject):
            return False
        pattern = pattern.replace(_SUB, subject)
    if pattern.endswith("*"):
        return key.startswith(pattern[:-1])
    return key == pattern


def authorize(principal: Principal, permission: str, key: str, policy: RolePolicy | None = None) -> None:
    """Raise Forbidden (403) unless `principal` holds `permission` on `key` (by scope or by role)."""
    if not principal.allows(permission, key, policy):
        raise Forbidden(f"{permission} is not granted on key {key}")
