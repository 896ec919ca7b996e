"""Issue 13 items 4 and 11: IPv6 forms that embed an IPv4 address are checked by that
address (or refused), and a refused webhook target tells nothing about what it
resolves to."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from bulkjobs.config import Settings
from bulkjobs.service.webhooks.targets import (
    DEFAULT_PORTS,
    FORBIDDEN_DETAIL,
    embedded_ipv4,
    is_forbidden,
    parse_ports,
)
from tests.serverproc import free_port
from tests.support import submit, wait_terminal
from tests.test_hardening_webhooks import RawPeer, reset
from tests.test_webhooks import fake_dns
from tests.webhook_support import random_secret, start_receiver, wait_quiet


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


# -- item 11: refusals and attempt errors tell nothing the peer or DNS said -----------


async def test_forbidden_detail_names_no_address(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"redis.corp.example": ["10.1.2.3"]})
    client = await make_client(webhook_secrets=random_secret())
    webhook = {"url": "https://redis.corp.example/in"}
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "webhook": webhook}
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhook_url_forbidden", body
    assert body["detail"] == FORBIDDEN_DETAIL
    assert "10.1.2.3" not in await resp.text()


BANNER = b"-ERR unknown command 'POST' SECRET-BANNER redis_version:7.2.4\r\n"
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def redis_banner(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(BANNER)
    await w.drain()


async def status_500(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 500 SECRET-BANNER\r\nContent-Length: 13\r\n\r\nSECRET-BANNER")
    await w.drain()


async def hang(r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
    await r.read()  # until the dispatcher gives up and closes


async def _attempt_errors(client: TestClient, url: str) -> tuple[list[dict[str, Any]], bytes]:
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": url})
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    raw = await (await client.get(f"/bulk-jobs/{job['id']}/webhook-deliveries")).read()
    [msg] = orjson.loads(raw)["data"]
    return msg["attempts"], raw


ONE_TRY = {
    "webhook_secrets": random_secret(),
    "webhook_allow_private": True,
    "webhook_retry_schedule_s": "",
    "webhook_timeout_s": 0.5,
}


@pytest.mark.parametrize(
    ("behaviour", "kind", "status"),
    [
        (redis_banner, "bad_response", None),
        (reset, "bad_response", None),
        (hang, "timeout", None),
        (status_500, "http_status", 500),
    ],
)
async def test_attempt_errors_are_classes_without_peer_bytes(
    make_client: Any, behaviour: Behaviour, kind: str, status: int | None
) -> None:
    peer = RawPeer(behaviour)
    url = await peer.start()
    try:
        client = await make_client(**ONE_TRY)
        [attempt], raw = await _attempt_errors(client, url)
    finally:
        await peer.stop()
    assert (attempt["error"], attempt["status_code"]) == (kind, status)
    assert b"SECRET" not in raw and b"redis" not in raw


async def test_refused_connection_is_connect_refused(make_client: Any) -> None:
    client = await make_client(**ONE_TRY)
    [attempt], _ = await _attempt_errors(client, f"http://127.0.0.1:{free_port()}/hook")
    assert (attempt["error"], attempt["status_code"]) == ("connect_refused", None)


async def test_tls_failure_is_tls_error(make_client: Any) -> None:
    async def plain_http(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 400 SECRET-BANNER\r\n\r\n")  # no TLS at all
        await w.drain()
        w.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await make_client(**ONE_TRY)
        [attempt], raw = await _attempt_errors(client, f"https://127.0.0.1:{port}/hook")
    finally:
        server.close()
        await server.wait_closed()
    assert (attempt["error"], attempt["status_code"]) == ("tls_error", None)
    assert b"SECRET" not in raw and b"WRONG_VERSION" not in raw


# -- item 11: the port allowlist -----------------------------------------------------


def test_port_allowlist_setting() -> None:
    assert parse_ports("", allow_private=False) == DEFAULT_PORTS == {80, 443}
    assert parse_ports("", allow_private=True) is None
    assert parse_ports("*", allow_private=False) is None
    assert parse_ports(" 8080, 9090 ", allow_private=False) == {8080, 9090}
    for bad in ("0", "65536", "x", "²", "80;443", "9" * 50):
        with pytest.raises(ValueError):
            parse_ports(bad, allow_private=False)
    with pytest.raises(ValueError):
        Settings(webhook_allowed_ports="redis")


async def test_default_ports_refuse_others_before_any_dns(make_client: Any) -> None:
    client = await make_client(webhook_secrets=random_secret())
    webhook = {"url": "https://no-such-host.invalid:6379/in"}
    resp = await client.post(
        "/bulk-jobs", json={"operation": "echo", "items": [{"n": 1}], "webhook": webhook}
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "webhook_url_forbidden", body
    assert "allowed: 80, 443" in body["detail"]


async def test_configured_ports_are_the_only_ones(
    make_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    receiver = await start_receiver(aiohttp_server)
    port = int(receiver.url.split(":")[2].split("/")[0])
    refused = await make_client(**{**ONE_TRY, "webhook_allowed_ports": str(port + 1)})
    resp = await refused.post(
        "/bulk-jobs",
        json={"operation": "echo", "items": [{"n": 1}], "webhook": {"url": receiver.url}},
    )
    assert resp.status == 422 and (await resp.json())["code"] == "webhook_url_forbidden"
    allowed = await make_client(
        **{**ONE_TRY, "webhook_allowed_ports": f"443,{port}"}, db_path=str(tmp_path / "b.db")
    )
    [attempt], _ = await _attempt_errors(allowed, receiver.url)
    assert (attempt["status_code"], attempt["error"]) == (200, None)
