"""The store contract: what every backend must do, run against each of them.

Claim (fair, under a lease), lease expiry and reclaim, complete (idempotent when the
lease was lost), guarded transitions, stop while leases are out, recovery on reopen,
retention. Backends come from the `store` fixture's params; a new backend adds itself
there and must pass every test unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from bulkjobs import states
from bulkjobs.models import ItemOutcome, Job, JobError, JobStatus, NewItems, new_job_id, utcnow
from bulkjobs.store import ChunkResult, JobFilter, NewJob, OperationLimits, Store
from bulkjobs.store.sqlite import SQLiteStore, StoreLocked

LIMITS = {"op": OperationLimits(span_items=4), "one": OperationLimits(2, concurrency=1)}
NOW = utcnow()


def _open_sqlite(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "contract.sqlite3"))


@asynccontextmanager
async def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    yield _open_sqlite(tmp_path)


@asynccontextmanager
async def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh database on the session's cluster; leases timed by the tests' `now`."""
    from bulkjobs.store.postgres import PostgresStore
    from tests.pg_support import create_database, drop_database

    cluster = request.getfixturevalue("pg_cluster")
    url = await create_database(cluster)
    try:
        yield PostgresStore(url, pool_size=4, lease_clock="caller")
    finally:
        await drop_database(cluster, url)


#: Each backend: an async context giving an unopened store (and cleaning up after it).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[Store]]]
BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](request, tmp_path) as s:
        await s.open()
        yield s
        await s.close()


async def new_job(
    store: Store, n: int, *, tenant: str = "t1", op: str = "op", max_failed: int | None = None
) -> Job:
    job = Job(
        id=new_job_id(),
        operation=op,
        status=JobStatus.PENDING,
        total_items=n,
        tenant=tenant,
        seq=1,
        max_failed=max_failed,
    )
    items = NewItems([f"i{i}" for i in range(n)], [f'{{"n": {i}}}' for i in range(n)])
    created = await store.create_job(NewJob(job, items))
    assert created.job is not None
    return created.job


def ok(job: Job, idx: int) -> ItemOutcome:
    return ItemOutcome("succeeded", '{"ok": true}', None, None, 1, job.pk, idx)


def bad(job: Job, idx: int) -> ItemOutcome:
    return ItemOutcome("failed", None, "nope", "failed as asked", 1, job.pk, idx)


async def claim(store: Store, owner: str = "a", *, at: timedelta = timedelta(0), lease_s=30.0):
    return await store.claim(owner, LIMITS, lease_s=lease_s, now=NOW + at)


async def get(store: Store, job: Job) -> Job:
    found = (await store.find_job(job.id)).job
    assert found is not None
    return found


# -- claiming ---------------------------------------------------------------------


async def test_claim_leases_a_span_and_starts_the_job(store: Store) -> None:
    job = await new_job(store, 10)
    got = await claim(store)
    assert got.lease is not None
    assert [w.index for w in got.lease.items] == [0, 1, 2, 3]
    assert got.lease.job.status is JobStatus.RUNNING and got.lease.job.started_at is not None
    second = await claim(store)
    assert second.lease is not None and [w.index for w in second.lease.items] == [4, 5, 6, 7]
    assert (await get(store, job)).status is JobStatus.RUNNING


async def test_nothing_to_claim(store: Store) -> None:
    assert (await claim(store)).lease is None


async def test_claims_take_turns_by_tenant_then_by_job(store: Store) -> None:
    a_jobs = [await new_job(store, 40, tenant="A") for _ in range(3)]
    b_job = await new_job(store, 40, tenant="B")
    order = []
    for _ in range(6):
        lease = (await claim(store)).lease
        assert lease is not None
        order.append((lease.job.tenant, lease.job.id))
    tenants = [t for t, _ in order]
    assert tenants in (["A", "B"] * 3, ["B", "A"] * 3), tenants
    a_order = [j for t, j in order if t == "A"]
    assert sorted(a_order) == sorted(j.id for j in a_jobs)  # A's jobs take turns too
    assert all(j == b_job.id for t, j in order if t == "B")


