"""Failpoints for crash tests: `hit(name)` kills this process at a chosen moment.

`BULKJOBS_FAILPOINTS="commit:3"` makes the 3rd `hit("commit")` send SIGKILL to the
process itself (several points: `commit:3,cancel:1`; `name` alone means the 1st hit).
The variable is read once at import; when it is unset `hit` is a no-op, so the calls
can stay in production code paths (a global read and one truthiness test).

This is the one piece of module-level state in the package on purpose: a failpoint
must be reachable from any layer without threading a handle through every call.
"""

from __future__ import annotations

import os
import signal

ENV = "BULKJOBS_FAILPOINTS"


def parse(spec: str) -> dict[str, int]:
    """`"commit:3,cancel"` → `{"commit": 3, "cancel": 1}`."""
    armed: dict[str, int] = {}
    for part in spec.replace(" ", "").split(","):
        if part:
            name, _, nth = part.partition(":")
            armed[name] = int(nth or 1)
    return armed


_ARMED = parse(os.environ.get(ENV, ""))
_SEEN: dict[str, int] = {}


def hit(name: str) -> None:
    """Count one pass through the point `name`; SIGKILL ourselves on the armed pass."""
    if _ARMED:
        _count(name)


def _count(name: str) -> None:
    nth = _ARMED.get(name)
    if nth is None:
        return
    _SEEN[name] = seen = _SEEN.get(name, 0) + 1
    if seen == nth:
        os.kill(os.getpid(), signal.SIGKILL)
