"""Fault suite, bad input: hypothesis-generated raw HTTP requests against a real server.

tests/test_schemathesis.py sends requests shaped by the OpenAPI document; this
complements it with what the document does not describe: arbitrary methods, path
segments, query strings, headers, content types and bodies (JSON of any shape,
NDJSON, bytes), per endpoint family. Each request goes out over a raw `http.client`
connection (no client-side normalisation). Never a 5xx, never a traceback in a
body, and the server's log shows no error afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault_support import FORBIDDEN
from tests.serverproc import ROOT, free_port

#: `make fuzz` raises these (BULKJOBS_FUZZ_EXAMPLES); `make test` keeps a short run.
MAX_EXAMPLES = int(os.environ.get("BULKJOBS_FUZZ_EXAMPLES", "200"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180 + MAX_EXAMPLES // 4)]
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

# Header-safe text: printable ASCII without CR/LF (http.client refuses those itself).
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
segment = st.one_of(
    st.text(max_size=40).map(lambda s: urllib.parse.quote(s, safe="")),
    st.sampled_from(
        ["", ".", "..", "%00", "%2F", "job_", "job_" + "0" * 26, "%F0%9F%99%82", "%FF", "a" * 300]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
operation = st.sampled_from(["noop", "sleep", "update_orders_status", "nope", ""]) | st.text(
    max_size=10
)
item = st.one_of(
    json_values,
    st.fixed_dictionaries({"ms": st.integers(-5, 100_000) | json_values}),
    st.fixed_dictionaries({"id": json_values, "status": json_values}),
    st.fixed_dictionaries({"value": json_values, "id": json_values}),
)
job_body = st.fixed_dictionaries(
    {"operation": operation, "items": st.lists(item, max_size=8) | json_values},
    optional={
        "ttl_seconds": json_values | st.integers(),
        "webhook": json_values | st.fixed_dictionaries({"url": st.text(max_size=30)}),
        "extra": json_values,
    },
)


def encode_body(kind: str, value: Any, raw: bytes) -> bytes:
    if kind == "json":
        return json.dumps(value, allow_nan=True).encode()
    if kind == "ndjson" and isinstance(value, dict):
        items = value.get("items")
        lines = items if isinstance(items, list) else [items]
        return b"\n".join(json.dumps(x).encode() for x in lines)
    return raw


bodies = st.tuples(
    st.sampled_from(["json", "ndjson", "raw"]), job_body | json_values, st.binary(max_size=200)
).map(lambda t: encode_body(*t))
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/x-ndjson",
            "application/json; charset=latin-1",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
        ]
    )
    | header_text
)
query_keys = st.sampled_from(
    ["limit", "cursor", "status", "operation", "format", "wait", "partial", "token", "x"]
)
queries = st.lists(st.tuples(query_keys, st.text(max_size=30)), max_size=4).map(
    lambda pairs: urllib.parse.urlencode(pairs)
)
extra_headers = st.dictionaries(
    st.sampled_from(
        [
            "Accept",
            "If-None-Match",
            "Idempotency-Key",
            "Last-Event-ID",
            "Authorization",
            "Accept-Encoding",
            "X-Anything",
        ]
    ),
    header_text,
    max_size=4,
)


class Fuzzer:
    """Sends raw requests to one server and keeps the tally."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.known_job = ""

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read(200_000).decode(errors="replace")
        finally:
            conn.close()
        self.sent += 1
        self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
        where = f"{method} {path} {headers} {body!r:.200} -> {resp.status}: {text[:300]}"
        assert resp.status < 500, where
        assert not any(word in text for word in FORBIDDEN), where
        return resp.status


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    cmd = [sys.executable, "-m", "bulkjobs", "serve", "--port", str(port)]
    cmd += ["--db", str(tmp / "fuzz.sqlite3"), "--max-body-bytes", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BULKJOBS_SUBMIT_RATE_PER_S": "0"}
    env["BULKJOBS_MAX_ACTIVE_JOBS"] = "0"
    log = tmp / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    fz = Fuzzer(port)
    try:
        _wait_ready(proc, fz)
        fz.known_job = _finished_job(fz)
        yield fz
        assert proc.poll() is None, "the server died under fuzzing"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    problems = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line or any(word in line for word in FORBIDDEN)
    ]
    print(f"fuzz: {fz.sent} requests, statuses {dict(sorted(fz.statuses.items()))}")
    assert not problems, "\n".join(problems[:10])