async def test_concurrency_limit_counts_leases(store: Store) -> None:
    await new_job(store, 10, op="one")
    await new_job(store, 10, op="one")
    first = await claim(store)
    assert first.lease is not None and len(first.lease.items) == 2
    assert (await claim(store, "b")).lease is None  # concurrency=1 across every owner
    await store.complete("a", [ChunkResult(first.lease.pk, first.lease.job.pk, [], True)], NOW)
    assert (await claim(store, "b")).lease is not None


# -- leases ------------------------------------------------------------------------


async def test_an_expired_lease_is_claimed_again_by_another_owner(store: Store) -> None:
    job = await new_job(store, 4)
    first = await claim(store, "a", lease_s=5)
    assert first.lease is not None
    assert (await claim(store, "b", at=timedelta(seconds=1))).lease is None
    again = await claim(store, "b", at=timedelta(seconds=6))
    assert again.lease is not None and again.lease.pk == first.lease.pk
    assert [w.index for w in again.lease.items] == [0, 1, 2, 3]
    # a's late result is ignored: the lease is b's now
    late = ChunkResult(first.lease.pk, job.pk, [ok(job, i) for i in range(4)], True)
    settled = await store.complete("a", [late], NOW + timedelta(seconds=7))
    assert settled.lost_leases == {first.lease.pk}
    assert (await get(store, job)).succeeded == 0


async def test_heartbeat_extends_leases(store: Store) -> None:
    await new_job(store, 4)
    first = await claim(store, "a", lease_s=5)
    assert first.lease is not None
    beat = await store.heartbeat("a", [first.lease.pk], lease_s=5, now=NOW + timedelta(seconds=4))
    assert beat.renewed == 1
    assert (await claim(store, "b", at=timedelta(seconds=6))).lease is None


async def test_a_lease_its_owner_lost_track_of_is_not_renewed(store: Store) -> None:
    await new_job(store, 8)
    kept = (await claim(store, "a", lease_s=5)).lease
    forgotten = (await claim(store, "a", lease_s=5)).lease
    assert kept is not None and forgotten is not None
    beat = await store.heartbeat("a", [kept.pk], lease_s=5, now=NOW + timedelta(seconds=4))
    assert beat.renewed == 1
    again = await claim(store, "a", at=timedelta(seconds=6))
    assert again.lease is not None and again.lease.pk == forgotten.pk


async def test_reopen_reclaims_every_lease_at_once(tmp_path: Path) -> None:
    store = _open_sqlite(tmp_path)
    await store.open()
    await new_job(store, 4)
    first = await claim(store, "a", lease_s=3600)
    assert first.lease is not None
    await store.close()
    await store.open()
    try:
        again = await claim(store, "b")
        assert again.lease is not None and again.lease.pk == first.lease.pk
    finally:
        await store.close()


async def test_one_process_owns_a_sqlite_file(tmp_path: Path) -> None:
    one, two = _open_sqlite(tmp_path), _open_sqlite(tmp_path)
    await one.open()
    try:
        with pytest.raises(StoreLocked):
            await two.open()
    finally:
        await one.close()


# -- completing --------------------------------------------------------------------


async def test_complete_writes_outcomes_counters_and_finishes(store: Store) -> None:
    job = await new_job(store, 6)
    for _ in range(2):
        lease = (await claim(store)).lease
        assert lease is not None
        outcomes = [ok(job, w.index) if w.index % 3 else bad(job, w.index) for w in lease.items]
        settled = await store.complete("a", [ChunkResult(lease.pk, job.pk, outcomes, True)], NOW)
    final = settled.jobs[0]
    assert final.status is JobStatus.COMPLETED
    assert (final.succeeded, final.failed, final.cancelled) == (4, 2, 0)
    assert final.completed_at is not None and final.expires_at is not None
    items = await store.list_items(job.pk, status=None, after_index=-1, limit=10)
    assert [i.status for i in items] == ["failed", "succeeded", "succeeded"] * 2


async def test_complete_is_idempotent(store: Store) -> None:
    job = await new_job(store, 8)
    lease = (await claim(store)).lease
    assert lease is not None
    result = ChunkResult(lease.pk, job.pk, [ok(job, w.index) for w in lease.items], True)
    await store.complete("a", [result], NOW)
    again = await store.complete("a", [result], NOW)
    assert again.lost_leases == {lease.pk} and not again.jobs
    assert (await get(store, job)).succeeded == 4


