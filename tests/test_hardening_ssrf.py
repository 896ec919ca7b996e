"""Issue 13 items 4 and 11: IPv6 forms that embed an IPv4 address are checked by that
address (or refused), and a refused webhook target tells nothing about what it
resolves to."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from bulkjobs.service.webhooks.targets import embedded_ipv4, is_forbidden
from tests.webhook_support import random_secret


def teredo(server: str, client: str) -> str:
    """A Teredo address (RFC 4380): prefix, server, flags, port, obfuscated client."""
    obfuscated = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    prefix = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    return str(ipaddress.IPv6Address(prefix | (0x8000_63BF << 32) | obfuscated))


#: (form, an address embedding an internal IPv4, the same form embedding a public one)
EMBEDDING = [
    ("nat64", "64:ff9b::7f00:1", "64:ff9b::808:808"),
    ("6to4", "2002:a00:1::1", "2002:808:808::1"),
    ("teredo-client", teredo("65.54.227.120", "10.0.0.1"), teredo("65.54.227.120", "8.8.8.8")),
    ("teredo-server", teredo("192.168.1.1", "8.8.8.8"), teredo("65.54.227.120", "1.1.1.1")),
    ("ipv4-compatible", "::a9fe:a9fe", "::808:808"),
    ("siit", "::ffff:0:7f00:1", "::ffff:0:808:808"),
    ("mapped", "::ffff:169.254.169.254", "::ffff:8.8.8.8"),
]
#: Refused whatever they embed.
REFUSED = [("nat64-local-use", "64:ff9b:1::808:808"), ("site-local", "fec0::1")]


@pytest.mark.parametrize(("form", "internal", "public"), EMBEDDING, ids=[e[0] for e in EMBEDDING])
def test_embedded_ipv4_is_what_gets_checked(form: str, internal: str, public: str) -> None:
    inner = embedded_ipv4(ipaddress.IPv6Address(internal))
    assert inner and any(not a.is_global for a in inner), form
    assert is_forbidden(ipaddress.ip_address(internal))
    assert not is_forbidden(ipaddress.ip_address(public))


@pytest.mark.parametrize(("form", "addr"), REFUSED, ids=[r[0] for r in REFUSED])
def test_local_ipv6_forms_are_refused(form: str, addr: str) -> None:
    assert is_forbidden(ipaddress.ip_address(addr)), form


@pytest.mark.parametrize(
    "addr",
    [e[1] for e in EMBEDDING] + [r[1] for r in REFUSED],
    ids=[e[0] for e in EMBEDDING] + [r[0] for r in REFUSED],
)
async def test_submit_refuses_each_form(make_client: Any, addr: str) -> None:
    client = await make_client(webhook_secrets=random_secret())
    webhook = {"url": f"https://[{addr}]/hook"}
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "webhook": webhook}
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhook_url_forbidden", body
