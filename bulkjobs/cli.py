"""Command line: `bulkjobs serve` runs the service; `submit`, `status`, `list`, `cancel`
and `results` are the client (bulkjobs.client.cli)."""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from .client import cli as client_cli
from .config import ENV_PREFIX, Settings, flag_of
from .version import VersionAction

#: (flag, settings field, help) of every `serve` flag, from the settings' own fields
SERVE_FLAGS: list[tuple[str, str, str]] = [
    (flag, f.name, f.metadata["help"])
    for f in attrs.fields(Settings)
    if (flag := flag_of(f)) is not None
]

#: Settings only the environment sets (secrets stay out of process listings)
ENV_ONLY: list[tuple[str, str]] = [
    (f.name, f.metadata["help"]) for f in attrs.fields(Settings) if flag_of(f) is None
]


def is_loopback(host: str) -> bool:
    """True when `host` names only this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulkjobs", description="Bulk operations as jobs.")
    parser.add_argument("--version", action=VersionAction)
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
        kind = type(fields[name].default)
        helptext = f"{text} (env {env}, default {default!r})"
        if kind is bool:  # a bare boolean flag (`--insecure-open`) means true
            serve.add_argument(
                flag, dest=name, type=_parse_bool, nargs="?", const=True, help=helptext
            )
        else:
            serve.add_argument(flag, dest=name, type=kind, default=None, help=helptext)
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    keygen = sub.add_parser(
        "keygen",
        help="create an API key for a tenant",
        description="Print a new API key (give it to the client) and the line to add to the"
        " server's --api-keys-file (only the key's hash is stored).",
    )
    keygen.add_argument("tenant", help="tenant name: letters, digits, _ and -")
    whsec = sub.add_parser(
        "webhook-secret",
        help="print a tenant's webhook signing secret(s)",
        description="Print the whsec_ secret(s) that sign TENANT's webhooks, derived from"
        " BULKJOBS_WEBHOOK_SECRETS (one per server secret, in the same order; give them to"
        " the tenant). Without API keys the server secrets themselves sign.",
    )
    whsec.add_argument("tenant", help="tenant name, as in the API keys file")
    _add_backup_parser(sub)
    client_cli.add_commands(sub)  # submit, watch, status, list, items, results, cancel, ...
    return parser


def _add_backup_parser(sub: Any) -> None:
    backup = sub.add_parser(
        "backup",
        help="copy the SQLite database, safely while `serve` runs",
        description="Online backup of the SQLite database with SQLite's backup API: safe"
        " while `bulkjobs serve` writes to it. The copy is checked (PRAGMA integrity_check)"
        " before it replaces DEST. PostgreSQL: use pg_dump.",
    )
    backup.add_argument("dest", help="file to write, or a folder (a timestamped file in it)")
    backup.add_argument(
        "--db",
        dest="db_path",
        default=None,
        help=f"the database to copy (env {ENV_PREFIX}DB_PATH, default {Settings().db_path!r})",
    )


def backup(args: argparse.Namespace) -> int:
    from .store.backup import BackupError, run_backup

    try:
        source = args.db_path or Settings.from_env().db_path
        report = run_backup(source, args.dest)
    except (BackupError, ValueError) as exc:
        print(f"bulkjobs: {exc}", file=sys.stderr)
        return 2
    print(report.describe())
    return 0


def flags_markdown() -> str:
    """Every `bulkjobs serve` flag as a Markdown table (for the README)."""
    defaults = Settings()
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for flag, name, text in SERVE_FLAGS:
        default = getattr(defaults, name)
        shown = f"`{default}`" if default not in ("", None) else "(none)"
        lines.append(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {text} |")
    lines.append("| `--log-level` | | `INFO` | logging level |")
    for name, text in ENV_ONLY:
        lines.append(f"| (environment only) | `{ENV_PREFIX}{name.upper()}` | (none) | {text} |")
    return "\n".join(lines)


def _parse_bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


def keygen(args: argparse.Namespace) -> int:
    from .security import KeyConfigError, KeyRing, hash_key, new_key

    key = new_key()
    line = f"{args.tenant}:sha256:{hash_key(key)}"
    try:
        KeyRing.parse([line])
    except KeyConfigError:
        print("bulkjobs: tenant names use letters, digits, _ and - (1-64)", file=sys.stderr)
        return 2
    print(f"API key (give to the client, shown once): {key}")
    print(f"Add to the server's keys file:           {line}")
    return 0


def webhook_secret(args: argparse.Namespace) -> int:
    from .security import KeyConfigError, KeyRing
    from .signing import parse_secrets, tenant_secrets

    try:
        KeyRing.parse([f"{args.tenant}:sha256:{'0' * 64}"])
        settings = Settings.from_env()
    except (KeyConfigError, ValueError) as exc:
        detail = "tenant names use letters, digits, _ and - (1-64)"
        print(f"bulkjobs: {detail if isinstance(exc, KeyConfigError) else exc}", file=sys.stderr)
        return 2
    keys = parse_secrets(settings.webhook_secrets)
    if not keys:
        print("bulkjobs: BULKJOBS_WEBHOOK_SECRETS is not set", file=sys.stderr)
        return 2
    if not (settings.api_keys or settings.api_keys_file):
        print(
            "bulkjobs: note: a server without API keys signs with BULKJOBS_WEBHOOK_SECRETS itself",
            file=sys.stderr,
        )
    for secret in tenant_secrets(keys, args.tenant):
        print(secret)
    return 0


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .logs import setup_logging
    from .web import create_app
    from .web.accesslog import AccessLogger
    from .web.auth import reload_keys_on_sighup
    from .web.keys import KEYRING

    overrides = {name: getattr(args, name) for _, name, _ in SERVE_FLAGS}
    try:
        settings = Settings.from_env(**overrides)
        setup_logging(args.log_level, settings.log_format)
        if settings.no_http:
            return run_worker(settings)
        app = create_app(settings)
    except (ValueError, TypeError, OSError) as exc:
        print(f"bulkjobs: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("bulkjobs")
    if not app[KEYRING].enabled and not is_loopback(settings.host):
        if not settings.insecure_open:
            print(
                f"bulkjobs: refusing to serve {settings.host} without API keys; configure"
                " --api-keys-file (or BULKJOBS_API_KEYS), or pass --insecure-open",
                file=sys.stderr,
            )
            return 2
        log.warning("no API keys configured and bound to %s: anyone can reach it", settings.host)
    app.cleanup_ctx.append(reload_keys_on_sighup)  # kill -HUP: read the API keys again
    # What exists now (modules, app, registry) lives as long as the process: keep it out
    # of the cyclic GC's full collections, which otherwise stall the loop 20-30 ms each,
    # several times during a big job (most of a poll's p99 latency).
    gc.freeze()
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_grace_s,
            access_log=logging.getLogger("bulkjobs.access") if settings.access_log else None,
            access_log_class=AccessLogger,
            print=lambda msg: log.info("%s", msg.strip()),
        )
    except OSError as exc:  # the address is taken, or not ours to bind: one line, no trace
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        where = f"{settings.host}:{settings.port}"
        print(f"bulkjobs: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def run_worker(settings: Settings) -> int:
    """`serve --no-http`: the engine alone (workers, dispatcher, leases, maintenance,
    webhooks), no port bound; SIGTERM or Ctrl-C drains it in the order `serve` does."""
    import asyncio
    import signal

    from .registry import load_registry
    from .service.engine import Engine
    from .store.postgres import redact
    from .web.representation import job_json

    base = settings.base_path  # webhook bodies carry the same links as HTTP answers
    engine = Engine(settings, load_registry(settings.app), render_job=lambda j: job_json(j, base))
    gc.freeze()  # as in `serve`: long-lived objects stay out of full collections

    async def work_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await engine.start()
        log = logging.getLogger("bulkjobs")
        where = redact(settings.db_path)
        log.info("worker-only (--no-http): %d workers on %s", settings.workers, where)
        try:
            await stop.wait()
            log.info("stopping: draining work in flight")
        finally:
            await engine.stop()

    asyncio.run(work_until_signalled())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "keygen":
        return keygen(args)
    if args.command == "webhook-secret":
        return webhook_secret(args)
    if args.command == "backup":
        return backup(args)
    return client_cli.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
