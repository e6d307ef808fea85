"""Choosing between compiled modules and their pure-Python twins (gateway/_fast/__init__.py)."""

from __future__ import annotations

import pytest

import gateway._fast as fast


def test_missing_build_is_an_error_when_extensions_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "NO_EXTENSIONS", False)
    monkeypatch.setattr(fast, "REQUIRE_EXTENSIONS", True)
    monkeypatch.setattr(fast, "ExtensionFileLoader", type(None))  # as if router_c were not built
    with pytest.raises(ImportError, match="not compiled"):
        fast.compiled("router")
    assert fast.compiled("no_such_module") is None  # no compiled build exists: nothing required


def test_missing_build_falls_back_to_the_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "NO_EXTENSIONS", False)
    monkeypatch.setattr(fast, "REQUIRE_EXTENSIONS", False)
    monkeypatch.setattr(fast, "ExtensionFileLoader", type(None))
    assert fast.compiled("router") is None
    assert fast.load("router").__name__ in ("gateway._fast.router_c", "gateway._fast.router_py")


def test_no_extensions_switch_selects_the_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "NO_EXTENSIONS", True)
    assert fast.load("router").__name__ == "gateway._fast.router_py"
    assert set(fast.implementations("protocol")) == {"python"}