def _wait_ready(proc: subprocess.Popen[bytes], fz: Fuzzer) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            if fz.send("GET", "/readyz", None, {}) == 200:
                return
        except OSError:
            time.sleep(0.05)  # polling a process we do not control
    raise TimeoutError("server not ready")


def _finished_job(fz: Fuzzer) -> str:
    """A real, finished job: fuzzed per-job requests also reach existing resources."""
    conn = http.client.HTTPConnection("127.0.0.1", fz.port, timeout=15)
    body = json.dumps({"operation": "noop", "items": [{"value": 1}, {"value": 2}]})
    conn.request("POST", "/bulk-jobs?", body=body, headers={"Content-Type": "application/json"})
    job_id: str = json.loads(conn.getresponse().read())["id"]
    for _ in range(200):
        conn.request("GET", f"/bulk-jobs/{job_id}")
        if json.loads(conn.getresponse().read())["status"] == "completed":
            conn.close()
            return job_id
        time.sleep(0.02)  # polling a process we do not control
    raise TimeoutError(job_id)


def _headers(ctype: str, extra: dict[str, str]) -> dict[str, str]:
    return {**({"Content-Type": ctype} if ctype else {}), **extra}


def test_fuzz_submit(fuzzer: Fuzzer) -> None:
    @SETTINGS
    @given(body=bodies, ctype=content_types, query=queries, headers=extra_headers)
    def run(body: bytes, ctype: str, query: str, headers: dict[str, str]) -> None:
        fuzzer.send("POST", f"/bulk-jobs?{query}", body, _headers(ctype, headers))

    run()


def test_fuzz_list_and_static_endpoints(fuzzer: Fuzzer) -> None:
    paths = st.sampled_from(
        [
            "/bulk-jobs",
            "/operations",
            "/openapi.json",
            "/healthz",
            "/readyz",
            "/metrics",
            "/",
            "/errors",
            "/errors/{s}",
            "/dashboard/{s}",
            "/{s}",
            "/bulk-jobs/",
        ]
    )

    @SETTINGS
    @given(path=paths, seg=segment, query=queries, headers=extra_headers)
    def run(path: str, seg: str, query: str, headers: dict[str, str]) -> None:
        fuzzer.send("GET", path.replace("{s}", seg) + "?" + query, None, headers)

    run()


def test_fuzz_job_endpoints(fuzzer: Fuzzer) -> None:
    subpaths = st.sampled_from(
        [
            "",
            "/items",
            "/results",
            "/events",
            "/cancel",
            "/retry",
            "/webhook-deliveries",
            "/webhook-deliveries/{s}/redeliver",
            "/{s}",
        ]
    )
    methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])

    @SETTINGS
    @given(
        method=methods,
        real=st.booleans(),
        seg=segment,
        sub=subpaths,
        query=queries,
        headers=extra_headers,
        body=st.none() | bodies,
    )
    def run(
        method: str,
        real: bool,
        seg: str,
        sub: str,
        query: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> None:
        if method == "DELETE" and real:
            real = False  # keep the known job for the other examples
        job = fuzzer.known_job if real else seg
        path = f"/bulk-jobs/{job}{sub.replace('{s}', seg)}?{query}"
        ctype = {"Content-Type": "application/json"} if body is not None else {}
        fuzzer.send(method, path, body, {**ctype, **headers})

    run()


def test_fuzz_method_and_raw_target(fuzzer: Fuzzer) -> None:
    raw_paths = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80)

    @SETTINGS
    @given(
        method=st.from_regex(r"\A[A-Z]{1,10}\Z"),
        path=raw_paths,
        headers=extra_headers,
    )
    def run(method: str, path: str, headers: dict[str, str]) -> None:
        fuzzer.send(method, "/" + path.lstrip("/"), None, headers)

    run()
