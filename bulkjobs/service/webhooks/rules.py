"""Webhook rules: which committed job changes call for which outbox message.

A terminal change sends `job.<status>` when subscribed; a running job sends
`job.progress` at each 25/50/75 % milestone, and otherwise at most once per the
subscription's interval. The dedupe key makes a message unique per job, so a rule
may be applied to the same change twice (a retried commit) and still send once.
"""

from __future__ import annotations

from ...models import Job, JobStatus
from ...outbox import PROGRESS_EVENT, OutboxEntry, ProgressState

MILESTONES = (25, 50, 75)


def milestone(job: Job) -> int:
    """The highest 25/50/75 % milestone the job has reached (0 below 25 %)."""
    reached = [m for m in MILESTONES if job.processed * 100 >= m * job.total_items]
    return reached[-1] if reached else 0


def progress_key(state: ProgressState, job: Job, now_ms: int) -> str | None:
    """The dedupe key of a `job.progress` message this commit should send, if any."""
    if PROGRESS_EVENT not in state.events or job.status is not JobStatus.RUNNING:
        return None
    reached = milestone(job)
    if reached > state.last_milestone:
        return f"progress:{reached}%"
    if job.processed and now_ms - state.last_progress_at >= state.interval_ms:
        return f"progress:seq{job.seq}"
    return None


def due_message(state: ProgressState, job: Job, now_ms: int) -> OutboxEntry | None:
    """The outbox rule (an `OutboxRule`): the message this committed change calls for."""
    if job.is_terminal:
        kind = f"job.{job.status.value}"
        return OutboxEntry("terminal") if kind in state.events else None
    key = progress_key(state, job, now_ms)
    return OutboxEntry(key, milestone(job)) if key is not None else None