async def test_partial_chunks_keep_the_lease_until_released(store: Store) -> None:
    job = await new_job(store, 4)
    lease = (await claim(store)).lease
    assert lease is not None
    await store.complete("a", [ChunkResult(lease.pk, job.pk, [ok(job, 0), ok(job, 1)])], NOW)
    assert (await get(store, job)).status is JobStatus.RUNNING
    rest = ChunkResult(lease.pk, job.pk, [ok(job, 2), ok(job, 3)], release=True)
    settled = await store.complete("a", [rest], NOW)
    assert settled.jobs[0].status is JobStatus.COMPLETED


async def test_items_of_a_released_span_without_outcomes_are_claimed_again(store: Store) -> None:
    job = await new_job(store, 4)
    lease = (await claim(store)).lease
    assert lease is not None
    await store.complete("a", [ChunkResult(lease.pk, job.pk, [ok(job, 0)], True)], NOW)
    again = (await claim(store)).lease
    assert again is not None and [w.index for w in again.items] == [1, 2, 3]


async def test_failure_threshold_stops_the_job(store: Store) -> None:
    job = await new_job(store, 8, max_failed=1)
    lease = (await claim(store)).lease
    assert lease is not None
    outcomes = [bad(job, w.index) for w in lease.items]
    settled = await store.complete("a", [ChunkResult(lease.pk, job.pk, outcomes, True)], NOW)
    final = settled.jobs[0]
    assert final.status is JobStatus.FAILED
    assert final.error is not None and final.error.code == "failure_threshold_exceeded"
    assert (final.failed, final.cancelled) == (4, 4)


# -- transitions and stop -------------------------------------------------------------


async def test_stop_with_no_leases_is_immediate(store: Store) -> None:
    job = await new_job(store, 5)
    stopped = await store.stop(job.pk, JobStatus.CANCELLED, NOW)
    assert stopped.status is JobStatus.CANCELLED and stopped.cancelled == 5
    assert stopped.cancel_requested_at is not None


async def test_stop_waits_for_leases_then_cancels_the_rest(store: Store) -> None:
    job = await new_job(store, 10)
    lease = (await claim(store)).lease
    assert lease is not None
    asked = await store.stop(job.pk, JobStatus.CANCELLED, NOW)
    assert asked.status is JobStatus.RUNNING and asked.stop_requested is JobStatus.CANCELLED
    assert (await store.heartbeat("a", [lease.pk], lease_s=30, now=NOW)).stopping == {job.pk}
    assert (await claim(store, "b")).lease is None  # a stopping job is not claimed
    done = [ok(job, w.index) for w in lease.items[:2]]
    settled = await store.complete("a", [ChunkResult(lease.pk, job.pk, done, True)], NOW)
    final = settled.jobs[0]
    assert final.status is JobStatus.CANCELLED
    assert (final.succeeded, final.cancelled, final.processed) == (2, 8, 10)


async def test_stop_on_a_terminal_job_is_illegal(store: Store) -> None:
    job = await new_job(store, 1)
    await store.stop(job.pk, JobStatus.CANCELLED, NOW)
    for target in (JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.COMPLETED):
        with pytest.raises(states.IllegalTransition):
            await store.stop(job.pk, target, NOW, JobError("x", "y"))


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product(JobStatus, JobStatus)), ids=str
)
async def test_every_transition_is_guarded(
    tmp_path: Path, current: JobStatus, target: JobStatus
) -> None:
    """The SQL guard refuses exactly what the state machine forbids (SQLite internals)."""
    from bulkjobs.store import sqlite_work

    store = _open_sqlite(tmp_path)
    await store.open()
    try:
        job = await new_job(store, 1)
        async with store._txn() as db:
            await db.execute("UPDATE jobs SET status = ? WHERE pk = ?", (current.value, job.pk))
            if states.allowed(current, target):
                moved = await sqlite_work.transition(db, job.pk, target, 0)
                assert moved.status is target
            else:
                with pytest.raises(states.IllegalTransition):
                    await sqlite_work.transition(db, job.pk, target, 0)
                assert (await get_status(db, job.pk)) == current.value
    finally:
        await store.close()


async def get_status(db: object, pk: int) -> str:
    async with db.execute("SELECT status FROM jobs WHERE pk = ?", (pk,)) as cur:  # type: ignore[attr-defined]
        return str((await cur.fetchone())[0])


