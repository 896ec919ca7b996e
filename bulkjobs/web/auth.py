"""Authentication: `Authorization: Bearer <key>` maps a request to its tenant.

With no keys configured the server is open and everything belongs to the tenant
`default`. Event streams also accept `?token=`, a signed, expiring token scoped to one
job (or, for the tenant-wide `GET /events`, to the scope `*`, which no job id can
equal), because browsers cannot set headers on `EventSource`. `bulkjobs serve` reloads
the keys on SIGHUP (`reload_keys_on_sighup`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .. import paths
from ..errors import BulkJobsError
from ..security import KeyConfigError, KeyRing
from .keys import AUTHENTICATED, KEYRING, SETTINGS, SIGNER, TENANT

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
#: The token scope of the tenant-wide event stream (job ids are `job_...`).
TENANT_EVENTS_SCOPE = "*"
TENANT_EVENTS_PATH = paths.EVENTS

#: Paths (after the base path) that never need a key.
_PUBLIC_EXACT = frozenset({"", "/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/errors"})
_PUBLIC_PREFIXES = ("/errors/", "/dashboard/")
_CHALLENGE = 'Bearer realm="bulkjobs"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tenant_of(request: web.Request) -> str:
    """The tenant a request acts for (set by the middleware)."""
    return str(request.get(TENANT, DEFAULT_TENANT))


def _is_public(request: web.Request) -> bool:
    if request.match_info.http_exception is not None:
        return True  # no such route (or method): the 404/405 tells nothing secret
    path = request.path.removeprefix(request.app[SETTINGS].base_path)
    return path in _PUBLIC_EXACT or path.startswith(_PUBLIC_PREFIXES)


def _unauthorized(detail: str, error: str | None = None) -> BulkJobsError:
    challenge = _CHALLENGE + (f', error="{error}"' if error else "")
    return BulkJobsError("unauthorized", detail, headers={"WWW-Authenticate": challenge})


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _authenticate(request: web.Request) -> str:
    keyring = request.app[KEYRING]
    key = _bearer(request)
    if key is not None:
        tenant = keyring.tenant_for(key)
        if tenant is None:
            raise _unauthorized("The API key is not valid.", "invalid_token")
        return tenant
    token = request.query.get("token")
    scope = _token_scope(request)
    if token and scope:
        tenant = request.app[SIGNER].check(token, scope)
        if tenant is None:
            raise _unauthorized("The event-stream token is invalid or expired.", "invalid_token")
        return tenant
    raise _unauthorized("Send `Authorization: Bearer <API key>`.")


def _token_scope(request: web.Request) -> str | None:
    """What an events token may open here: one job's stream, or the tenant's."""
    path = request.path.removeprefix(request.app[SETTINGS].base_path)
    if path == TENANT_EVENTS_PATH:
        return TENANT_EVENTS_SCOPE
    job_id = request.match_info.get("job_id")
    return job_id if job_id and path.endswith("/events") else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set the request's tenant, or refuse it with 401 when keys are configured."""
    if not request.app[KEYRING].enabled or _is_public(request):
        request[TENANT] = DEFAULT_TENANT
    else:
        request[TENANT] = _authenticate(request)
        request[AUTHENTICATED] = True
    return await handler(request)


def events_token(request: web.Request, job_id: str) -> str | None:
    """A token for the job's event stream, when keys are configured."""
    if not request.app[KEYRING].enabled:
        return None
    return request.app[SIGNER].sign(job_id, tenant_of(request))


def tenant_events_token(request: web.Request) -> str | None:
    """A token for the caller's tenant-wide event stream, when keys are configured."""
    if not request.app[KEYRING].enabled:
        return None
    return request.app[SIGNER].sign(TENANT_EVENTS_SCOPE, tenant_of(request))


def reload_keys(app: web.Application) -> bool:
    """Read the configured keys again and swap them in; a bad source keeps the old keys."""
    settings = app[SETTINGS]
    if not (settings.api_keys_file or settings.api_keys):
        logger.warning("API keys not reloaded: none are configured (the server runs open)")
        return False
    try:
        ring = KeyRing.load(settings.api_keys_file, settings.api_keys)
    except (KeyConfigError, OSError, UnicodeDecodeError) as exc:
        logger.error("API keys not reloaded, the old keys stay in use: %s", exc)
        return False
    app[KEYRING].replace(ring)
    logger.info("API keys reloaded: %d keys", len(ring.tenants_by_hash))
    return True


async def reload_keys_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """A `cleanup_ctx`: SIGHUP reloads the API keys while the app runs."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload_keys, app)
    yield
    loop.remove_signal_handler(signal.SIGHUP)
