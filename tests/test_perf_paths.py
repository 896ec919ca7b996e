"""The fast paths of issue 15 keep their guarantees.

Runs of equal outcomes are written as index ranges (counters still equal outcomes;
an item no longer pending is not overwritten); items are built without a second
validation only when this process's own item types accepted them; a lease of an
operation with a concurrency limit may hold several chunks, worked one after another.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

from bulkjobs import ItemContext, Registry
from bulkjobs.itemtypes import ItemType
from bulkjobs.models import ItemOutcome, Job, JobStatus, NewItems, WorkItem, new_job_id, utcnow
from bulkjobs.registry import Operation
from bulkjobs.service.dispatcher import DispatchConfig, Dispatcher, LeaseRun
from bulkjobs.service.executor import _Invalid, _structure
from bulkjobs.store import ChunkResult, Lease, NewJob, OperationLimits
from bulkjobs.store.sqlite import SQLiteStore
from tests.support import submit, wait_terminal

NOW = utcnow()


async def _job(store: SQLiteStore, n: int) -> Job:
    job = Job(id=new_job_id(), operation="op", status=JobStatus.PENDING, total_items=n, seq=1)
    items = NewItems([None] * n, ["{}"] * n)
    created = await store.create_job(NewJob(job, items))
    assert created.job is not None
    return created.job


async def test_runs_of_equal_outcomes_settle_like_single_rows(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "runs.sqlite3"))
    await store.open()
    try:
        job = await _job(store, 100)
        limits = {"op": OperationLimits(span_items=100)}
        lease = (await store.claim("a", limits, lease_s=30, now=NOW)).lease
        assert lease is not None and len(lease.items) == 100

        def noop(i: int) -> ItemOutcome:
            return ItemOutcome("succeeded", None, None, None, 1, job.pk, i)

        def bad(i: int) -> ItemOutcome:
            return ItemOutcome("failed", None, "nope", "no", 1, job.pk, i)

        def res(i: int) -> ItemOutcome:
            return ItemOutcome("succeeded", f'{{"i": {i}}}', None, None, 1, job.pk, i)

        # a run of 40, a run broken by a gap, a run of failures, short runs, results
        outcomes = [noop(i) for i in range(40)] + [noop(i) for i in range(41, 60)]
        outcomes += [bad(i) for i in range(60, 80)] + [noop(80), bad(81), noop(82)]
        outcomes += [res(i) for i in range(83, 100)]
        first = ChunkResult(lease.pk, job.pk, outcomes[:50], release=False)
        settled = await store.complete("a", [first], NOW)
        assert settled.jobs[0].succeeded == 50
        # item 40 was never sent: its lease's last chunk sends it with the rest
        rest = [*outcomes[50:], noop(40)]
        settled = await store.complete("a", [ChunkResult(lease.pk, job.pk, rest, True)], NOW)
        final = settled.jobs[0]
        assert final.status is JobStatus.COMPLETED
        assert (final.succeeded, final.failed) == (79, 21)
        items = await store.list_items(job.pk, status=None, after_index=-1, limit=200)
        assert [i.status for i in items[38:42]] == ["succeeded"] * 4
        assert items[60].error_code == "nope" and items[81].error_code == "nope"
        assert items[90].result_json == '{"i": 90}' and items[10].result_json is None
    finally:
        await store.close()


async def test_a_run_over_items_no_longer_pending_recounts(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "stale.sqlite3"))
    await store.open()
    try:
        job = await _job(store, 40)
        limits = {"op": OperationLimits(span_items=40)}
        lease = (await store.claim("a", limits, lease_s=30, now=NOW)).lease
        assert lease is not None
        fail = [ItemOutcome("failed", None, "x", "x", 1, job.pk, i) for i in range(10, 30)]
        await store.complete("a", [ChunkResult(lease.pk, job.pk, fail, False)], NOW)
        # the same indexes again as a run of successes: not pending any more, ignored
        again = [ItemOutcome("succeeded", None, None, None, 1, job.pk, i) for i in range(40)]
        settled = await store.complete("a", [ChunkResult(lease.pk, job.pk, again, True)], NOW)
        final = settled.jobs[0]
        assert (final.succeeded, final.failed, final.processed) == (20, 20, 40)
    finally:
        await store.close()


@attrs.frozen
class Plain:
    id: str = attrs.field(validator=attrs.validators.max_len(3))
    status: Literal["a", "b"] = "a"
    n: int | None = None


@attrs.frozen
class WithFloat:
    x: float


@attrs.frozen
class Nested:
    inner: Plain


def test_build_calls_the_class_only_when_structuring_would_change_nothing() -> None:
    plain = ItemType(Plain)
    assert plain.build({"id": "ab", "n": 2}) == plain.structure({"id": "ab", "n": 2})
    with pytest.raises(ValueError):
        plain.build({"id": "abcd"})  # the class's own validators still run
    # an int for a float, a dict for a class: structuring changes them, so it runs
    assert ItemType(WithFloat).build({"x": 1}) == WithFloat(1.0)
    assert isinstance(ItemType(WithFloat).build({"x": 1}).x, float)
    assert ItemType(Nested).build({"inner": {"id": "a"}}) == Nested(Plain("a"))


def _run(op: Operation, revalidate: bool) -> LeaseRun:
    run = LeaseRun(1, "job_x", 1, "t", op, 0.0, 1)
    run.revalidate = revalidate
    return run


def test_items_are_validated_again_unless_this_process_accepted_them() -> None:
    reg = Registry()

    @reg.operation("p", item_type=Plain)
    async def p(item: Plain, ctx: ItemContext) -> None:
        return None

    op = reg.get("p")
    assert op is not None
    wrong = WorkItem(0, None, '{"id": 7}')  # what an older item type may have accepted
    got = _structure(_run(op, revalidate=True), op, wrong)
    assert isinstance(got, _Invalid) and got.row.error_code == "invalid_item"
    good = WorkItem(1, None, '{"id": "ok", "status": "b"}')
    assert _structure(_run(op, revalidate=False), op, good) == Plain("ok", "b")


async def test_only_jobs_accepted_after_the_start_skip_validation(tmp_path: Path) -> None:
    reg = Registry()

    @reg.operation("op", item_type=Plain)
    async def handler(item: Plain, ctx: ItemContext) -> None:
        return None

    store = SQLiteStore(str(tmp_path / "d.sqlite3"))
    queue: asyncio.Queue[Any] = asyncio.Queue(4)

    async def abandoned(_run: LeaseRun) -> None:
        return None

    d = Dispatcher(store, reg, queue, DispatchConfig("me"), lambda _jobs: None, abandoned)
    old = Job(id=new_job_id(), operation="op", status=JobStatus.RUNNING, total_items=1,
              created_at=utcnow() - timedelta(seconds=5))  # fmt: skip
    new = attrs.evolve(old, created_at=utcnow() + timedelta(seconds=1))
    items = [WorkItem(0, None, "{}")]
    assert d._run_of(Lease(1, old, items)).revalidate
    assert not d._run_of(Lease(2, new, items)).revalidate


async def test_a_limited_operation_runs_several_chunks_of_a_lease_one_at_a_time(
    make_client: Any,
) -> None:
    reg = Registry()
    running, most, batches = 0, 0, 0

    @reg.batch_operation("one", item_type=Plain, batch_size=5, concurrency=1)
    async def one(items: list[Plain], ctx: Any) -> list[None]:
        nonlocal running, most, batches
        running += 1
        most = max(most, running)
        batches += 1
        await asyncio.sleep(0.001)
        running -= 1
        return [None] * len(items)

    client = await make_client(registry=reg, workers=4)
    jobs = [await submit(client, "one", [{"id": "a"}] * 300) for _ in range(2)]
    for body in jobs:
        assert (await wait_terminal(client, body["id"])).succeeded == 300
    assert most == 1 and batches == 120
