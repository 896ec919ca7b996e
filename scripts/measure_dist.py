"""Start time and idle memory of the one-file build against `bulkjobs serve` from the venv.

    .venv/bin/python scripts/measure_dist.py [--binary dist/bulkjobs] [--runs 5]

Each run starts a fresh server in an empty temporary folder (new database; the one-file
build unpacks itself anew every start), times exec -> first 200 from /healthz, waits
`--idle-s`, and reads VmRSS of the serving process: for the one-file build the child
of the launcher, not the launcher. Runs alternate between the two, so load on the
machine hits both alike. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def server_pid(proc: subprocess.Popen[bytes], launcher: bool) -> int:
    if not launcher:
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.005)
    raise RuntimeError("no /healthz in time")


def one_run(cmd: list[str], launcher: bool, idle_s: float) -> tuple[float, float]:
    """(seconds from exec to the first 200 of /healthz, idle VmRSS MB of the server)."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        env = {"HOME": folder, "PATH": "/usr/bin:/bin", "TMPDIR": folder}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "serve", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
            start_s = time.perf_counter() - started
            time.sleep(idle_s)
            rss = vm_rss_mb(server_pid(proc, launcher))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return start_s, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(ROOT / "dist" / "bulkjobs"))
    parser.add_argument("--venv-bulkjobs", default=str(ROOT / ".venv" / "bin" / "bulkjobs"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as bin_dir:
        binary = Path(bin_dir) / "bulkjobs"
        shutil.copy2(args.binary, binary)  # from a folder with nothing else in it
        kinds = {"one-file": ([str(binary)], True), "venv": ([args.venv_bulkjobs], False)}
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for kind, (cmd, launcher) in kinds.items():
                results[kind].append(one_run(cmd, launcher, args.idle_s))
    size_mb = os.path.getsize(args.binary) / 1e6
    print(f"file {args.binary}: {size_mb:.1f} MB")
    print(f"{'':10} {'start->/healthz (median)':>26} {'idle RSS (median)':>18}  runs")
    for kind, runs in results.items():
        start = statistics.median(s for s, _ in runs)
        rss = statistics.median(r for _, r in runs)
        starts = " ".join(f"{s:.2f}" for s, _ in runs)
        print(f"{kind:10} {start:>24.2f} s {rss:>15.1f} MB  [{starts}]")


if __name__ == "__main__":
    main()
