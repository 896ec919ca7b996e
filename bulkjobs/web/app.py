"""The application factory: routes under the base path, the problem middleware, and
the engine's lifecycle bound to the app's (`cleanup_ctx`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Settings
from ..registry import Registry, load_registry
from ..security import KeyRing, TokenSigner
from ..service.engine import Engine
from ..service.jobs import JobService
from . import dashboard, docs, metrics, results, sse, webhooks
from . import routes as job_routes
from .auth import auth_middleware
from .headers import add_security_headers
from .keys import ENGINE, KEYRING, LONG_POLLS, SERVICE, SETTINGS, SIGNER, STREAMS
from .origin import open_mode_middleware
from .problems import problem_middleware
from .representation import job_json
from .slots import StreamSlots
from .waiters import WaitSlots

#: Every route table of the API; each is mounted under the configured base path.
ROUTE_TABLES: list[web.RouteTableDef] = [
    job_routes.routes,
    sse.routes,
    dashboard.routes,
    results.routes,
    docs.routes,
    webhooks.routes,
    metrics.routes,
]


def create_app(
    settings: Settings | None = None, registry: Registry | None = None
) -> web.Application:
    """A ready-to-run application; the engine starts with the app and stops with it."""
    settings = settings or Settings.from_env()
    registry = registry or load_registry(settings.app)
    app = web.Application(
        middlewares=[problem_middleware, open_mode_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
    )
    base = settings.base_path
    engine = Engine(settings, registry, render_job=lambda job: job_json(job, base))
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[SERVICE] = JobService(engine)
    app[STREAMS] = StreamSlots(settings.sse_max_streams)
    app[LONG_POLLS] = WaitSlots(settings.long_poll_max_waiting, settings.long_poll_max_per_tenant)
    app[KEYRING] = KeyRing.load(settings.api_keys_file, settings.api_keys)
    app[SIGNER] = TokenSigner(ttl_s=settings.events_token_ttl_s)
    for table in ROUTE_TABLES:
        for route in table:
            assert isinstance(route, web.RouteDef)
            app.router.add_route(route.method, settings.base_path + route.path, route.handler)
    app.on_response_prepare.append(add_security_headers)
    app.cleanup_ctx.append(_engine_ctx)
    app.on_shutdown.append(_begin_drain)
    return app


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    await engine.start()
    app[SIGNER].use_secret(engine.events_secret)
    yield
    await engine.stop()


async def _begin_drain(app: web.Application) -> None:
    # Runs before cleanup: refuse new jobs and close event streams so that open
    # connections end promptly instead of holding the shutdown timeout.
    app[ENGINE].begin_drain()
