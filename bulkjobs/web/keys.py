"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from ..service.engine import Engine
from ..service.jobs import JobService
from .slots import StreamSlots

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
SERVICE = web.AppKey("service", JobService)
STREAMS = web.AppKey("streams", StreamSlots)
