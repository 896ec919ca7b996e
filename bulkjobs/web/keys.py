"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from ..security import KeyRing, TokenSigner
from ..service.engine import Engine
from ..service.jobs import JobService
from .slots import StreamSlots
from .waiters import WaitSlots

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
SERVICE = web.AppKey("service", JobService)
STREAMS = web.AppKey("streams", StreamSlots)
LONG_POLLS = web.AppKey("long_polls", WaitSlots)
KEYRING = web.AppKey("keyring", KeyRing)
#: Per request: the authenticated tenant (set by the auth middleware).
TENANT = web.RequestKey("tenant", str)
SIGNER = web.AppKey("signer", TokenSigner)
#: Per request: True when an API key or event token authenticated it.
AUTHENTICATED = web.RequestKey("authenticated", bool)
