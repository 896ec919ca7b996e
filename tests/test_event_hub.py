"""The event hub on its own: coalescing, bounded buffers, resume windows."""

from __future__ import annotations

import asyncio

import attrs

from bulkjobs.models import Job, JobStatus
from bulkjobs.service.events import EventHub, JobEvent


def job(seq: int, status: JobStatus = JobStatus.RUNNING, done: int = 0) -> Job:
    return Job(id="job_x", operation="op", status=status, total_items=1000, succeeded=done, seq=seq)


async def test_progress_fan_out_is_throttled_but_latest_always_arrives() -> None:
    hub = EventHub(progress_interval_s=0.05)
    sub = hub.subscribe("job_x", maxsize=100)
    hub.publish(job(1, JobStatus.PENDING))
    for seq in range(2, 50):  # pending -> running at 2, then progress within one tick
        hub.publish(job(seq, done=seq))
    received = [await sub.get() for _ in range(3)]
    assert [(e.type, e.seq) for e in received if e] == [
        ("status", 1),
        ("status", 2),
        ("progress", 3),
    ]
    held = await sub.get()  # delivered when the interval ends, not dropped
    assert held is not None and (held.type, held.seq, held.job.succeeded) == ("progress", 49, 49)
    assert hub.latest("job_x") == held


async def test_status_transitions_are_never_held() -> None:
    hub = EventHub(progress_interval_s=60)
    sub = hub.subscribe("job_x", maxsize=100)
    hub.publish(job(1))
    hub.publish(job(2, done=1))
    hub.publish(job(3, done=2))  # held for a minute...
    hub.publish(job(4, JobStatus.COMPLETED, done=1000))  # ...superseded by the transition
    events = [e async for e in sub]  # the terminal event closes the subscription
    assert [(e.type, e.seq) for e in events] == [("status", 1), ("progress", 2), ("status", 4)]
    assert events[-1].to_dict()["succeeded"] == 1000


async def test_slow_subscriber_buffer_is_bounded_and_keeps_every_transition() -> None:
    hub = EventHub(progress_interval_s=0)
    sub = hub.subscribe("job_x", maxsize=8)
    hub.publish(job(1, JobStatus.PENDING))
    for seq in range(2, 10_000):
        hub.publish(job(seq, done=seq))
        assert len(sub) <= 8
    hub.publish(job(10_000, JobStatus.COMPLETED, done=1000))
    events = [e async for e in sub]
    assert len(events) <= 8
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [e.job.status for e in events if e.type == "status"] == [
        JobStatus.PENDING,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    ]
    assert sub.coalesced > 9000


async def test_since_knows_how_far_back_its_history_reaches() -> None:
    hub = EventHub(history=4, progress_interval_s=0)
    hub.publish(job(5))  # first seen at seq 5 (e.g. after a restart)
    for seq in (7, 9, 11, 13):  # gaps: coalesced commits
        hub.publish(job(seq, done=seq))
    assert hub.since("job_x", 4) is None  # seq 5 was evicted
    assert hub.since("job_x", 5) is not None  # everything after 5 is still held
    assert [e.seq for e in hub.since("job_x", 8) or []] == [9, 11, 13]
    assert hub.since("job_x", 13) == []
    assert hub.since("job_other", 0) is None
    hub.forget("job_x")
    assert hub.since("job_x", 9) is None and hub.latest("job_x") is None


async def test_event_shape_is_the_documented_one() -> None:
    hub = EventHub()
    event = hub.publish(attrs.evolve(job(3, done=250), failed=5, cancelled=1))
    assert event.to_dict() == {
        "seq": 3,
        "job_id": "job_x",
        "type": "status",
        "status": "running",
        "total_items": 1000,
        "processed": 256,
        "succeeded": 250,
        "failed": 5,
        "cancelled": 1,
        "progress": 0.256,
        "at": event.to_dict()["at"],
    }


async def test_many_subscribers_stretch_the_progress_interval_to_the_fanout_budget() -> None:
    hub = EventHub(progress_interval_s=0.01, fanout_per_s=200)
    subs = [hub.subscribe("job_x", maxsize=8) for _ in range(20)]  # 20 / 200/s = 0.1 s
    hub.publish(job(1))
    hub.publish(job(2, done=1))  # the first progress goes out at once...
    started = asyncio.get_running_loop().time()
    hub.publish(job(3, done=2))  # ...the next one waits for the stretched interval
    received = [await subs[0].get() for _ in range(3)]
    assert [(e.type, e.seq) for e in received if e] == [
        ("status", 1),
        ("progress", 2),
        ("progress", 3),
    ]
    assert asyncio.get_running_loop().time() - started >= 0.09
    hub.publish(job(4, JobStatus.COMPLETED, done=1000))  # transitions are never held
    assert sorted(hub.buffered("job_x")) == [1] + [4] * 19  # 1 = the terminal event


async def test_a_waiting_subscriber_takes_events_through_its_sink_until_it_refuses() -> None:
    hub = EventHub(progress_interval_s=0)
    sub = hub.subscribe("job_x", maxsize=8)
    taken: list[int] = []
    accept = True

    def sink(event: JobEvent) -> bool:
        if accept:
            taken.append(event.seq)
        return accept

    sub.sink = sink
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)  # parked in get(): events go to the sink, nobody is woken
    hub.publish(job(1))
    hub.publish(job(2, done=1))
    assert taken == [1, 2] and len(sub) == 0 and not waiter.done()
    accept = False  # e.g. the socket has data queued: the consumer takes over, in order
    hub.publish(job(3, done=2))
    hub.publish(job(4, done=3))
    assert taken == [1, 2] and len(sub) == 2
    first = await waiter
    assert first is not None and first.seq == 3
    accept = True  # not parked in get() with an empty buffer: the sink is not used
    hub.publish(job(5, done=4))
    assert taken == [1, 2]
    assert [e.seq for e in [await sub.get(), await sub.get()] if e] == [4, 5]
