"""DNS discovery: A/AAAA records of a name (each address a target on the configured port) or SRV records
(host, port and weight per record), resolved with dnspython's asyncio resolver.

Each answer carries its TTL; the next resolution is due when the shortest TTL in the answer runs out,
kept between ``min_refresh`` (a TTL of 0 must not turn into a busy loop) and ``max_refresh`` (a long TTL
must not hide a change for hours). SRV: records of the lowest priority are the targets, the others backup
targets; a record's weight (0-65535) becomes the target's weight, bounded to 1-1000; each SRV host is
resolved to its addresses (from the answer's additional section when the server sent them). A failed
resolution (timeout, NXDOMAIN, no records, server failure) keeps the last good answer and is tried again
after a back-off that doubles from ``min_refresh`` up to 30 s (or ``max_refresh`` when lower).
"""

from __future__ import annotations

import asyncio
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.upstreams.discovery.config import DnsSpec, Found
from gateway.upstreams.discovery.watcher import Watcher, backoff


class DnsError(Exception):
    """A resolution that gave no usable answer."""


def make_resolver(spec: DnsSpec) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not spec.nameservers)
    if spec.nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in spec.nameservers]
    resolver.timeout = resolver.lifetime = spec.timeout
    return resolver


def url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


class DnsWatcher(Watcher):
    spec: DnsSpec

    async def run(self) -> None:
        resolver: dns.asyncresolver.Resolver | None = None
        failures = 0
        while True:
            try:
                resolver = resolver or self.resolver()
                found, ttl = await self.resolve(resolver)
            except DnsError as exc:
                failures += 1
                self.bad(str(exc))
                delay = backoff(failures, self.spec.min_refresh, min(30.0, self.spec.max_refresh))
            else:
                failures = 0
                self.good(found)
                delay = min(max(ttl, self.spec.min_refresh), self.spec.max_refresh)
            await asyncio.sleep(self.wait_after(delay))

    def resolver(self) -> dns.asyncresolver.Resolver:
        try:
            return make_resolver(self.spec)
        except dns.exception.DNSException as exc:  # no nameserver given and no usable /etc/resolv.conf
            raise DnsError(f"no resolver: {exc}") from None

    async def resolve(self, resolver: dns.asyncresolver.Resolver) -> tuple[tuple[Found, ...], float]:
        """The targets and the answer's shortest TTL (raises DnsError)."""
        if self.spec.srv:
            return await self.resolve_srv(resolver)
        addresses, ttl = await self.addresses(resolver, self.spec.name, None)
        return tuple(Found(url(a, self.spec.port)) for a in addresses), ttl

    async def addresses(self, resolver: dns.asyncresolver.Resolver, name: str,
                        additional: dict[tuple[str, str], Any] | None) -> tuple[list[str], float]:
        """``name``'s addresses of the configured families, with the shortest TTL."""
        types = {"both": ("A", "AAAA"), "ipv4": ("A",), "ipv6": ("AAAA",)}[self.spec.family]
        if additional is not None and any((name, t) in additional for t in types):
            rrsets = [additional[(name, t)] for t in types if (name, t) in additional]
            return [r.address for rrset in rrsets for r in rrset], min(float(r.ttl) for r in rrsets)
        answers = await asyncio.gather(*(self.query(resolver, name, t, empty_ok=len(types) > 1) for t in types))
        found = [a for a in answers if a is not None]
        if not found:
            raise DnsError(f"{name}: no {'/'.join(types)} records")
        return ([r.address for answer in found for r in answer], min(float(a.rrset.ttl) for a in found))

    async def query(self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: str,
                    empty_ok: bool = False) -> Any:
        """The answer, or None when the name exists without records of this type and ``empty_ok``."""
        try:
            return await resolver.resolve(dns.name.from_text(name), rdtype, search=False)
        except dns.resolver.NoAnswer:
            if empty_ok:
                return None
            raise DnsError(f"{name}: no {rdtype} records") from None
        except dns.resolver.NXDOMAIN:
            raise DnsError(f"{name}: no such name (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise DnsError(f"{name} {rdtype}: no answer within {self.spec.timeout:g}s") from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name} {rdtype}: {exc}") from None

    async def resolve_srv(self, resolver: dns.asyncresolver.Resolver) -> tuple[tuple[Found, ...], float]:
        answer = await self.query(resolver, self.spec.srv, "SRV")
        records = [r for r in answer if r.target != dns.name.root]  # "." means: no service here
        if not records:
            raise DnsError(f"{self.spec.srv}: the SRV records say the service is not available")
        additional: dict[tuple[str, str], Any] = {
            (rrset.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rrset.rdtype)): rrset
            for rrset in answer.response.additional
        }
        ttl = float(answer.rrset.ttl)
        hosts = [r.target.to_text(omit_final_dot=True).lower() for r in records]
        resolved = await asyncio.gather(*(self.addresses(resolver, h, additional) for h in hosts),
                                        return_exceptions=True)
        usable, errors = [], []
        for record, result in zip(records, resolved, strict=True):
            if isinstance(result, DnsError):
                errors.append(str(result))
            elif isinstance(result, BaseException):  # pragma: no cover - a bug, not an answer
                raise result
            else:
                usable.append((record, result[0]))
                ttl = min(ttl, result[1])
        if not usable:
            raise DnsError(f"{self.spec.srv}: no SRV host resolved ({'; '.join(errors)})")
        first = min(record.priority for record, _ in usable)  # the best priority that resolved
        found = [Found(url(a, record.port), max(1, min(1000, record.weight)), record.priority != first)
                 for record, addresses in usable for a in addresses]
        return tuple(found), ttl