def test_the_machine_is_the_designed_one() -> None:
    legal = {(c, t) for c, t in itertools.product(JobStatus, JobStatus) if states.allowed(c, t)}
    p, r, c, f, x = (
        JobStatus.PENDING,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    )
    assert legal == {(p, r), (p, x), (p, f), (r, c), (r, f), (r, x)}


# -- reads, stats, retention ---------------------------------------------------------


async def test_stats_count_backlog_and_a_tenants_active_jobs(store: Store) -> None:
    await new_job(store, 10, tenant="A")
    await new_job(store, 5, tenant="B")
    stats = await store.stats("A")
    assert stats.backlog_items == 15 and stats.tenant_active_jobs == 1
    assert stats.jobs_by_status == {"pending": 2}


async def test_active_filter_lists_unfinished_jobs(store: Store) -> None:
    live = await new_job(store, 2)
    done = await new_job(store, 2)
    await store.stop(done.pk, JobStatus.CANCELLED, NOW)
    listed = await store.list_jobs(JobFilter(active=True), before_pk=None, limit=10)
    assert [j.id for j in listed] == [live.id]


async def test_expiry_leaves_a_tombstone_and_purges_items(store: Store) -> None:
    job = await new_job(store, 3)
    done = await store.stop(job.pk, JobStatus.CANCELLED, NOW)
    assert done.expires_at is not None
    later = done.expires_at + timedelta(seconds=1)
    result = await store.maintain(later, expire_jobs=10, purge_items=0, keep_s=60)
    assert [j.id for j in result.expired] == [job.id]
    found = await store.find_job(job.id)
    assert found.job is None and found.tombstone is not None
    assert found.tombstone.reason == "expired"
    while (await store.maintain(later, expire_jobs=0, purge_items=2, keep_s=60)).purged:
        pass
    assert await store.list_items(job.pk, status=None, after_index=-1, limit=10) == []
    swept = await store.maintain(
        later + timedelta(seconds=61), expire_jobs=1, purge_items=0, keep_s=60
    )
    assert swept.swept == 1
    assert (await store.find_job(job.id)).tombstone is None


async def test_events_secret_survives_a_restart(tmp_path: Path) -> None:
    store = _open_sqlite(tmp_path)
    first = await store.open()
    await store.close()
    second = await store.open()
    await store.close()
    assert first == second and len(first) == 32


# -- staging (uploads in progress) ---------------------------------------------------


def _batch(first: int, n: int) -> NewItems:
    return NewItems(
        [f"s{i}" for i in range(first, first + n)],
        [f'{{"n": {i}}}' for i in range(first, first + n)],
    )


async def test_staged_items_are_invisible_until_the_job_adopts_them(store: Store) -> None:
    async with store.staging() as staged:
        await staged.add(_batch(0, 3))
        await staged.add(_batch(3, 2))
        assert staged.count == 5
        assert (await claim(store)).lease is None  # no job: nothing to claim
        assert (await store.stats("t1")).tenant_stored_items == 0
        job = Job(
            id=new_job_id(),
            operation="op",
            status=JobStatus.PENDING,
            total_items=5,
            tenant="t1",
            seq=1,
        )
        created = await store.create_job(NewJob(job, staged))
    assert created.job is not None
    rows = await store.list_items(created.job.pk, status=None, after_index=-1, limit=10)
    assert [(r.idx, r.item_id) for r in rows] == [(i, f"s{i}") for i in range(5)]
    got = await claim(store)
    assert got.lease is not None and [w.index for w in got.lease.items] == [0, 1, 2, 3]
    later = await new_job(store, 1)  # the next job's key is past the staged one
    assert later.pk > created.job.pk


async def test_an_abandoned_upload_is_purged(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.staging() as staged:
            await staged.add(_batch(0, 50))
            raise RuntimeError("the client went away")
    purged = 0
    for _ in range(10):
        step = (await store.maintain(NOW, expire_jobs=0, purge_items=20, keep_s=0)).purged
        if not step:
            break
        purged += step
    assert purged >= 50  # 20 + 20 + 10 staged items went, in batches
    job = await new_job(store, 2)  # what remains is only the new job's items
    assert (await store.stats("t1")).tenant_stored_items == 2
    assert [
        r.idx for r in await store.list_items(job.pk, status=None, after_index=-1, limit=9)
    ] == [0, 1]
