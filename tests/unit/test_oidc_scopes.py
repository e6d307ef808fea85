"""Scopes per route and method, and claim rules (gateway/auth/oidc/scopes.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.errors import InsufficientScope
from gateway.auth.oidc.scopes import Rule, ScopeCheck, ScopeRules, parse_rule, parse_scope_rules, token_scopes
from gateway.config import ConfigError, Node


def rules(value: dict[str, Any]) -> ScopeRules:
    return parse_scope_rules(Node(value, "gateway.yaml", "routes[0].auth"))


def rule(text: str) -> Rule:
    return parse_rule(Node(text, "gateway.yaml", "routes[0].auth.rules[0]"))


def test_token_scopes_from_scope_or_scp() -> None:
    assert token_scopes({"scope": "a b  c"}) == {"a", "b", "c"}
    assert token_scopes({"scp": ["a", 5, "b"]}) == {"a", "b"}
    assert token_scopes({"scp": "a b"}) == {"a", "b"}
    assert token_scopes({"scope": 5, "scp": ["x"]}) == {"x"}
    assert token_scopes({}) == frozenset()


def test_scopes_per_method() -> None:
    check = ScopeCheck(rules({"scopes": ["orders:read"], "methods": {"POST": "orders:write orders:read",
                                                                      "DELETE": []}}))
    check.check("GET", {"scope": "orders:read"})
    check.check("DELETE", {})  # an empty list: the method needs no scope
    assert check.needed("PUT") == {"orders:read"}
    head = ScopeCheck(rules({"scopes": ["a"], "methods": {"GET": ["b"]}}))
    assert head.needed("HEAD") == {"b"} and head.needed("PUT") == {"a"}
    assert ScopeCheck(rules({"methods": {"GET": ["b"], "HEAD": []}})).needed("HEAD") == frozenset()
    with pytest.raises(InsufficientScope) as info:
        check.check("POST", {"scope": "orders:read"})
    error = info.value
    assert error.status == 403 and error.code == "insufficient_scope"
    assert error.headers == ((b"www-authenticate", b'Bearer realm="gateway", error="insufficient_scope", '
                              b'error_description="the token lacks a scope this request needs", '
                              b'scope="orders:read orders:write"'),)
    check.check("POST", {"scp": ["orders:write", "orders:read"]})
    with pytest.raises(InsufficientScope):
        check.check("GET", {})


@pytest.mark.parametrize(("text", "claims", "holds"), [
    ("groups contains admin", {"groups": ["staff", "admin"]}, True),
    ("groups contains admin", {"groups": "staff admin"}, True),
    ("groups contains admin", {"groups": ["staff"]}, False),
    ("groups contains admin", {"groups": 5}, False),
    ("groups contains admin", {}, False),
    ("role == admin", {"role": "admin"}, True),
    ("role == admin", {"role": ["user", "admin"]}, True),
    ("role == admin", {"role": "user"}, False),
    ("role != admin", {"role": "user"}, True),
    ("role != admin", {"role": "admin"}, False),
    ("role != admin", {}, False),
    ("email_verified == true", {"email_verified": True}, True),
    ("email_verified == true", {"email_verified": 1}, False),
    ("level == 3", {"level": 3}, True),
    ("ratio == 0.5", {"ratio": 0.5}, True),
    ("name == 'Ada Lovelace'", {"name": "Ada Lovelace"}, True),
    ('tier in [gold, "silver"]', {"tier": "silver"}, True),
    ("tier in [gold, silver]", {"tier": "bronze"}, False),
    ("tier in [gold]", {}, False),
    ("email exists", {"email": "a@b"}, True),
    ("email exists", {"email": None}, False),
    ("realm_access.roles contains admin", {"realm_access": {"roles": ["admin"]}}, True),
    ("realm_access.roles contains admin", {"realm_access": ["admin"]}, False),
    ("realm_access.roles contains admin", {"realm_access": {}}, False),
    ("https://example.com/roles contains a", {"https://example.com/roles": ["a"]}, True),
])
def test_rules(text: str, claims: dict[str, Any], holds: bool) -> None:
    assert rule(text).holds(claims) is holds


def test_a_failed_rule_names_the_claim_not_the_value() -> None:
    check = ScopeCheck(rules({"rules": ["groups contains admin", "email exists"]}))
    assert check.default == frozenset()
    check.check("GET", {"groups": ["admin"], "email": "a@b"})
    with pytest.raises(InsufficientScope) as info:
        check.check("GET", {"groups": ["admin"]})
    assert info.value.message == "the token's email claim does not satisfy the route's rule"
    assert b"scope=" not in info.value.headers[0][1]


@pytest.mark.parametrize(("text", "expected"), [
    ("groups has admin", "a rule such as"),
    ("groups", "a rule such as"),
    ("email exists now", '"CLAIM exists" with nothing after it'),
    ("tier in gold", "a list after in"),
    ("tier in [gold, ]", "a value after the operator"),
])
def test_rule_mistakes(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        rule(text)
    assert info.value.path == "routes[0].auth.rules[0]" and expected in info.value.message


def test_empty_and_parsed_rules() -> None:
    assert rules({}).empty
    parsed = rules({"scopes": "a b a", "rules": ["x == 1"]})
    assert not parsed.empty and parsed.scopes == ("a", "b") and parsed.rules[0].values == (1,)
    assert not rules({"methods": {"GET": ["a"]}}).empty
    with pytest.raises(ConfigError):
        rules({"scopes": 5})
