"""Command line: `bulkjobs serve` runs the service; `submit`, `status`, `list`, `cancel`
and `results` are the client (bulkjobs.client.cli)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import attrs

from .client import cli as client_cli
from .config import ENV_PREFIX, Settings

#: (flag, settings field, help)
SERVE_FLAGS: list[tuple[str, str, str]] = [
    ("--host", "host", "interface to bind"),
    ("--port", "port", "TCP port"),
    ("--db", "db_path", "SQLite file for jobs (and the demo's orders)"),
    ("--workers", "workers", "number of worker coroutines"),
    ("--app", "app", "operations to serve, as module:registry"),
    ("--base-path", "base_path", "URL prefix for every route, e.g. /api"),
    ("--max-body-bytes", "max_body_bytes", "largest accepted request body"),
    ("--max-items", "max_items", "most items in one job"),
    ("--max-pending-items", "max_pending_items", "items waiting across all jobs before 503"),
    ("--default-ttl-s", "default_ttl_s", "how long finished jobs are kept, by default"),
    ("--max-ttl-s", "max_ttl_s", "longest ttl_seconds a job may ask for"),
    ("--tombstone-s", "tombstone_s", "how long a removed job's URL answers 410 before 404"),
    ("--idempotency-ttl-s", "idempotency_ttl_s", "how long Idempotency-Key records are kept"),
    ("--janitor-interval-s", "janitor_interval_s", "seconds between sweeps for expired jobs"),
    ("--shutdown-grace-s", "shutdown_grace_s", "how long SIGTERM waits for items in flight"),
    ("--sqlite-synchronous", "sqlite_synchronous", "NORMAL (crash-safe) or FULL (power-safe)"),
    ("--sse-heartbeat-s", "sse_heartbeat_s", "seconds between SSE comment heartbeats"),
    ("--sse-max-streams", "sse_max_streams", "open SSE streams before 503"),
    ("--long-poll-max-s", "long_poll_max_s", "longest accepted ?wait= on GET /bulk-jobs/{id}"),
    ("--webhook-timeout-s", "webhook_timeout_s", "seconds a webhook endpoint has to answer"),
    ("--webhook-concurrency", "webhook_concurrency", "webhook deliveries in flight at once"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulkjobs", description="Bulk operations as jobs.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Every flag can also be set by its environment variable.",
    )
    defaults = Settings()
    fields = {f.name: f for f in attrs.fields(Settings)}
    for flag, name, text in SERVE_FLAGS:
        env = ENV_PREFIX + name.upper()
        default = getattr(defaults, name)
        serve.add_argument(
            flag,
            dest=name,
            type=type(fields[name].default),
            default=None,
            help=f"{text} (env {env}, default {default!r})",
        )
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    client_cli.add_commands(sub)  # submit, status, list, cancel, results
    return parser


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .web import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {name: getattr(args, name) for _, name, _ in SERVE_FLAGS}
    try:
        settings = Settings.from_env(**overrides)
    except (ValueError, TypeError) as exc:
        print(f"bulkjobs: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_grace_s,
        access_log=None,
        print=lambda msg: logging.getLogger("bulkjobs").info("%s", msg.strip()),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return client_cli.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
