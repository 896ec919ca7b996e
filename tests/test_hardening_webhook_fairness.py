"""Issue 13 item 5 (webhooks): one tenant's slow receivers cannot take every delivery
slot. The per-host cap counts a host name on every port, and with API keys each tenant
has at most `--webhook-concurrency-per-tenant` deliveries in flight."""

from __future__ import annotations

from typing import Any

import pytest

from bulkjobs.config import Settings
from bulkjobs.security import hash_key
from bulkjobs.service.webhooks import DispatcherConfig
from tests.support import submit, wait_terminal
from tests.webhook_support import HANG, random_secret, start_receiver

pytestmark = pytest.mark.timeout(60)

ACME, GLOBEX = "bjk_acme-fair-hooks-0001", "bjk_globex-fair-hooks-0002"
KEYS = f"acme:sha256:{hash_key(ACME)},globex:sha256:{hash_key(GLOBEX)}"


async def _submit(client: Any, key: str, url: str) -> None:
    resp = await client.post(
        "/bulk-jobs",
        json={"operation": "echo", "items": [{"n": 1}], "webhook": {"url": url}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 202, await resp.text()
    await wait_terminal(client, (await resp.json())["id"])


async def test_a_tenants_hung_receivers_leave_slots_for_others(
    make_client: Any, aiohttp_server: Any
) -> None:
    slow = await start_receiver(aiohttp_server)
    slow.always = HANG
    fast = await start_receiver(aiohttp_server)
    try:
        client = await make_client(
            api_keys=KEYS,
            webhook_secrets=random_secret(),
            webhook_allow_private=True,
            webhook_concurrency=4,  # 2 per host name, 2 per tenant
            webhook_timeout_s=30,
        )
        # acme's receivers: one server under two host names (2 per host each), which
        # without a tenant cap hold all 4 slots for webhook_timeout_s
        other_name = slow.url.replace("127.0.0.1", "localhost")
        for url in (slow.url, other_name, slow.url, other_name):
            await _submit(client, ACME, url)
        for _ in range(2):
            await slow.next(timeout_s=5)
        await _submit(client, GLOBEX, fast.url)
        received = await fast.next(timeout_s=5)  # not after acme's 30 s timeouts
        assert b'"tenant":"globex"' in received.body
        assert len(slow.log) == 2  # acme holds its 2 slots, no more
    finally:
        slow.release.set()


def test_caps_from_settings() -> None:
    def config(**kw: Any) -> DispatcherConfig:
        return DispatcherConfig.from_settings(Settings(**kw))

    assert config(webhook_concurrency=16).per_tenant is None  # open mode: one tenant
    assert config(webhook_concurrency=16, api_keys=KEYS).per_tenant == 8
    keyed = config(webhook_concurrency=16, api_keys=KEYS, webhook_concurrency_per_tenant=3)
    assert (keyed.per_tenant, keyed.per_host) == (3, 8)


async def test_two_ports_of_one_host_share_its_slots(make_client: Any, aiohttp_server: Any) -> None:
    ports = [await start_receiver(aiohttp_server) for _ in range(2)]
    for receiver in ports:
        receiver.always = HANG
    other = await start_receiver(aiohttp_server)
    try:
        client = await make_client(
            webhook_secrets=random_secret(),
            webhook_allow_private=True,
            webhook_concurrency=4,  # 2 per host name
            webhook_timeout_s=30,
        )
        for receiver in (*ports, *ports):
            await submit(client, "echo", [{"n": 1}], webhook={"url": receiver.url})
        await ports[0].next(timeout_s=5)
        await submit(
            client, "echo", [{"n": 2}], webhook={"url": other.url.replace("127.0.0.1", "localhost")}
        )
        await other.next(timeout_s=5)  # a free slot, not after 30 s
        assert len(ports[0].log) + len(ports[1].log) == 2
    finally:
        for receiver in ports:
            receiver.release.set()
