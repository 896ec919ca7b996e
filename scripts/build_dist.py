"""Build dist/bulkjobs: one executable that needs no Python on the host (PyInstaller --onefile).

    .venv/bin/python scripts/build_dist.py                       # what `make dist` runs
    .venv/bin/python scripts/build_dist.py --app examples.custom_operation   # + your --app module

The file holds the interpreter, bulkjobs (every submodule, the dashboard's static
files, the demo operations), the PostgreSQL driver and the commit it was built from
(a generated `_bulkjobs_build_info` module in the build folder, never committed).
With --app, the named module (found from the repository root or PYTHONPATH) and what it
imports are bundled too: serve it with `bulkjobs serve --app MODULE:registry`.
Needs PyInstaller (`pip install -e '.[dist]'`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: imported lazily or by name at run time, so PyInstaller's import scan misses them
COLLECT = ["bulkjobs", "asyncpg", "aiosqlite", "orjson", "cattrs", "rich"]
HIDDEN = ["aiohttp_sse", "attrs", "prometheus_client", "_bulkjobs_build_info"]
#: in the venv for the tests, never imported by the service
EXCLUDE = ["tkinter", "pytest", "playwright", "hypothesis", "schemathesis", "mypy", "IPython"]


def git_commit() -> str:
    """The short hash of HEAD, "-dirty" when tracked files differ from it; "unknown"
    outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"], check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (done.stdout.strip() or "unknown") + ("-dirty" if changed else "")


def commit_epoch() -> str:
    """HEAD's commit time, for SOURCE_DATE_EPOCH (same commit, same timestamps)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip() or "0"
    except (OSError, subprocess.CalledProcessError):
        return "0"


def write_sources(work: Path, commit: str) -> Path:
    """The build-info module and the entry script, in the build folder; returns the entry."""
    gen = work / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "_bulkjobs_build_info.py").write_text(
        f'"""Written by scripts/build_dist.py."""\n\nCOMMIT = {commit!r}\n'
    )
    entry = gen / "bulkjobs_entry.py"
    entry.write_text("import sys\n\nfrom bulkjobs.cli import main\n\nsys.exit(main())\n")
    return entry


def pyinstaller_args(args: argparse.Namespace, entry: Path) -> list[str]:
    work = Path(args.workpath).resolve()
    cmd = [sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--clean"]
    cmd += ["--name", args.name, "--distpath", str(Path(args.distpath).resolve())]
    cmd += ["--workpath", str(work / "pyinstaller"), "--specpath", str(work)]
    cmd += ["--paths", str(ROOT), "--paths", str(entry.parent)]
    cmd += ["--log-level", "WARN", "--strip"]
    for package in COLLECT:
        cmd += ["--collect-submodules", package]
    cmd += ["--collect-data", "bulkjobs"]  # web/static/*
    for module in HIDDEN:
        cmd += ["--hidden-import", module]
    for module in EXCLUDE:
        cmd += ["--exclude-module", module]
    if args.app:
        # `module` or `module:registry`; what the module imports is found from it
        cmd += ["--hidden-import", args.app.partition(":")[0]]
    return [*cmd, str(entry)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="", help="your --app module to bundle, e.g. myapp.ops")
    parser.add_argument("--name", default="bulkjobs", help="file name (default bulkjobs)")
    parser.add_argument("--distpath", default=str(ROOT / "dist"), help="where the file goes")
    parser.add_argument("--workpath", default=str(ROOT / "build" / "dist"), help="build folder")
    args = parser.parse_args()
    commit = git_commit()
    entry = write_sources(Path(args.workpath).resolve(), commit)
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": commit_epoch()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = time.monotonic()
    done = subprocess.run(pyinstaller_args(args, entry), cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        print(f"build_dist: PyInstaller failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    out = Path(args.distpath).resolve() / args.name
    size_mb = out.stat().st_size / 1e6
    took_s = time.monotonic() - started
    print(f"built {out} ({size_mb:.1f} MB, commit {commit}) in {took_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
