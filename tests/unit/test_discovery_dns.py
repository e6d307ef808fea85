"""DNS discovery's resolution rules against a small real DNS server in the test's event loop (UDP on
loopback, answers built with dnspython): A/AAAA per family, SRV with priorities, weights and additional
records, NXDOMAIN, empty answers, a server that never answers, and the refresh timing from the TTL.
(The end-to-end test with dnsmasq is tests/integration/test_discovery_dns.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway.upstreams.discovery.config import DnsSpec, Found
from gateway.upstreams.discovery.dns import DnsError, DnsWatcher, make_resolver, url
from tests.unit.helpers import async_test


class Zone(asyncio.DatagramProtocol):
    """Answers from ``records``: (name, type) -> (ttl, [rdata text]); unknown names get NXDOMAIN, names in
    ``silent`` no answer at all, names in ``failing`` SERVFAIL; ``additional`` rides along with SRV."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.additional: dict[str, list[tuple[str, str, int, list[str]]]] = {}
        self.silent: set[str] = set()
        self.failing: set[str] = set()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype)
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        if name in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            ttl, texts = self.records[(name, rdtype)]
            response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, texts))
            for extra_name, extra_type, extra_ttl, extra_texts in self.additional.get(name, ()):
                response.additional.append(dns.rrset.from_text_list(extra_name + ".", extra_ttl, "IN", extra_type,
                                                                    extra_texts))
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


