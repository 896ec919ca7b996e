"""The README runs as written: every ```sh and ```python block not marked
`<!-- excerpt -->` runs, in order, against a live `bulkjobs serve` (the demo operations)
with a fresh database, from a folder that has the project's `.venv` and `examples`.

The only change made to a block is the server's address: `localhost:8080` and
`127.0.0.1:8080` become the test server's port, and `BULKJOBS_URL` points the CLI's
default there, so the test never needs port 8080.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from tests.serverproc import ROOT, ServerProcess

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXCERPT = "<!-- excerpt -->"


@attrs.frozen
class Block:
    lang: str
    code: str
    line: int
    excerpt: bool


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with whether the line before it marks it as an excerpt."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match[1], match[2], line, before.strip() == EXCERPT))
    return blocks


def runnable() -> list[Block]:
    blocks = readme_blocks(README.read_text())
    return [b for b in blocks if b.lang in ("sh", "python") and not b.excerpt]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(str(tmp_path / "bulkjobs.sqlite3"))  # fresh: every order pending
    await proc.start()
    yield proc
    await proc.stop()


async def run_block(block: Block, server: ServerProcess, workdir: Path) -> tuple[int, str, str]:
    code = re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{server.port}", block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKJOBS_")}
    env.pop("PYTHONPATH", None)  # as a user has it: only the venv
    env["BULKJOBS_URL"] = server.url
    if block.lang == "python":
        script = workdir / f"block_{block.line}.py"
        script.write_text(code)
        argv = [str(workdir / ".venv/bin/python"), script.name]
    else:
        argv = ["bash", "-o", "pipefail", "-c", code]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_excerpt_marker_is_found() -> None:
    blocks = readme_blocks("x\n<!-- excerpt -->\n```sh\nmake\n```\n\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.excerpt) for b in blocks] == [("sh", True), ("python", False)]


async def test_every_runnable_block_runs(server: ServerProcess, tmp_path: Path) -> None:
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(ROOT / ".venv")
    (workdir / "examples").symlink_to(ROOT / "examples")
    blocks = runnable()
    assert len(blocks) >= 4, "the quick start's curl, CLI and Python blocks run"
    outputs = []
    for block in blocks:
        code, out, err = await run_block(block, server, workdir)
        assert code == 0, f"README line {block.line} exited {code}:\n{out}\n{err}"
        assert "Traceback" not in err and "bulkjobs: error" not in err, (block.line, err)
        outputs.append(out)
    every = "\n".join(outputs)
    # curl: the job URL came from Location, the job answered, nothing failed
    assert re.search(r"^/bulk-jobs/job_\w+$", every, re.MULTILINE)
    assert '"operation":"update_orders_status"' in every and '{"data":[]' in every
    # the CLI: one of two failed, written to failed.csv; `list` printed its table
    assert "1 succeeded, 1 failed" in every
    failed = (workdir / "failed.csv").read_text()
    assert "nope" in failed and "order_not_found" in failed
    assert re.search(r"^ID\s+OPERATION\s+STATUS\s+PROGRESS\s+FAILED\s+CREATED", every, re.M)
    # the Python client: ord_127 cannot go from pending to delivered
    assert "completed 1 succeeded, 1 failed" in every and "invalid_transition" in every
    assert "completed 3 of 3 succeeded" in every  # SyncClient
