"""The job state machine: the one place that says which status changes are legal.

    pending → running → completed | failed | cancelled
    pending → cancelled | failed

A terminal job never changes again (except to be deleted). Stores apply every status
change as a guarded update whose allowed sources come from `sources_of`, so a change
the machine forbids touches no row; `check` raises `IllegalTransition` for it.
"""

from __future__ import annotations

from .models import TERMINAL_JOB_STATUSES, JobStatus

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: TERMINAL_JOB_STATUSES,
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: Statuses in which a job still has work to do.
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)


class IllegalTransition(Exception):
    """A status change the state machine forbids."""

    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"illegal job transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def allowed(current: JobStatus, target: JobStatus) -> bool:
    """True when the machine allows `current -> target`."""
    return target in _ALLOWED[current]


def check(current: JobStatus, target: JobStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if not allowed(current, target):
        raise IllegalTransition(current, target)


def sources_of(target: JobStatus) -> tuple[JobStatus, ...]:
    """Every status from which `target` may be reached (the guard of a store update)."""
    return tuple(s for s, targets in _ALLOWED.items() if target in targets)
