"""Schemathesis against a real `bulkjobs serve`: generated requests for every documented
operation find no 5xx and no response outside the OpenAPI document (bounded examples)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ROOT, free_port

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

#: Examples per operation; `make fuzz` raises it (BULKJOBS_FUZZ_SCHEMA_EXAMPLES).
MAX_EXAMPLES = int(os.environ.get("BULKJOBS_FUZZ_SCHEMA_EXAMPLES", "10"))
SENT: list[int] = [0]  # requests sent, reported at the end
#: What the contract promises: no 5xx, and statuses, media types, bodies and headers as
#: documented. (`positive_data_acceptance` is left out on purpose: item types may carry
#: validators, e.g. bounds, that their JSON Schema does not express.)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120 + 12 * MAX_EXAMPLES)]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return bytes(resp.read())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(port)]
    cmd += ["--db", str(tmp_path / "st.sqlite3"), "--shutdown-grace-s", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "server.log"
    with log.open("wb") as err:  # a file, not a pipe: a long run would fill a pipe
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    print(f"schemathesis: {SENT[0]} requests")
    assert "Traceback" not in text, text[text.index("Traceback") :][:2000]


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            _get(url + "/readyz")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # polling a process we do not control
    raise TimeoutError("server not ready")


def test_generated_requests_stay_inside_the_contract(server: str) -> None:
    doc = json.loads(_get(server + "/openapi.json"))
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        failures += _exercise(operation, server)
    assert not failures, "\n".join(failures[:10])


def _exercise(operation: Any, base_url: str) -> list[str]:
    failures: list[str] = []
    settings = hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )

    @settings
    @hypothesis.given(case=operation.as_strategy())
    def run(case: Any) -> None:
        SENT[0] += 1
        try:
            case.call_and_validate(base_url=base_url, timeout=10, checks=CHECKS)
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:500]}")

    run()
    return failures
