"""`bulkjobs submit | status | list | cancel | results`: the client from a shell.

Exit codes: 0 success (with `--wait`: every item succeeded), 2 some items failed,
1 the job failed or was cancelled, or any error. Progress goes to stderr, and only
when stderr is a terminal; `--json` prints machine-readable results on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from .. import jsonutil
from ..csvcells import safe_cell
from .api import BulkJobsClient
from .errors import ApiError, ClientError, Unauthorized, WaitTimeout
from .inputs import FORMATS, InputError, detect_format, failure_rows, read_items, write_csv
from .models import RemoteJob
from .progress import ProgressBar

EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED = 0, 1, 2
Command = Callable[[argparse.Namespace, BulkJobsClient], Awaitable[int]]


def add_commands(sub: Any) -> None:
    """Register the client commands on the `bulkjobs` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("BULKJOBS_URL") or "http://127.0.0.1:8080",
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
        ("status", "show one job", cmd_status),
        ("cancel", "cancel a job", cmd_cancel),
    ):
        p = sub.add_parser(name, parents=[common], help=helptext, description=helptext)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(client_command=command)
    _list_parser(sub, common)
    _results_parser(sub, common)


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
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("bulkjobs: interrupted (the job goes on on the server)", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace) -> int:
    command: Command = args.client_command
    try:
        async with BulkJobsClient(args.url, api_key=args.api_key) as client:
            return await command(args, client)
    except (ClientError, InputError, OSError) as exc:
        _report(exc, args.json)
        return EXIT_ERROR


def _report(exc: Exception, as_json: bool) -> None:
    if as_json and isinstance(exc, ApiError):
        print(jsonutil.dumps_str({"error": exc.problem}), file=sys.stderr)
        return
    print(f"bulkjobs: error: {exc}", file=sys.stderr)
    if isinstance(exc, ApiError):
        for err in exc.errors[:10]:
            print(f"  {err.get('pointer')}: {err.get('detail')}", file=sys.stderr)


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(jsonutil.dumps_str(data) if args.json else human)


# -- commands ----------------------------------------------------------------


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
        started = time.monotonic()
        job = await _follow(client, job, args.timeout)
        written = await _write_failures(client, job, args, path, fmt, schema)
    _emit(args, job.raw, _summary(job, time.monotonic() - started, written, args.failures))
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


async def _follow(client: BulkJobsClient, job: RemoteJob, timeout_s: float | None) -> RemoteJob:
    if not sys.stderr.isatty():
        return await client.wait(job.id, timeout=timeout_s)
    bar = ProgressBar(sys.stderr)
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await _follow_with_bar(client, job, bar)
    except TimeoutError:
        if deadline.expired():
            raise WaitTimeout(job.id, timeout_s or 0.0) from None
        raise
    finally:
        bar.close()


async def _follow_with_bar(client: BulkJobsClient, job: RemoteJob, bar: ProgressBar) -> RemoteJob:
    try:
        async for event in client.events(job.id):
            total = event.count("total_items") or job.total_items
            bar.update(event.count("processed"), total, event.count("failed"))
    except Unauthorized:
        raise
    except ClientError:
        return await client.poll(job.id)  # no event stream: poll quietly
    final = await client.get(job.id)
    bar.update(final.processed, final.total_items, final.failed, force=True)
    return final


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
    text = (
        f"{job.id} {job.status}: {job.succeeded:,} succeeded, {job.failed:,} failed,"
        f" {job.cancelled:,} cancelled of {job.total_items:,} items in {elapsed_s:.1f} s"
    )
    if job.error is not None:
        text += f"\njob error: {job.error.code}: {job.error.message}"
    if written:
        text += f"\n{written:,} failed items written to {failures}"
    return text


async def cmd_status(args: argparse.Namespace, client: BulkJobsClient) -> int:
    job = await client.get(args.job_id)
    _emit(args, job.raw, describe(job))
    return EXIT_OK


def describe(job: RemoteJob) -> str:
    """A few human lines about a job."""
    lines = [
        f"{job.id}  {job.operation}  {job.status}  {job.progress:.1%}",
        f"  items: {job.total_items:,} total, {job.processed:,} processed,"
        f" {job.succeeded:,} succeeded, {job.failed:,} failed, {job.cancelled:,} cancelled",
        f"  created {job.created_at}  completed {job.completed_at}",
    ]
    if job.error is not None:
        lines.append(f"  error: {job.error.code}: {job.error.message}")
    return "\n".join(lines)


async def cmd_list(args: argparse.Namespace, client: BulkJobsClient) -> int:
    jobs: list[RemoteJob] = []
    page_size = max(1, min(args.limit, 1000))
    async for job in client.list(status=args.status, operation=args.operation, page_size=page_size):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    human = "\n".join(
        f"{j.id}  {j.operation:<24} {j.status:<10} {j.progress:>7.1%}  {j.created_at}" for j in jobs
    )
    _emit(args, [j.raw for j in jobs], human or "no jobs")
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace, client: BulkJobsClient) -> int:
    job = await client.cancel(args.job_id)
    _emit(args, job.raw, f"{job.id} {job.status}")
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
