"""The job resource as one request sees it: under the base path, with a signed
events link when API keys are in use."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..models import Job
from .auth import events_token
from .keys import SETTINGS
from .representation import job_json


def render_job(request: web.Request, job: Job) -> dict[str, Any]:
    return job_json(job, request.app[SETTINGS].base_path, events_token(request, job.id))
