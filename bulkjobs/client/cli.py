"""`bulkjobs submit | watch | status | list | items | results | cancel | retry | delete |
operations`: the client from a shell.

Exit codes: 0 success (with `--wait`/`watch`: every item succeeded), 2 some items
failed, 1 the job failed or was cancelled, or any error, 130 interrupted (the job goes
on). Progress goes to stderr: a live bar on a terminal, plain periodic lines elsewhere;
`--json` prints machine-readable results on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import jsonutil
from ..csvcells import safe_cell
from .api import BulkJobsClient
from .errors import ApiError, ClientError, ServerUnreachable, Unauthorized, WaitTimeout
from .inputs import FORMATS, InputError, detect_format, failure_rows, read_items, write_csv
from .models import RemoteJob
from .progress import Counts, ProgressView, describe_counts
from .transport import RequestRetry
from .views import describe, items_table, jobs_table, operations_table, print_human

EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_URL = "http://127.0.0.1:8080"
Command = Callable[[argparse.Namespace, BulkJobsClient], Awaitable[int]]
#: Fewer retries than the library's default: a person waits at the prompt, and
#: "no server" should say so within a second.
CLI_RETRY = RequestRetry(max_attempts=3)


def version_text() -> str:
    """`bulkjobs 0.1.0` (the installed distribution's version)."""
    try:
        return f"bulkjobs {metadata.version('bulkjobs')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        return "bulkjobs (not installed)"


def add_commands(sub: Any) -> None:
    """Register the client commands on the `bulkjobs` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("BULKJOBS_URL") or DEFAULT_URL,
        help="server URL incl. any base path (env BULKJOBS_URL)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("BULKJOBS_API_KEY") or None,
        help="API key sent as a Bearer token (env BULKJOBS_API_KEY)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    _submit_parser(sub, common)
    for name, helptext, command in (
        ("watch", "follow a job with a progress bar until it ends", cmd_watch),
        ("status", "show one job: progress, rate, ETA, times", cmd_status),
        ("cancel", "cancel a job", cmd_cancel),
        ("retry", "submit a finished job's failed items as a new job", cmd_retry),
        ("delete", "delete a finished job and its items", cmd_delete),
    ):
        p = sub.add_parser(name, parents=[common], help=helptext, description=helptext)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(client_command=command)
    _list_parser(sub, common)
    _items_parser(sub, common)
    _results_parser(sub, common)
    p = sub.add_parser("operations", parents=[common], help="list the registered operations")
    p.set_defaults(client_command=cmd_operations)


def _submit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a file of items as a job",
        description="Submit FILE (NDJSON, JSON array or CSV with a header row; - for stdin)"
        " as a job of OPERATION. CSV columns starting with _ are ignored.",
    )
    p.add_argument("operation", metavar="OPERATION")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=FORMATS, help="input format (default: from the file)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end")
    p.add_argument("--failures", type=Path, metavar="OUT.csv", help="write failed items (--wait)")
    p.add_argument(
        "--csv-raw",
        action="store_true",
        help="write --failures cells as they are (by default a cell that starts with"
        " = + - @ gets a ' in front, so spreadsheets do not run it as a formula)",
    )
    p.add_argument("--ttl-seconds", type=int, help="keep the finished job this long")
    p.add_argument("--idempotency-key", help="default: a fresh random key")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.set_defaults(client_command=cmd_submit)


def _list_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", help="pending, running, completed, failed or cancelled")
    p.add_argument("--operation")
    p.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    p.set_defaults(client_command=cmd_list)


def _items_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("items", parents=[common], help="show a job's item outcomes")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--status", help="succeeded, failed, cancelled or pending")
    p.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
    p.set_defaults(client_command=cmd_items)


def _results_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("results", parents=[common], help="download a job's results")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--format", choices=("ndjson", "csv"), default="ndjson")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    p.add_argument("--status", help="only items with this status, e.g. failed")
    p.add_argument("--partial", action="store_true", help="allow a job that is still running")
    p.set_defaults(client_command=cmd_results)


def run(args: argparse.Namespace) -> int:
    """Run a client command; errors become a message on stderr and exit code 1."""
    args.following = None
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        if args.following:
            print(
                f"bulkjobs: stopped following; {args.following} goes on running on the server."
                f"\nFollow it again with: bulkjobs watch {args.following}",
                file=sys.stderr,
            )
        else:
            print("bulkjobs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


async def _run(args: argparse.Namespace) -> int:
    command: Command = args.client_command
    try:
        async with BulkJobsClient(args.url, api_key=args.api_key, retry=CLI_RETRY) as client:
            try:
                return await command(args, client)
            except ApiError as exc:
                if exc.code == "unknown_operation" and getattr(args, "operation", None):
                    exc.args = (await _unknown_operation(client, args.operation),)
                raise
    except (ClientError, InputError, OSError) as exc:
        _report(exc, args)
        return EXIT_ERROR


async def _unknown_operation(client: BulkJobsClient, name: str) -> str:
    """`unknown operation 'x'; registered: a, b. Did you mean 'a'?`"""
    names = sorted(str(op.get("name")) for op in await client.operations())
    text = f"unknown operation {name!r}; registered: {', '.join(names) or '(none)'}."
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return text + (f" Did you mean {close[0]!r}?" if close else "")


def _report(exc: Exception, args: argparse.Namespace) -> None:
    if args.json and isinstance(exc, ApiError):
        print(jsonutil.dumps_str({"error": exc.problem}), file=sys.stderr)
        return
    if isinstance(exc, ServerUnreachable):
        print(
            f"bulkjobs: no bulkjobs server at {args.url} — is it running?"
            " set --url or BULKJOBS_URL",
            file=sys.stderr,
        )
        return
    print(f"bulkjobs: error: {exc}", file=sys.stderr)
    if isinstance(exc, ApiError):
        for err in exc.errors[:10]:
            print(f"  {err.get('pointer')}: {err.get('detail')}", file=sys.stderr)


def _emit(args: argparse.Namespace, data: Any, human: Any) -> None:
    if args.json:
        print(jsonutil.dumps_str(data))
    else:
        print_human(human)


# -- submit and follow -------------------------------------------------------


async def cmd_submit(args: argparse.Namespace, client: BulkJobsClient) -> int:
    with _input_path(args.file) as path:
        fmt = args.format or detect_format(path)
        schema = await _schema(client, args.operation) if fmt == "csv" else None
        job = await client.submit(
            args.operation,
            read_items(path, fmt, schema),
            idempotency_key=args.idempotency_key,
            ttl_seconds=args.ttl_seconds,
        )
        if not args.wait:
            _emit(args, job.raw, job.id)
            return EXIT_OK
        print(f"submitted {job.id} ({job.total_items:,} items)", file=sys.stderr, flush=True)
        started = time.monotonic()
        job = await follow(client, job, args)
        written = await _write_failures(client, job, args, path, fmt, schema)
    _emit(args, job.raw, _summary(job, time.monotonic() - started, written, args.failures))
    return exit_code(job)


async def cmd_watch(args: argparse.Namespace, client: BulkJobsClient) -> int:
    started = time.monotonic()
    job = await follow(client, await client.get(args.job_id), args)
    _emit(args, job.raw, _summary(job, time.monotonic() - started, 0, None))
    return exit_code(job)


def exit_code(job: RemoteJob) -> int:
    """0 when every item succeeded, 2 when some failed, 1 when the job did not complete."""
    if job.status != "completed":
        return EXIT_ERROR
    return EXIT_OK if job.all_succeeded else EXIT_SOME_FAILED


async def _schema(client: BulkJobsClient, operation: str) -> dict[str, Any] | None:
    for op in await client.operations():
        if op.get("name") == operation:
            schema: dict[str, Any] = op.get("item_schema") or {}
            return schema
    return None  # the server will answer unknown_operation


@contextlib.contextmanager
def _input_path(name: str) -> Iterator[Path]:
    """The file to read; stdin is copied to a temporary file so it can be read twice."""
    if name != "-":
        yield Path(name)
        return
    with tempfile.NamedTemporaryFile(prefix="bulkjobs-stdin-") as tmp:
        shutil.copyfileobj(sys.stdin.buffer, tmp)
        tmp.flush()
        yield Path(tmp.name)


async def follow(client: BulkJobsClient, job: RemoteJob, args: argparse.Namespace) -> RemoteJob:
    """Follow `job` to its end, showing progress on stderr; `--timeout` bounds the wait."""
    timeout_s: float | None = getattr(args, "timeout", None)
    args.following = job.id  # Ctrl-C from here on says how to follow again
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            with ProgressView(sys.stderr, job.id) as view:
                return await _follow_events(client, job, view)
    except TimeoutError:
        if deadline.expired():
            raise WaitTimeout(job.id, timeout_s or 0.0) from None
        raise


async def _follow_events(client: BulkJobsClient, job: RemoteJob, view: ProgressView) -> RemoteJob:
    counts = Counts.from_job(job)
    view.update(counts, force=True)
    if job.is_terminal:
        return job
    try:
        async for event in client.events(job.id):
            counts = Counts.from_event(event, counts)
            view.update(counts)
    except Unauthorized:
        raise
    except ClientError:  # no event stream (e.g. too many open): poll, still drawing
        return await _poll(client, job.id, view)
    final = await client.get(job.id)
    view.update(Counts.from_job(final), force=view.is_terminal)
    return final


async def _poll(client: BulkJobsClient, job_id: str, view: ProgressView) -> RemoteJob:
    while not (job := await client.get(job_id)).is_terminal:
        view.update(Counts.from_job(job))
        await asyncio.sleep(client.poll_interval_s)
    view.update(Counts.from_job(job), force=view.is_terminal)
    return job


async def _write_failures(
    client: BulkJobsClient,
    job: RemoteJob,
    args: argparse.Namespace,
    path: Path,
    fmt: str,
    schema: dict[str, Any] | None,
) -> int:
    if args.failures is None or job.failed == 0:
        return 0
    failures = {
        int(r["index"]): r.get("error") or {}
        async for r in client.results(job.id, status="failed", partial=True)
    }
    rows = list(failure_rows(read_items(path, fmt, schema), failures))
    if not args.csv_raw:
        rows = [{k: safe_cell(v) for k, v in row.items()} for row in rows]
    write_csv(args.failures, rows)
    return len(rows)


def _summary(job: RemoteJob, elapsed_s: float, written: int, failures: Path | None) -> str:
    counts = Counts.from_job(job)
    text = (
        f"{job.id} {job.status}: {describe_counts(counts)}; {job.succeeded:,} succeeded,"
        f" {job.failed:,} failed in {elapsed_s:.1f} s"
    )
    if job.error is not None:
        text += f"\njob error: {job.error.code}: {job.error.message}"
    if written:
        text += f"\n{written:,} failed items written to {failures}"
    return text


# -- one-shot commands -------------------------------------------------------


async def cmd_status(args: argparse.Namespace, client: BulkJobsClient) -> int:
    job = await client.get(args.job_id)
    _emit(args, job.raw, describe(job))
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, client: BulkJobsClient) -> int:
    jobs: list[RemoteJob] = []
    page_size = max(1, min(args.limit, 1000))
    async for job in client.list(status=args.status, operation=args.operation, page_size=page_size):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    _emit(args, [j.raw for j in jobs], jobs_table(jobs) if jobs else "no jobs")
    return EXIT_OK


async def cmd_items(args: argparse.Namespace, client: BulkJobsClient) -> int:
    rows: list[dict[str, Any]] = []
    page_size = max(1, min(args.limit or 1000, 1000))
    async for row in client.items(args.job_id, status=args.status, page_size=page_size):
        rows.append(row)
        if args.limit and len(rows) >= args.limit:
            break
    _emit(args, rows, items_table(rows) if rows else "no items")
    return EXIT_OK


async def cmd_operations(args: argparse.Namespace, client: BulkJobsClient) -> int:
    ops = await client.operations()
    _emit(args, ops, operations_table(ops))
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace, client: BulkJobsClient) -> int:
    job = await client.cancel(args.job_id)
    _emit(args, job.raw, f"{job.id} {job.status}: {describe_counts(Counts.from_job(job))}")
    return EXIT_OK


async def cmd_retry(args: argparse.Namespace, client: BulkJobsClient) -> int:
    job = await client.retry(args.job_id)
    human = (
        f"{job.id} retries the {job.total_items:,} failed items of {args.job_id}"
        f"\nfollow it with: bulkjobs watch {job.id}"
    )
    _emit(args, job.raw, human)
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace, client: BulkJobsClient) -> int:
    await client.delete(args.job_id)
    _emit(args, {"id": args.job_id, "deleted": True}, f"{args.job_id} deleted")
    return EXIT_OK


async def cmd_results(args: argparse.Namespace, client: BulkJobsClient) -> int:
    options = {"format": args.format, "status": args.status, "partial": args.partial}
    if args.output is None:
        await client.download(args.job_id, sys.stdout.buffer, **options)
        sys.stdout.buffer.flush()
        return EXIT_OK
    with args.output.open("wb") as out:
        written = await client.download(args.job_id, out, **options)
    print(f"{written:,} bytes written to {args.output}", file=sys.stderr)
    return EXIT_OK
