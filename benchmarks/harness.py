"""What the benchmarks share: worker pools that end with the benchmark, and results that say where they came from.

- :func:`worker_pool` is a ``ProcessPoolExecutor`` (spawned workers) whose workers end when the benchmark does:
  on Ctrl-C, SIGTERM or SIGHUP the benchmark kills them before it exits, and each worker asks the kernel to kill
  it when its parent dies (``PR_SET_PDEATHSIG`` on Linux), so even a ``kill -9`` of the benchmark leaves no
  orphan training on the CPU (an earlier note found some eating the CPU for half an hour).
- :func:`provenance` is what every results file starts with: the command, the commit (and whether the work tree
  had changes), the machine, the time.
- :func:`reused_runs` reads the runs of an earlier results file for ``--reuse``, and refuses runs made by another
  commit unless asked (``--reuse-other-commit``): arms compared in one table must come from one commit.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_tuner.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def die_with_parent() -> None:
    """For ``subprocess.Popen(..., preexec_fn=die_with_parent)``: the child is killed when the benchmark dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _die_with_parent(parent: int) -> None:
    """A worker's initializer: the kernel kills this process when its parent (the benchmark) dies."""
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` spawned worker processes, all ended (killed) if the benchmark stops before they finish."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
                               initargs=(os.getpid(),))
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        yield pool
    except BaseException:
        for child in multiprocessing.active_children():
            child.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``k`` in ``n`` (95% by default); (0, 1) when nothing was counted."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return result.stdout.strip() if result.returncode == 0 else ""


def current_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


def provenance() -> dict[str, Any]:
    """Where a results file came from."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": current_commit(),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "machine": {"cores": os.cpu_count(), "cpu": cpu or platform.processor(),
                        "python": platform.python_version()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class ReuseError(SystemExit):
    """``--reuse`` of a file the benchmark must not take runs from; exits with its message."""


def reused_runs(path: Path | None, other_commit: bool = False, key: str = "runs") -> list[dict]:
    """The runs of an earlier results file (``{"provenance": ..., key: [...]}``), made by this commit, or by any
    with ``other_commit``. A file without provenance (written before it was recorded) counts as another commit."""
    if path is None:
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReuseError(f"--reuse {path}: cannot read it as a results file ({exc})") from None
    made_by = data.get("provenance", {}).get("commit") if isinstance(data, dict) else None
    runs = data.get(key, []) if isinstance(data, dict) else data
    here = current_commit()
    if made_by != here and not other_commit:
        raise ReuseError(f"--reuse {path}: its runs were made by commit {made_by or 'unrecorded'}, this is {here}; "
                         "arms compared in one table come from one commit (pass --reuse-other-commit to take them "
                         "anyway, and say so with the results)")
    return runs


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    """``results`` as JSON at ``path``, atomically (a killed benchmark leaves the last complete file)."""
    if path is not None:
        write_atomic(path, json.dumps(results, indent=1))
