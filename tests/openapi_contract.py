"""Validates every live response of the test suite against the app's OpenAPI document.

`ApiContract.install(app)` adds an outermost middleware that matches each request to
a documented path and method, checks that the status is documented, that the media
type is one the document lists, and validates JSON bodies with jsonschema (2020-12,
the dialect of OpenAPI 3.1). Violations are collected and fail the test at teardown.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bulkjobs.web.keys import ENGINE, SETTINGS
from bulkjobs.web.openapi import build_document

DOC_URI = "urn:bulkjobs:openapi"


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class ApiContract:
    """Collects responses that the document does not describe."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.checked = 0

    def install(self, app: web.Application) -> None:
        doc = build_document(app[SETTINGS], app[ENGINE].registry)  # documented, mounted or not
        checker = _Checker(doc, app[SETTINGS].base_path, self)
        app.middlewares.insert(0, checker.middleware)


class _Checker:
    def __init__(self, doc: dict[str, Any], base: str, sink: ApiContract) -> None:
        self.doc = doc
        self.base = base
        self.sink = sink
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
        self.templates = [
            (re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # 3xx raised by handlers: check, then pass on
            self.check(request, exc.status, exc.content_type, None)
            raise
        body = resp.body if isinstance(resp, web.Response) else None
        self.check(request, resp.status, resp.content_type, body)
        return resp

    def check(self, request: web.Request, status: int, media: str, body: Any) -> None:
        self.sink.checked += 1
        where = f"{request.method} {request.path_qs} -> {status}"
        try:
            problem = self._problem(request, status, media, body)
        except Exception as exc:  # the checker itself must never hide a response
            problem = f"checker error {exc!r}"
        if problem:
            self.sink.violations.append(f"{where}: {problem}")

    def _problem(self, request: web.Request, status: int, media: str, body: Any) -> str | None:
        rel = request.path[len(self.base) :] if self.base else request.path
        template = next((t for rx, t in self.templates if rx.match(rel or "/")), None)
        if template is None:
            return None if status in (404, 405) else "path not documented"
        op = self.doc["paths"][template].get(request.method.lower())
        if op is None:
            return None if status == 405 else "method not documented"
        responses = op["responses"]
        if str(status) not in responses:
            return f"status not documented for {template} (has {sorted(responses)})"
        content = responses[str(status)].get("content")
        if not content or status in (204, 304) or request.method == "HEAD":
            return None
        if media not in content:
            return f"media type {media!r} not in {sorted(content)}"
        if not media.endswith("json") or not isinstance(body, bytes):
            return None
        pointer = "/".join(
            _escape(t) for t in ("paths", template, request.method.lower(), "responses")
        )
        pointer += f"/{status}/content/{_escape(media)}/schema"
        return self._validate(json.loads(body), pointer)

    def _validate(self, instance: Any, pointer: str) -> str | None:
        schema = {"$ref": f"{DOC_URI}#/{pointer}"}
        validator = Draft202012Validator(schema, registry=self.registry)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        if not errors:
            return None
        e = errors[0]
        return f"body violates schema at /{'/'.join(map(str, e.path))}: {e.message[:300]}"
