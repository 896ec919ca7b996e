"""What `bulkjobs --version` prints: the package version and the commit it was built from.

A one-file binary (scripts/build_dist.py) carries the commit in a module the build
writes (`_bulkjobs_build_info`, never committed); a source checkout asks git; anything
else says "unknown".
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__

#: the module scripts/build_dist.py writes into its build directory and bundles
BUILD_INFO_MODULE = "_bulkjobs_build_info"


def build_commit() -> str:
    """The short commit hash this code was built from, or "unknown"."""
    try:
        return str(importlib.import_module(BUILD_INFO_MODULE).COMMIT)
    except (ImportError, AttributeError):
        pass
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def version_text() -> str:
    """`bulkjobs 0.1.0 (commit 163c4fe)`."""
    return f"bulkjobs {__version__} (commit {build_commit()})"


class VersionAction(argparse.Action):
    """`--version`: print `version_text()` and exit; computed only when asked (git is not
    run on every start)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        kw.setdefault("help", "print the version and the build's commit, then exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        print(version_text())
        parser.exit()
