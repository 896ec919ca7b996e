"""The API describes itself: the OpenAPI document, the /errors catalog, the README table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from bulkjobs.config import Settings
from bulkjobs.errors import CATALOG, catalog_markdown
from bulkjobs.models import (
    Job,
    JobError,
    JobStatus,
    new_job_id,
    utcnow,
)
from bulkjobs.outbox import DeliveryAttempt, Message, MessageStatus, WebhookSubscription
from bulkjobs.registry import Registry
from bulkjobs.service.webhooks import Delivery
from bulkjobs.web.docs import error_type_json
from bulkjobs.web.keys import ENGINE, SETTINGS
from bulkjobs.web.openapi import build_document, mounted_routes
from bulkjobs.web.representation import job_json
from bulkjobs.web.webhooks import delivery_json, subscription_json
from tests.support import submit, wait_terminal

ROOT = Path(__file__).resolve().parent.parent


async def test_document_is_valid_openapi_31(client: TestClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


async def test_every_mounted_route_is_documented(client: TestClient) -> None:
    app = client.app
    mounted = mounted_routes(app.router.routes(), "")
    full = build_document(app[SETTINGS], app[ENGINE].registry)
    documented = {(m.upper(), p) for p, ops in full["paths"].items() for m in ops}
    assert mounted - documented == set(), "routes missing from the OpenAPI document"
    served = (await (await client.get("/openapi.json")).json())["paths"]
    assert {(m.upper(), p) for p, ops in served.items() for m in ops} == mounted


async def test_base_path_is_honoured_everywhere(make_client: Any) -> None:
    client = await make_client(base_path="/api")
    doc = await (await client.get("/api/openapi.json")).json()
    assert doc["servers"] == [{"url": "/api"}]
    body = await submit_under(client, "/api")
    assert body["links"]["self"] == f"/api/bulk-jobs/{body['id']}"
    assert body["links"]["results"] == f"/api/bulk-jobs/{body['id']}/results"
    problem = await (await client.get("/api/bulk-jobs/job_0000000000000000000000000a")).json()
    assert problem["type"] == "/api/errors/job_not_found"
    assert (await client.get(problem["type"])).status == 200


async def submit_under(client: TestClient, base: str) -> dict[str, Any]:
    resp = await client.post(f"{base}/bulk-jobs", json={"operation": "noop", "items": [{}]})
    assert resp.status == 202
    body: dict[str, Any] = await resp.json()
    return body


async def test_submission_schema_lists_each_operation(client: TestClient) -> None:
    doc = await (await client.get("/openapi.json")).json()
    variants = doc["components"]["schemas"]["JobSubmission"]["oneOf"]
    names = {v["properties"]["operation"]["const"] for v in variants}
    ops = await (await client.get("/operations")).json()
    assert names == {o["name"] for o in ops["data"]}


@pytest.mark.parametrize("code", list(CATALOG))
async def test_every_problem_type_uri_is_served(client: TestClient, code: str) -> None:
    page = await client.get(f"/errors/{code}")
    assert page.status == 200 and page.content_type == "text/html"
    assert CATALOG[code].title.split()[0] in await page.text()
    data = await client.get(f"/errors/{code}", headers={"Accept": "application/json"})
    body = await data.json()
    assert body["code"] == code and body["status"] == CATALOG[code].status


async def test_problem_types_resolve(client: TestClient) -> None:
    resp = await client.get("/bulk-jobs?limit=0")
    problem = await resp.json()
    assert problem["type"] == "/errors/invalid_request"
    assert (await client.get(problem["type"])).status == 200
    missing = await client.get("/errors/no_such_code")
    assert missing.status == 404 and (await missing.json())["code"] == "not_found"


async def test_error_list_and_operations_item_codes(client: TestClient) -> None:
    listing = await (await client.get("/errors")).json()
    assert [e["code"] for e in listing["data"]] == list(CATALOG)
    assert "timeout" in listing["item_error_codes"]
    ops = {o["name"]: o for o in (await (await client.get("/operations")).json())["data"]}
    assert "order_not_found" in ops["update_orders_status"]["item_error_codes"]


async def test_live_retry_and_results_responses_match(client: TestClient) -> None:
    # The api_contract fixture validates these responses against the document.
    body = await submit(client, "echo", [{"n": 1, "fail": "nope"}, {"n": 2}])
    await wait_terminal(client, body["id"])
    retry = await client.post(f"/bulk-jobs/{body['id']}/retry")
    assert retry.status == 202
    for fmt in ("ndjson", "csv"):
        assert (await client.get(f"/bulk-jobs/{body['id']}/results?format={fmt}")).status == 200


def _readme_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts/gen_error_catalog.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_readme_catalog_is_generated_from_the_code() -> None:
    gen = _readme_generator()
    readme = (ROOT / "README.md").read_text()
    assert gen.BEGIN in readme, "README lacks the generated error catalog block"
    assert catalog_markdown() in readme
    assert gen.render(readme) == readme, "README error catalog is stale: run `make catalog`"


def test_readme_flags_table_is_generated_from_the_cli() -> None:
    gen = _readme_generator()
    readme = (ROOT / "README.md").read_text()
    assert gen.FLAGS_BEGIN in readme, "README lacks the generated flags block"
    assert gen.render(readme) == readme, "README flags table is stale: run `make catalog`"


def test_every_setting_is_a_flag_or_documented_env_only() -> None:
    import attrs

    from bulkjobs.cli import ENV_ONLY, SERVE_FLAGS
    from bulkjobs.config import Settings

    documented = {name for _, name, _ in SERVE_FLAGS} | {name for name, _ in ENV_ONLY}
    assert {f.name for f in attrs.fields(Settings)} == documented


def _conforms(doc: dict[str, Any], name: str, instance: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return Draft202012Validator(schema).is_valid(instance)


def _wire_doc() -> dict[str, Any]:
    return build_document(Settings(db_path="unused"), Registry())


def test_job_representation_matches_its_wire() -> None:
    doc = _wire_doc()
    now = utcnow()
    fresh = Job(new_job_id(), "noop", JobStatus.PENDING, 2)
    error = JobError("too_many_failures", "m")
    done = attrs.evolve(fresh, status=JobStatus.FAILED, failed=2, error=error)
    done = attrs.evolve(done, started_at=now, completed_at=now, expires_at=now)
    for job in (fresh, done):
        assert _conforms(doc, "Job", job_json(job, "/api", events_token="t"))
    assert set(job_json(done, "")) == set(doc["components"]["schemas"]["Job"]["properties"])


async def test_item_representation_matches_its_wire(client: TestClient) -> None:
    # item_json's input type is the store's business: check what it answers instead
    body = await submit(client, "echo", [{"n": 1, "fail": "nope", "id": "a"}, {"n": 2}])
    await wait_terminal(client, body["id"])
    items = (await (await client.get(f"/bulk-jobs/{body['id']}/items")).json())["data"]
    doc = _wire_doc()
    assert all(_conforms(doc, "Item", item) for item in items)
    assert set().union(*items) == set(doc["components"]["schemas"]["Item"]["properties"])


def test_webhook_and_catalog_representations_match_their_wires() -> None:
    doc, now = _wire_doc(), utcnow()
    url = "https://example.com/hook"
    pending = MessageStatus.PENDING
    message = Message(1, "msg_1", 1, "job_1", "job.done", now, pending, 1, 0, now, None, url, b"")
    attempts = [DeliveryAttempt(now, 12, 500, "HTTP 500", now), DeliveryAttempt(now, 3)]
    assert _conforms(doc, "Delivery", delivery_json(Delivery(message, attempts), "/x"))
    for gone in (None, now):
        sub = WebhookSubscription(1, url, ("job.completed",), gone)
        assert _conforms(doc, "WebhookState", subscription_json(sub))
    for ptype in CATALOG.values():
        assert _conforms(doc, "ErrorType", error_type_json(ptype, "/api"))
