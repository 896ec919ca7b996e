from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bulkjobs.config import Settings
from bulkjobs.registry import Registry
from bulkjobs.web import create_app
from bulkjobs.web.accesslog import AccessLogger
from tests.openapi_contract import ApiContract
from tests.pg_support import (  # noqa: F401  (fixtures: PostgreSQL tests)
    create_database,
    drop_database,
    pg_cluster,
    pg_url,
)
from tests.support import Gate, make_registry

ClientFactory = Callable[..., Awaitable[TestClient]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_backends` run once on SQLite and once on PostgreSQL."""
    if "db_path" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        metafunc.parametrize("db_path", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The store of a test: a SQLite file, or (param "postgres") a fresh database."""
    if getattr(request, "param", "sqlite") != "postgres":
        yield str(tmp_path / "jobs.sqlite3")
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = await create_database(cluster)
    yield url
    await drop_database(cluster, url)


@pytest.fixture
def settings(db_path: str) -> Settings:
    return Settings(db_path=db_path, workers=4, shutdown_grace_s=2.0)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def api_contract() -> Iterator[ApiContract]:
    """Every response of apps made by `make_client` must match the OpenAPI document."""
    contract = ApiContract()
    yield contract
    assert not contract.violations, "responses outside the OpenAPI document:\n" + "\n".join(
        contract.violations[:20]
    )


@pytest.fixture
def make_client(
    settings: Settings, gate: Gate, api_contract: ApiContract, aiohttp_client: Any
) -> ClientFactory:
    """Start a real app (real SQLite file under tmp_path, or a PostgreSQL database for
    `both_backends` tests) with optional setting overrides.

    `settings` (so its store) comes first: set up before the client, torn down after."""

    async def factory(registry: Registry | None = None, **overrides: Any) -> TestClient:
        s = Settings(**{**_asdict(settings), **overrides})
        app = create_app(s, registry or make_registry(gate))
        api_contract.install(app)
        # the production access logger: it must never log query strings (tokens)
        server = TestServer(app)
        await server.start_server(access_log_class=AccessLogger)
        return await aiohttp_client(server)  # type: ignore[no-any-return]

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


def _asdict(s: Settings) -> dict[str, Any]:
    import attrs

    return attrs.asdict(s)
