"""PostgreSQL twins of the SQLite-only contract tests, and what only a shared database
needs: opening never takes other processes' leases, concurrent migrations, concurrent
claimers never overlap and respect concurrency limits, the database's lease clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bulkjobs import states
from bulkjobs.models import JobStatus
from bulkjobs.store import ChunkResult, OperationLimits, open_store
from bulkjobs.store.postgres import PostgresStore, redact
from bulkjobs.store.postgres_work import transition
from tests.test_store_contract import NOW, claim, new_job, ok


def _store(url: str, clock: str = "caller") -> PostgresStore:
    return PostgresStore(url, pool_size=4, lease_clock=clock)  # type: ignore[arg-type]


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = _store(pg_url)
    await s.open()
    yield s
    await s.close()


async def test_open_store_picks_postgres_for_a_url(pg_url: str) -> None:
    store = open_store(pg_url, synchronous="FULL", busy_timeout_ms=5)
    assert isinstance(store, PostgresStore)
    assert len(await store.open()) == 32
    await store.close()


def test_the_password_never_shows() -> None:
    url = "postgresql://app:s3cret@db.example:5432/jobs"
    assert "s3cret" not in redact(url) and redact(url).startswith("postgresql://app:***@")
    assert "s3cret" not in repr(PostgresStore(url))
    assert redact("postgresql://app@db/jobs") == "postgresql://app@db/jobs"


async def test_reopen_keeps_other_owners_leases(pg_url: str) -> None:
    """Several processes share the database: opening must not take anyone's lease."""
    a = _store(pg_url)
    await a.open()
    await new_job(a, 4)
    first = await claim(a, "a", lease_s=5)
    assert first.lease is not None
    b = _store(pg_url)
    await b.open()
    try:
        assert (await claim(b, "b", at=timedelta(seconds=1))).lease is None
        again = await claim(b, "b", at=timedelta(seconds=6))  # expired: anyone claims it
        assert again.lease is not None and again.lease.pk == first.lease.pk
    finally:
        await a.close()
        await b.close()


async def test_events_secret_survives_a_restart(pg_url: str) -> None:
    store = _store(pg_url)
    first = await store.open()
    await store.close()
    second = await store.open()
    await store.close()
    assert first == second and len(first) == 32


async def test_processes_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = [_store(pg_url) for _ in range(4)]
    secrets = await asyncio.gather(*(s.open() for s in stores))
    try:
        assert len(set(secrets)) == 1
        assert isinstance(await new_job(stores[0], 1), object)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_every_transition_is_guarded(pg: PostgresStore) -> None:
    """The SQL guard refuses exactly what the state machine forbids (PostgreSQL)."""
    job = await new_job(pg, 1)
    for current, target in itertools.product(JobStatus, JobStatus):
        async with pg._conn() as db:
            await db.execute("UPDATE jobs SET status = $1 WHERE pk = $2", current.value, job.pk)
            if states.allowed(current, target):
                moved = await transition(db, job.pk, target, 0)
                assert moved.status is target
            else:
                with pytest.raises(states.IllegalTransition):
                    await transition(db, job.pk, target, 0)
                status = await db.fetchval("SELECT status FROM jobs WHERE pk = $1", job.pk)
                assert status == current.value, (current, target)


async def test_concurrent_claimers_never_share_an_item(pg: PostgresStore) -> None:
    jobs = [await new_job(pg, 50, tenant=t) for t in ("A", "B", "A")]
    seen: list[tuple[int, int]] = []

    async def worker(owner: str) -> None:
        while (got := await claim(pg, owner)).lease is not None:
            lease = got.lease
            seen.extend((lease.job.pk, w.index) for w in lease.items)
            outcomes = [ok(lease.job, w.index) for w in lease.items]
            await pg.complete(owner, [ChunkResult(lease.pk, lease.job.pk, outcomes, True)], NOW)

    await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    assert len(seen) == len(set(seen)) == 150
    for job in jobs:
        found = (await pg.find_job(job.id)).job
        assert found is not None and found.status is JobStatus.COMPLETED
        assert found.succeeded == 50


async def test_a_concurrency_limit_holds_across_claimers(pg: PostgresStore) -> None:
    limits = {"one": OperationLimits(2, concurrency=1)}
    for _ in range(3):
        await new_job(pg, 10, op="one")
    got = await asyncio.gather(*(pg.claim(f"o{i}", limits, lease_s=30, now=NOW) for i in range(6)))
    assert sum(c.lease is not None for c in got) == 1


async def test_leases_follow_the_database_clock(pg_url: str) -> None:
    store = _store(pg_url, clock="database")
    await store.open()
    try:
        await new_job(store, 4)
        first = await claim(store, "a", lease_s=2)
        assert first.lease is not None
        # The caller's clock says an hour went by; the database's says it did not.
        assert (await claim(store, "b", at=timedelta(hours=1))).lease is None
        await asyncio.sleep(2.1)  # the database clock has to move: nothing to await instead
        again = await claim(store, "b")
        assert again.lease is not None and again.lease.pk == first.lease.pk
    finally:
        await store.close()


async def test_a_large_job_is_copied_in(pg: PostgresStore) -> None:
    job = await new_job(pg, 50_000)
    items = await pg.list_items(job.pk, status=None, after_index=49_997, limit=10)
    assert [i.idx for i in items] == [49_998, 49_999]


async def test_stats_count_a_tenants_backlog_and_stored_items(pg: PostgresStore) -> None:
    """The per-tenant caps' figures, as SQLite computes them."""
    await new_job(pg, 10, tenant="A")
    done = await new_job(pg, 4, tenant="A")
    await new_job(pg, 5, tenant="B")
    await pg.stop(done.pk, JobStatus.CANCELLED, NOW)
    stats = await pg.stats("A")
    assert (stats.tenant_backlog_items, stats.tenant_stored_items) == (10, 14)
    assert stats.backlog_items == 15 and stats.tenant_active_jobs == 1
