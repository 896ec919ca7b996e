"""Issue 13 item 2: with API keys, each tenant's webhooks are signed with secrets of its
own (derived from the server's), and the payload names the tenant; a tenant that can
verify its own messages cannot forge another's. Open mode signs as before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bulkjobs.cli import main
from bulkjobs.security import hash_key
from bulkjobs.signing import parse_secrets, tenant_secrets
from tests.support import wait_terminal
from tests.webhook_support import random_secret, start_receiver, verify

ACME, GLOBEX = "bjk_acme-webhook-key-0001", "bjk_globex-webhook-key-0002"
KEYS = f"acme:sha256:{hash_key(ACME)},globex:sha256:{hash_key(GLOBEX)}"
OLD, NEW = random_secret(), random_secret()


def secrets_of(tenant: str, server_secrets: str) -> list[str]:
    return tenant_secrets(parse_secrets(server_secrets), tenant)


async def _delivered(client: Any, receiver: Any, key: str | None) -> tuple[Any, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.post(
        "/bulk-jobs",
        json={"operation": "echo", "items": [{"n": 1}], "webhook": {"url": receiver.url}},
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    await wait_terminal(client, job["id"])
    received = await receiver.next()
    return received, orjson.loads(received.body)


async def test_each_tenant_verifies_only_its_own(make_client: Any, aiohttp_server: Any) -> None:
    receiver = await start_receiver(aiohttp_server)
    client = await make_client(api_keys=KEYS, webhook_secrets=NEW, webhook_allow_private=True)
    acme, globex = secrets_of("acme", NEW), secrets_of("globex", NEW)
    assert acme != globex
    for key, tenant, own, other in ((ACME, "acme", acme, globex), (GLOBEX, "globex", globex, acme)):
        msg, body = await _delivered(client, receiver, key)
        assert body["tenant"] == tenant and body["type"] == "job.completed"
        assert verify(own[0], msg.headers, msg.body)
        assert not verify(other[0], msg.headers, msg.body)
        assert not verify(NEW, msg.headers, msg.body)  # the server's secret is not shared


async def test_rotation_rotates_every_tenant(make_client: Any, aiohttp_server: Any) -> None:
    receiver = await start_receiver(aiohttp_server)
    both = f"{NEW} {OLD}"
    client = await make_client(api_keys=KEYS, webhook_secrets=both, webhook_allow_private=True)
    msg, _ = await _delivered(client, receiver, ACME)
    new_acme, old_acme = secrets_of("acme", both)
    assert verify(new_acme, msg.headers, msg.body) and verify(old_acme, msg.headers, msg.body)
    assert secrets_of("acme", OLD) == [old_acme]  # a receiver on the old one keeps working
    assert len(msg.headers["webhook-signature"].split(" ")) == 2


async def test_open_mode_signs_with_the_server_secret(
    make_client: Any, aiohttp_server: Any
) -> None:
    receiver = await start_receiver(aiohttp_server)
    client = await make_client(webhook_secrets=NEW, webhook_allow_private=True)
    msg, body = await _delivered(client, receiver, None)
    assert body["tenant"] == "default"
    assert verify(NEW, msg.headers, msg.body)


def test_cli_prints_a_tenants_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BULKJOBS_WEBHOOK_SECRETS", f"{NEW},{OLD}")
    monkeypatch.setenv("BULKJOBS_API_KEYS", KEYS)
    assert main(["webhook-secret", "acme"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == secrets_of("acme", f"{NEW} {OLD}") and err == ""
    assert main(["webhook-secret", "not a tenant!"]) == 2
    monkeypatch.delenv("BULKJOBS_WEBHOOK_SECRETS")
    assert main(["webhook-secret", "acme"]) == 2
    assert "BULKJOBS_WEBHOOK_SECRETS is not set" in capsys.readouterr().err
