"""The pure rules behind webhooks: retry schedule, Retry-After, verdicts, targets,
progress milestones, secrets. No network, no store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest

from bulkjobs.config import Settings
from bulkjobs.models import Job, JobStatus
from bulkjobs.outbox import ProgressState, job_from_snapshot, job_snapshot
from bulkjobs.service.webhooks.policy import (
    DEFAULT_SCHEDULE_S,
    Verdict,
    judge,
    next_attempt,
    parse_schedule,
    retry_after_s,
)
from bulkjobs.service.webhooks.rules import progress_key
from bulkjobs.service.webhooks.targets import is_forbidden, url_problem
from bulkjobs.signing import new_secret, parse_secrets, sign

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_default_schedule_matches_the_issue() -> None:
    hours = [d / 3600 for d in parse_schedule(DEFAULT_SCHEDULE_S)]
    assert hours == [5 / 3600, 5 / 60, 0.5, 2, 5, 10, 14, 20, 24]
    assert Settings().webhook_retry_schedule_s == DEFAULT_SCHEDULE_S
    assert Settings().webhook_timeout_s == 15.0


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(7)
    delays = [(next_attempt((300.0,), 0, None, NOW, rng) - NOW).total_seconds() for _ in range(500)]  # type: ignore[operator]
    assert min(delays) >= 240 and max(delays) <= 360
    assert max(delays) - min(delays) > 60  # really spread


def test_schedule_runs_out() -> None:
    assert next_attempt((5.0, 300.0), 2, None, NOW) is None
    assert next_attempt((), 0, None, NOW) is None


def test_retry_after_replaces_the_delay() -> None:
    assert next_attempt((5.0,), 0, 120.0, NOW) == NOW + timedelta(seconds=120)
    assert next_attempt((5.0,), 0, 10**9, NOW) == NOW + timedelta(hours=24)  # capped


def test_retry_after_header_forms() -> None:
    assert retry_after_s("30", NOW) == 30
    assert retry_after_s("Thu, 01 Jan 2026 00:01:00 GMT", NOW) == 60
    assert retry_after_s("Wed, 31 Dec 2025 00:00:00 GMT", NOW) == 0
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s(None, NOW) is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (None, Verdict.RETRY),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (410, Verdict.GONE),
        (301, Verdict.FAILED),
        (400, Verdict.FAILED),
        (404, Verdict.FAILED),
    ],
)
def test_verdicts(status: int | None, verdict: Verdict) -> None:
    assert judge(status) is verdict


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.2.3.4",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_internal_addresses_are_forbidden(addr: str) -> None:
    assert is_forbidden(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(addr: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(addr))


def test_url_rules() -> None:
    assert url_problem("https://hooks.example.com/in?x=1") is None
    assert url_problem("http://hooks.example.com:8080/") is None
    assert url_problem("ftp://x.example/") is not None
    assert url_problem("https://a:b@x.example/") is not None
    assert url_problem("https://a@x.example/") is not None
    assert url_problem("https:///path") is not None
    assert url_problem("x" * 3000) is not None
    assert url_problem(None) is not None


def _running(processed: int, total: int = 100, seq: int = 5) -> Job:
    return Job(
        id="job_x",
        operation="noop",
        status=JobStatus.RUNNING,
        total_items=total,
        succeeded=processed,
        seq=seq,
    )


def test_progress_is_sent_at_milestones_and_at_most_per_interval() -> None:
    events = frozenset({"job.progress"})
    fresh = ProgressState(events, interval_ms=10_000, last_progress_at=0, last_milestone=0)
    assert progress_key(fresh, _running(10), now_ms=1_000) is None  # no milestone, too soon
    assert progress_key(fresh, _running(10), now_ms=10_000) == "progress:seq5"  # interval
    assert progress_key(fresh, _running(30), now_ms=1_000) == "progress:25%"
    assert progress_key(fresh, _running(80), now_ms=1_000) == "progress:75%"  # jumps ahead
    at_50 = ProgressState(events, interval_ms=10_000, last_progress_at=0, last_milestone=50)
    assert progress_key(at_50, _running(60), now_ms=1_000) is None
    quiet = ProgressState(frozenset({"job.completed"}), 0, 0, 0)
    assert progress_key(quiet, _running(50), now_ms=10**9) is None  # not subscribed


def test_job_snapshot_round_trips() -> None:
    job = _running(3)
    assert job_from_snapshot(job_snapshot(job)) == job


def test_signature_matches_an_independent_implementation() -> None:
    secret = new_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body = b'{"type":"job.completed"}'
    expected = hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert sign(parse_secrets(secret), "msg_1", 1700000000, body) == (
        "v1," + base64.b64encode(expected).decode()
    )


@pytest.mark.parametrize("bad", ["secret", "whsec_***", "whsec_" + base64.b64encode(b"x").decode()])
def test_bad_secrets_are_refused_at_startup(bad: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        Settings(webhook_secrets=bad)