@asynccontextmanager
async def zone() -> AsyncIterator[tuple[Zone, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Zone, local_addr=("127.0.0.1", 0))
    try:
        yield protocol, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def watcher(server: int, **fields: Any) -> DnsWatcher:
    spec = DnsSpec(nameservers=(("127.0.0.1", server),), timeout=0.3, **fields)
    return DnsWatcher("api", spec, lambda name: None)


async def resolve(w: DnsWatcher) -> tuple[tuple[Found, ...], float]:
    return await w.resolve(make_resolver(w.spec))


def test_urls() -> None:
    assert url("10.0.0.1", 8080) == "http://10.0.0.1:8080"
    assert url("::1", 80) == "http://[::1]"


@async_test
async def test_a_and_aaaa_records_by_family() -> None:
    async with zone() as (records, port):
        records.records[("api.internal", "A")] = (30, ["10.0.0.1", "10.0.0.2"])
        records.records[("api.internal", "AAAA")] = (10, ["fd00::1"])
        records.records[("v4.internal", "A")] = (5, ["10.0.0.9"])
        found, ttl = await resolve(watcher(port, name="api.internal", port=8080))
        assert set(found) == {Found("http://10.0.0.1:8080"), Found("http://10.0.0.2:8080"),
                              Found("http://[fd00::1]:8080")}
        assert ttl == 10  # the shortest TTL in the answer
        found, ttl = await resolve(watcher(port, name="api.internal", port=80, family="ipv4"))
        assert set(found) == {Found("http://10.0.0.1"), Found("http://10.0.0.2")} and ttl == 30
        found, _ = await resolve(watcher(port, name="v4.internal", port=80))  # no AAAA: the A records do
        assert found == (Found("http://10.0.0.9"),)
        with pytest.raises(DnsError, match=r"v4\.internal: no AAAA records"):
            await resolve(watcher(port, name="v4.internal", port=80, family="ipv6"))
        records.records[("empty.internal", "TXT")] = (5, ['"x"'])
        with pytest.raises(DnsError, match=r"empty\.internal: no A/AAAA records"):
            await resolve(watcher(port, name="empty.internal", port=80))
        with pytest.raises(DnsError, match=r"missing.internal: no such name \(NXDOMAIN\)"):
            await resolve(watcher(port, name="missing.internal", port=80))
        records.silent.add("slow.internal")
        with pytest.raises(DnsError, match=r"slow\.internal A: no answer within 0\.3s"):
            await resolve(watcher(port, name="slow.internal", port=80, family="ipv4"))
        records.failing.add("broken.internal")
        with pytest.raises(DnsError, match=r"broken\.internal A: .*SERVFAIL"):
            await resolve(watcher(port, name="broken.internal", port=80, family="ipv4"))


@async_test
async def test_srv_records() -> None:
    async with zone() as (records, port):
        records.records[("_http._tcp.api", "SRV")] = (60, ["1 10 8080 a.internal.", "1 5000 8081 b.internal.",
                                                           "2 0 9090 c.internal."])
        records.additional["_http._tcp.api"] = [("a.internal", "A", 20, ["10.0.0.1"])]
        records.records[("b.internal", "A")] = (40, ["10.0.0.2"])
        records.records[("c.internal", "A")] = (40, ["10.0.0.3"])
        found, ttl = await resolve(watcher(port, srv="_http._tcp.api", family="ipv4"))
        assert set(found) == {Found("http://10.0.0.1:8080", 10), Found("http://10.0.0.2:8081", 1000),
                              Found("http://10.0.0.3:9090", 1, backup=True)}
        assert ttl == 20
        records.records[("b.internal", "A")] = (40, [])
        del records.additional["_http._tcp.api"]
        records.silent.add("a.internal")  # priority 1 does not resolve: priority 2 is the best that does
        found, _ = await resolve(watcher(port, srv="_http._tcp.api", family="ipv4"))
        assert found == (Found("http://10.0.0.3:9090", 1),)
        records.silent.add("c.internal")
        with pytest.raises(DnsError, match="no SRV host resolved"):
            await resolve(watcher(port, srv="_http._tcp.api", family="ipv4"))
        records.records[("_http._tcp.none", "SRV")] = (60, ["0 0 0 ."])
        with pytest.raises(DnsError, match="the service is not available"):
            await resolve(watcher(port, srv="_http._tcp.none"))
        records.records[("_http._tcp.txt", "TXT")] = (60, ['"x"'])
        with pytest.raises(DnsError, match=r"_http\._tcp\.txt: no SRV records"):
            await resolve(watcher(port, srv="_http._tcp.txt"))


@async_test
async def test_the_next_resolution_follows_the_ttl_within_bounds_and_backs_off_on_failure() -> None:
    async with zone() as (records, port):
        records.records[("api.internal", "A")] = (0, ["10.0.0.1"])
        w = watcher(port, name="api.internal", port=80, family="ipv4", min_refresh=0.05, max_refresh=0.2)
        w.start()
        await asyncio.wait_for(w.answered.wait(), 5)
        assert w.state == "ok" and w.next_refresh is not None and w.last_refresh is not None
        assert w.next_refresh - w.last_refresh == pytest.approx(0.05, abs=0.02)  # TTL 0: min_refresh
        records.records[("api.internal", "A")] = (3600, ["10.0.0.2"])
        await asyncio.wait_for(_until(lambda: w.found == (Found("http://10.0.0.2"),)), 5)
        assert w.next_refresh - w.last_refresh == pytest.approx(0.2, abs=0.02)  # a long TTL: max_refresh
        records.silent.add("api.internal")
        await asyncio.wait_for(_until(lambda: w.state == "failing"), 5)
        await asyncio.wait_for(_until(lambda: w.refreshes["failure"] >= 2), 5)
        assert w.found == (Found("http://10.0.0.2"),)  # the last good answer stays
        w.close()
        await w.wait_closed()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


@async_test
async def test_no_usable_resolver_configuration_is_a_failed_refresh(monkeypatch: Any) -> None:
    import dns.resolver

    from gateway.upstreams.discovery import dns as module

    def unconfigured(spec: DnsSpec) -> Any:
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(module, "make_resolver", unconfigured)
    w = DnsWatcher("api", DnsSpec(name="api.internal", port=80, min_refresh=0.05), lambda name: None)
    w.start()
    await asyncio.wait_for(w.answered.wait(), 5)
    assert w.state == "failing" and "no resolver: no nameservers" in (w.error or "")
    w.close()
    await w.wait_closed()
