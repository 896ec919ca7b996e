"""The events-token secret lives in the store: a token issued before a restart opens
the stream after it, as it would on another process sharing the store (issue 10)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.test_auth import KEYS, acme_job


async def test_a_token_survives_a_restart(make_client: Any) -> None:
    first: TestClient = await make_client(api_keys=KEYS)
    job = await acme_job(first)
    events = job["links"]["events"]
    assert "?token=" in events
    await first.close()  # the app stops: engine, store and all

    second: TestClient = await make_client(api_keys=KEYS)  # same database file
    resp = await second.get(events)  # no Authorization header, like EventSource
    assert resp.status == 200, await resp.text()
    assert "event: snapshot" in await resp.text()
