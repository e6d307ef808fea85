"""A scripted browser for login flows: a cookie jar, redirects followed one hop at a time (each hop kept in
``history`` so a test can inspect the authorization request, the callback, ...), and the providers' login
forms (oidc-provider's development form, Django's login form) filled in and submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.oidc.providers import PASSWORD, USER


@dataclass
class Form:
    action: str
    method: str
    inputs: list[dict[str, str]] = field(default_factory=list)

    def has_password(self) -> bool:
        return any(field.get("type") == "password" for field in self.inputs)


class FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "get").lower()))
        elif tag in ("input", "button") and self.forms and values.get("name"):
            self.forms[-1].inputs.append(values)


def forms(html: str) -> list[Form]:
    parser = FormParser()
    parser.feed(html)
    return parser.forms


def query(url: str) -> dict[str, str]:
    """The query parameters of a URL (the first value of each)."""
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


class Browser:
    """See the module docstring. ``headers`` go with every request (Accept: text/html by default)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(follow_redirects=False, timeout=20,
                                   headers=headers or {"accept": "text/html,application/xhtml+xml"})
        self.history: list[httpx.Response] = []

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        self.history.append(response)
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def follow(self, response: httpx.Response, stop: str | None = None, max_hops: int = 20) -> httpx.Response:
        """Follows redirects from ``response``; returns the first answer that is no redirect, or the redirect
        whose target starts with ``stop`` (not followed)."""
        for _ in range(max_hops):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urljoin(str(response.url), response.headers["location"])
            if stop is not None and target.startswith(stop):
                return response
            response = self.get(target)
        raise AssertionError(f"more than {max_hops} redirects")

    def submit_login(self, page: httpx.Response, username: str = USER, password: str = PASSWORD) -> httpx.Response:
        """Fills in and submits the login form on ``page`` (the first form with a password field)."""
        form = next((f for f in forms(page.text) if f.has_password()), None)
        assert form is not None, f"no login form at {page.url}: {page.status_code} {page.text[:300]}"
        data: dict[str, str] = {}
        for item in form.inputs:
            kind, name = item.get("type", "text"), item["name"]
            if kind == "password":
                data[name] = password
            elif kind in ("text", "email") and not item.get("value"):
                data[name] = username
            elif kind not in ("submit", "button") and item.get("value") is not None:
                data[name] = item.get("value", "")
        target = urljoin(str(page.url), form.action or str(page.url))
        return self.request("POST", target, data=data, headers={"referer": str(page.url)})

    def submit_form(self, page: httpx.Response, **values: str) -> httpx.Response:
        """Submits the page's first form: its hidden fields, ``values`` on top (e.g. a confirmation button's
        name and value)."""
        found = forms(page.text)
        assert found, f"no form at {page.url}: {page.status_code} {page.text[:300]}"
        form = found[0]
        data = {item["name"]: item.get("value", "") for item in form.inputs if item.get("type") == "hidden"}
        data.update(values)
        target = urljoin(str(page.url), form.action or str(page.url))
        if form.method == "get":
            return self.get(target, params=data)
        return self.request("POST", target, data=data, headers={"referer": str(page.url)})

    def login(self, start: str, stop: str | None = None, username: str = USER,
              password: str = PASSWORD) -> httpx.Response:
        """GET ``start`` (a protected page or the login path), follow redirects to the provider's login
        form, submit it, follow redirects back; the last response (or the redirect to ``stop``)."""
        page = self.follow(self.get(start), stop)
        if stop is not None and page.is_redirect:
            return page
        if any(f.has_password() for f in forms(page.text)):
            page = self.follow(self.submit_login(page, username, password), stop)
        return page
