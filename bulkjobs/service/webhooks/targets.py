"""Where webhooks may go: URL rules and the address check that keeps them off
internal networks (SSRF).

The address check runs at submit and again at every delivery, and the delivery
session resolves names through `GuardedResolver`, which applies the same check to
the addresses it actually connects to, so a DNS answer that changes after the
check (rebinding) cannot reach an internal host either.

A refusal never says what a name resolved to (that would make the check a DNS oracle
for internal names); the operator's log does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from typing import Any

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
DNS_TIMEOUT_S = 5.0
#: Ports webhooks may use when private targets are not allowed and none are configured.
DEFAULT_PORTS = frozenset({80, 443})
FORBIDDEN_DETAIL = "The webhook URL's host is not a public address."

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenTarget(OSError):
    """The target resolves to an address webhooks may not reach (the message names none)."""


def parse_ports(text: str, allow_private: bool) -> frozenset[int] | None:
    """The ports webhooks may use, None for any: a comma list, `*`, or empty for the
    default (80 and 443; any port when private targets are allowed)."""
    text = text.strip()
    if text == "*" or (not text and allow_private):
        return None
    if not text:
        return DEFAULT_PORTS
    ports = set()
    for token in re.split(r"[\s,]+", text):
        if not token:
            continue
        if not (token.isascii() and token.isdigit() and len(token) <= 5 and 0 < int(token) < 65536):
            raise ValueError(f"webhook ports must be numbers from 1 to 65535 or '*', got {token!r}")
        ports.add(int(token))
    return frozenset(ports)


def port_problem(url: str, ports: frozenset[int] | None) -> str | None:
    """Why `url`'s port may not be used (None when it may); the URL is already valid."""
    if ports is None or URL(url).port in ports:
        return None
    allowed = ", ".join(str(p) for p in sorted(ports))
    return f"The webhook URL's port is not allowed on this server (allowed: {allowed})."


def url_problem(text: Any) -> str | None:
    """Why `text` is not an acceptable webhook URL, or None when it is."""
    if not isinstance(text, str) or not text:
        return "must be a non-empty string"
    if len(text) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        url = URL(text)
    except ValueError:
        return "is not a valid URL"
    if url.scheme not in ("http", "https") or not url.is_absolute():
        return "must be an absolute http or https URL"
    if url.user is not None or url.password is not None or "@" in (url.raw_authority or ""):
        return "must not contain credentials"
    if not url.host:
        return "must name a host"
    return None


_NET = ipaddress.IPv6Network
#: IPv6 forms that carry an IPv4 address in their last 32 bits: a translator or the
#: host's own stack may reach that IPv4 address, so it is the one to check.
_LAST_32_BITS_IPV4 = (
    _NET("::ffff:0:0/96"),  # IPv4-mapped
    _NET("::ffff:0:0:0/96"),  # SIIT, IPv4-translated (RFC 6145)
    _NET("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    _NET("::/96"),  # IPv4-compatible (deprecated, RFC 4291); also :: and ::1
)
#: Refused outright: the embedded IPv4 address cannot be located, or the scope is local.
_REFUSED_V6 = (
    _NET("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): any prefix length inside
    _NET("fec0::/10"),  # site-local (deprecated, RFC 3879)
)
_GLOBAL_UNICAST_V6 = _NET("2000::/3")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (6to4, Teredo, NAT64, SIIT...)."""
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)  # (server, client): the client is the real peer
    for net in _LAST_32_BITS_IPV4:
        if addr in net:
            return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    return []


def is_forbidden(addr: IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, unspecified and other non-public,
    including IPv6 addresses that embed such an IPv4 address."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner:
            return any(is_forbidden(v4) for v4 in inner)
        if addr not in _GLOBAL_UNICAST_V6 or any(addr in net for net in _REFUSED_V6):
            return True
    return addr.is_multicast or not addr.is_global


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (through the loop's getaddrinfo)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DNS_TIMEOUT_S):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_target(url: str, allow_private: bool) -> None:
    """Raise `ForbiddenTarget` when `url`'s host resolves to a non-public address.

    Resolution failures propagate as `OSError` (`socket.gaierror`) or `TimeoutError`.
    """
    parsed = URL(url)
    addrs = await resolve(parsed.raw_host or "", parsed.port or 0)
    _refuse_forbidden(parsed.raw_host or "", addrs, allow_private)


def _refuse_forbidden(host: str, addrs: list[IPAddress], allow_private: bool) -> None:
    if allow_private:
        return
    for addr in addrs:
        if is_forbidden(addr):
            logger.info("webhook target %s refused: it resolves to %s", host, addr)
            raise ForbiddenTarget("not a public address")


class GuardedResolver(ThreadedResolver):
    """A resolver that refuses names resolving to addresses webhooks may not reach."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        addrs = [ipaddress.ip_address(r["host"].split("%", 1)[0]) for r in results]
        _refuse_forbidden(host, addrs, self._allow_private)
        return results
