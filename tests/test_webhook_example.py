"""examples/webhook_receiver.py really verifies what bulkjobs sends."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.support import submit, wait_terminal
from tests.webhook_support import random_secret, wait_quiet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "webhook_receiver.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_receiver_accepts_and_prints(
    make_client: Any, aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    example, secret = load_example(), random_secret()
    receiver = await aiohttp_server(example.make_app(secret))
    client = await make_client(webhook_secrets=secret, webhook_allow_private=True)
    url = str(receiver.make_url("/webhooks"))
    job = await submit(client, "echo", [{"n": 1}, {"n": 2, "fail": "bad"}], webhook={"url": url})
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    resp = await client.get(f"/bulk-jobs/{job['id']}/webhook-deliveries")
    [msg] = (await resp.json())["data"]
    assert msg["status"] == "delivered" and msg["attempts"][0]["status_code"] == 204
    out = capsys.readouterr().out
    assert f"job.completed  {job['id']} echo: completed 2/2 (1 ok, 1 failed" in out


async def test_example_receiver_refuses_a_wrong_secret(
    make_client: Any, aiohttp_server: Any
) -> None:
    example = load_example()
    receiver = await aiohttp_server(example.make_app(random_secret()))
    client = await make_client(webhook_secrets=random_secret(), webhook_allow_private=True)
    url = str(receiver.make_url("/webhooks"))
    job = await submit(client, "echo", [{"n": 1}], webhook={"url": url})
    await wait_terminal(client, job["id"])
    await wait_quiet(client)
    resp = await client.get(f"/bulk-jobs/{job['id']}/webhook-deliveries")
    [msg] = (await resp.json())["data"]
    assert msg["status"] == "failed" and msg["attempts"][0]["status_code"] == 401
