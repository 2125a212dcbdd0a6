"""What the benchmarks share: worker pools that end with the benchmark, results that say where they came from, and
the pieces of a plan every benchmark would otherwise write again.

- :func:`worker_pool` is a ``ProcessPoolExecutor`` (spawned workers) whose workers end when the benchmark does:
  on Ctrl-C, SIGTERM or SIGHUP the benchmark kills them before it exits, and each worker asks the kernel to kill
  it when its parent dies (``PR_SET_PDEATHSIG`` on Linux), so even a ``kill -9`` of the benchmark leaves no
  orphan training on the CPU (an earlier note found some eating the CPU for half an hour).
- :func:`provenance` is what every results file starts with: the command, the commit (and whether the work tree
  had changes), the machine, the time.
- :func:`reused_runs` reads the runs of an earlier results file for ``--reuse``, and refuses runs made by another
  commit unless asked (``--reuse-other-commit``): arms compared in one table must come from one commit.
- :class:`Job` is one unit of a plan handed to a worker (a benchmark subclasses it with what its unit needs).
- :class:`EvalLog` records a run's evaluations as the trainer reports them, :func:`first_reaching` and
  :func:`first_step` find the first that reaches a target. A finished run's logs are read with
  :mod:`smart_tuner.run_logs`.
- Bootstrap intervals: of a median and of a ratio of medians (each sample resampled on its own), of Spearman's
  correlation and of a difference of two (paired), all 95% percentile intervals from ``random.Random(seed)``.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_tuner.files import write_atomic
from smart_tuner.hooks import Decision, EvalStats, Hook

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


# ------------------------------------------------------------------------------------------------- a plan's units
@dataclass(frozen=True, kw_only=True)
class Job:
    """One unit of a benchmark's plan, handed to a worker process: the config (or objective) file, the arm, the
    seed, the torch threads, the folder it works in, and the ``--set`` items every run of the benchmark takes. A
    benchmark subclasses it with what its unit needs beyond these."""

    config: str
    arm: str
    seed: int
    threads: int
    workdir: str
    sets: list[str]


class EvalLog(Hook):
    """Records each evaluation of a run: in ``evals`` its metrics.jsonl record (``EvalStats.to_dict()``), or only
    the ``keys`` of it, in that order (one the run does not have as None); in ``times`` when it came
    (``time.perf_counter()``). A subclass decides after recording (:meth:`decide`, e.g. a stop at the target)."""

    name = "bench"

    def __init__(self, keys: Sequence[str] | None = None):
        self.keys = keys
        self.evals: list[dict[str, Any]] = []
        self.times: list[float] = []

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        record = stats.to_dict()
        self.evals.append(record if self.keys is None else {key: record.get(key) for key in self.keys})
        self.times.append(time.perf_counter())
        return self.decide(stats)

    def decide(self, stats: EvalStats) -> list[Decision]:
        return []


def first_reaching(evals: Iterable[dict], key: str, target: float, after: int = 0) -> dict | None:
    """The first evaluation after step ``after`` whose ``key`` is at or above ``target``; None when none is."""
    return next((e for e in evals if e["step"] > after and e[key] >= target), None)


def first_step(evals: Iterable[dict], key: str, target: float, after: int = 0) -> int | None:
    """The step of :func:`first_reaching` (None: the target was never reached)."""
    found = first_reaching(evals, key, target, after)
    return None if found is None else found["step"]


# ------------------------------------------------------------------------------------------------- statistics
def percentile_interval(draws: Iterable[float]) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap draws; NaNs when there are none."""
    draws = sorted(draws)
    if not draws:
        return math.nan, math.nan
    return draws[int(0.025 * len(draws))], draws[max(int(0.975 * len(draws)) - 1, 0)]


def bootstrap(statistic: Callable[..., float], samples: Sequence[Sequence[float]], rounds: int = 2000,
              seed: int = 0) -> list[float]:
    """``statistic`` of the samples, each resampled on its own (``rng.choices``, in their order), ``rounds``
    times."""
    rng = random.Random(seed)
    return [statistic(*(rng.choices(sample, k=len(sample)) for sample in samples)) for _ in range(rounds)]


def paired_bootstrap(statistic: Callable[..., float], columns: Sequence[Sequence[float]], rounds: int = 2000,
                     seed: int = 0, valid: Callable[..., bool] = lambda *columns: True) -> list[float]:
    """``statistic`` of the columns resampled together (the same rows of each, ``rng.randrange``), ``rounds``
    times; a resample that ``valid`` refuses is left out."""
    rng = random.Random(seed)
    rows = len(columns[0])
    draws = []
    for _ in range(rounds):
        picked = [rng.randrange(rows) for _ in range(rows)]
        resampled = [[column[i] for i in picked] for column in columns]
        if valid(*resampled):
            draws.append(statistic(*resampled))
    return draws


def median_interval(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The median and a 95% percentile-bootstrap interval of it."""
    return (statistics.median(values),
            *percentile_interval(bootstrap(statistics.median, [values], rounds, seed)))


def _ratio_of_medians(top: Sequence[float], bottom: Sequence[float]) -> float:
    return statistics.median(top) / max(statistics.median(bottom), 1)


def ratio_interval(top: list[float], bottom: list[float], rounds: int = 2000, seed: int = 0) -> dict:
    """median(top) / median(bottom), with a 95% bootstrap interval (each arm resampled on its own)."""
    low, high = percentile_interval(bootstrap(_ratio_of_medians, [top, bottom], rounds, seed))
    return {"ratio": _ratio_of_medians(top, bottom), "low": low, "high": high}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two samples."""
    from scipy.stats import spearmanr  # only the benchmarks that correlate need scipy

    return float(spearmanr(a, b).statistic)


def _varied(*columns: Sequence[float]) -> bool:
    """No column is constant (a constant side has no rank correlation)."""
    return all(len(set(column)) > 1 for column in columns)


def spearman_interval(values: list[float], truth: list[float], rounds: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Spearman's correlation and a 95% percentile-bootstrap interval over the rows (resamples in which either
    side is constant have no correlation and are left out)."""
    draws = paired_bootstrap(spearman, [values, truth], rounds, seed, valid=_varied)
    return (spearman(values, truth), *percentile_interval(draws))


def _difference(first: Sequence[float], second: Sequence[float], truth: Sequence[float]) -> float:
    return spearman(second, truth) - spearman(first, truth)


def difference_interval(first: list[float], second: list[float], truth: list[float], rounds: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Spearman(second, truth) - Spearman(first, truth) and a 95% paired-bootstrap interval: both values are
    correlated on the same resampled rows, so the interval is that of the difference, not of either alone."""
    draws = paired_bootstrap(_difference, [first, second, truth], rounds, seed, valid=_varied)
    return (_difference(first, second, truth), *percentile_interval(draws))
