"""A route's scope and claim rules: which OAuth scopes a token must hold, per method, and rules on claims.

```yaml
routes:
  - prefix: /orders
    upstream: api
    auth:
      provider: corp                   # tokens of this provider only (JWT, or opaque: introspected)
      scopes: [orders:read]            # every method needs these ...
      methods: {POST: [orders:write], DELETE: [orders:admin]}   # ... except those listed here
      rules: ["groups contains admin", "email_verified == true"]
```

A token's scopes are its ``scope`` claim (a space-separated string, RFC 8693 / RFC 9068 / RFC 7662) or
its ``scp`` claim (a list or a string, as some providers write it). A method listed under ``methods``
needs its own list *instead of* ``scopes`` (so a write can need only ``orders:write``); methods not listed
need ``scopes`` (HEAD, unless listed, needs what GET needs). Missing scopes: 403 with
``WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`` naming every scope the method needs
(RFC 6750 section 3).

Rules, one string each, all must hold (403 ``insufficient_scope`` otherwise, naming the rule's claim but
never its value)::

    CLAIM contains VALUE      the claim is a list holding VALUE (or a space-separated string with it)
    CLAIM == VALUE            equal (a list claim: holds it); CLAIM != VALUE: the opposite
    CLAIM in [V1, V2]         the claim's value is one of these
    CLAIM exists              the claim is present and not null

``CLAIM`` may be a dotted path into nested objects (``realm_access.roles``). ``VALUE`` is a number,
``true``/``false``, a quoted string or a bare word. Everything is parsed and checked at load; a request
costs a few set and equality checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.auth.errors import InsufficientScope, challenge
from gateway.config import ConfigError, Node

SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")  # RFC 6749 section 3.3
METHOD = re.compile(r"^[A-Z]+\Z")
_RULE = re.compile(r"^\s*(?P<claim>[\x21-\x7e]+?)\s+(?P<op>contains|==|!=|in|exists)(?:\s+(?P<value>.+?))?\s*\Z")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?\Z")
Scalar = str | int | float | bool
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Rule:
    """One claim rule, parsed."""

    text: str
    claim: str
    op: str
    values: tuple[Scalar, ...] = ()

    def holds(self, claims: dict[str, Any]) -> bool:
        value = claim_at(claims, self.claim)
        if self.op == "exists":
            return value is not _MISSING and value is not None
        if value is _MISSING:
            return False
        if self.op == "contains":
            held = value.split() if isinstance(value, str) else value
            return isinstance(held, list) and any(_same(item, self.values[0]) for item in held)
        if self.op == "in":
            return any(_same(value, want) for want in self.values)
        equal = any(_same(item, self.values[0]) for item in value) if isinstance(value, list) \
            else _same(value, self.values[0])
        return equal if self.op == "==" else not equal


@dataclass(frozen=True, slots=True)
class ScopeRules:
    """A route's scopes (for every method, and per method) and its claim rules."""

    scopes: tuple[str, ...] = ()
    methods: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rules: tuple[Rule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.scopes and not self.methods and not self.rules


class ScopeCheck:
    """The rules applied to a verified token's claims (built once per route)."""

    __slots__ = ("by_method", "default", "errors", "rules")

    def __init__(self, rules: ScopeRules) -> None:
        self.default = frozenset(rules.scopes)
        self.by_method = {method: frozenset(scopes) for method, scopes in rules.methods}
        if "GET" in self.by_method:  # a HEAD is a GET without the body: it needs what GET needs
            self.by_method.setdefault("HEAD", self.by_method["GET"])
        self.rules = rules.rules
        # the 403s, made once: one per distinct set of needed scopes
        self.errors = {needed: _scope_challenge(needed) for needed in {self.default, *self.by_method.values()}}

    def needed(self, method: str) -> frozenset[str]:
        return self.by_method.get(method, self.default)

    def check(self, method: str, claims: dict[str, Any]) -> None:
        """Raises InsufficientScope when the token lacks a scope the method needs or fails a rule."""
        needed = self.by_method.get(method, self.default)
        if needed and not needed <= token_scopes(claims):
            error = InsufficientScope("the token lacks a scope this request needs")
            error.headers = self.errors[needed]
            raise error
        for rule in self.rules:
            if not rule.holds(claims):
                raise InsufficientScope(f"the token's {rule.claim} claim does not satisfy the route's rule")


def _scope_challenge(needed: frozenset[str]) -> tuple[tuple[bytes, bytes], ...]:
    """``Bearer ..., error="insufficient_scope", scope="a b"`` (RFC 6750 section 3)."""
    ((name, value),) = challenge("insufficient_scope", "the token lacks a scope this request needs")
    if needed:
        value += b', scope="' + " ".join(sorted(needed)).encode("ascii") + b'"'
    return ((name, value),)


def token_scopes(claims: dict[str, Any]) -> frozenset[str]:
    """The scopes a token holds: ``scope`` (space-separated) or ``scp`` (list or string)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def claim_at(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path (a name that is itself a key wins); ``_MISSING`` if absent."""
    value = claims.get(name, _MISSING)
    if value is not _MISSING or "." not in name:
        return value
    current: Any = claims
    for part in name.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _same(actual: Any, expected: Scalar) -> bool:
    return actual == expected and isinstance(actual, bool) == isinstance(expected, bool)


# --- reading the config -----------------------------------------------------------------------------


def parse_scope_rules(node: Node) -> ScopeRules:
    """Reads ``scopes``, ``methods`` and ``rules`` of a route's ``auth:`` mapping."""
    methods: list[tuple[str, tuple[str, ...]]] = []
    for method, child in node.child("methods").mapping(optional=True).items():
        if not METHOD.match(method):
            raise ConfigError(child.source, child.path, "expected an HTTP method in capitals, such as POST")
        methods.append((method, parse_scopes(child)))
    rules_node = node.child("rules")
    rules = tuple(parse_rule(entry) for entry in rules_node.elements(optional=True))
    return ScopeRules(parse_scopes(node.child("scopes")), tuple(methods), rules)


def parse_scopes(node: Node) -> tuple[str, ...]:
    if node.missing:
        return ()
    scopes = node.string().split() if isinstance(node.value, str) else [e.string() for e in node.elements()]
    for scope in scopes:
        if not SCOPE_TOKEN.match(scope):
            node.fail("scope names without spaces, quotes or backslashes, such as orders:read")
    return tuple(dict.fromkeys(scopes))


def parse_rule(node: Node) -> Rule:
    text: str = node.string()
    match = _RULE.match(text)
    if match is None:
        node.fail('a rule such as "groups contains admin", "role == admin", "tier in [gold, silver]" or '
                  '"email exists"')
    claim, op, raw = match.group("claim"), match.group("op"), match.group("value")
    if (op == "exists") != (raw is None):
        node.fail('"CLAIM exists" with nothing after it, or "CLAIM OP VALUE" for contains, ==, != and in')
    if raw is None:
        return Rule(text, claim, op)
    if op == "in":
        if not (raw.startswith("[") and raw.endswith("]")):
            node.fail('a list after in, such as "tier in [gold, silver]"')
        values = tuple(_value(part.strip(), node) for part in raw[1:-1].split(","))
        return Rule(text, claim, op, values)
    return Rule(text, claim, op, (_value(raw, node),))


def _value(raw: str, node: Node) -> Scalar:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if not raw:
        node.fail("a value after the operator")
    if raw in ("true", "false"):
        return raw == "true"
    if _NUMBER.match(raw):
        return float(raw) if "." in raw else int(raw)
    return raw
