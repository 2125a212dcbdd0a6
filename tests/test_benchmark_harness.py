"""benchmarks/harness.py (issue 21, item 5): a benchmark's workers end with it, however it ends, and ``--reuse``
takes runs of this commit only. Real processes and signals: a benchmark-like script with two workers that never
finish on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

SCRIPT = textwrap.dedent("""
    import os, sys, threading
    sys.path.insert(0, {benchmarks!r})
    from harness import worker_pool

    def work(folder):
        open(os.path.join(folder, str(os.getpid())), "w").close()
        threading.Event().wait()  # a training that runs far longer than the test

    if __name__ == "__main__":
        with worker_pool(2) as pool:
            list(pool.map(work, [sys.argv[1]] * 2))
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())  # a zombie has ended


def start(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "bench.py"
    script.write_text(SCRIPT.format(benchmarks=str(ROOT / "benchmarks")))
    pids = tmp_path / "pids"
    pids.mkdir()
    # A session of its own: the signal goes to the benchmark alone, as when a scheduler or `kill` sends it.
    proc = subprocess.Popen([sys.executable, str(script), str(pids)], start_new_session=True)
    wait_for(lambda: len(list(pids.iterdir())) == 2, "both workers to start", timeout=120, proc=proc)
    return proc, [int(p.name) for p in pids.iterdir()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_the_workers_end_when_the_benchmark_is_stopped(tmp_path, signum):
    proc, workers = start(tmp_path)
    try:
        assert all(alive(pid) for pid in workers)
        os.kill(proc.pid, signum)
        proc.wait(timeout=120)
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to end", timeout=120)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0


def test_reuse_takes_runs_of_this_commit_only(tmp_path):
    here = harness.current_commit()
    mine, other, old = tmp_path / "mine.json", tmp_path / "other.json", tmp_path / "old.json"
    mine.write_text(json.dumps({"provenance": {"commit": here}, "runs": [{"seed": 0}]}))
    other.write_text(json.dumps({"provenance": {"commit": "0" * 40}, "runs": [{"seed": 1}]}))
    old.write_text(json.dumps([{"seed": 2}]))  # before provenance was recorded
    assert harness.reused_runs(mine) == [{"seed": 0}]
    for path in (other, old):
        with pytest.raises(harness.ReuseError, match="--reuse-other-commit") as caught:
            harness.reused_runs(path)
        assert str(path) in str(caught.value)
    assert harness.reused_runs(other, other_commit=True) == [{"seed": 1}]
    assert harness.reused_runs(old, other_commit=True) == [{"seed": 2}]
    assert harness.reused_runs(None) == []
    assert harness.provenance()["commit"] == here
    studies = tmp_path / "studies.json"  # study_efficiency keeps its units under "studies"
    studies.write_text(json.dumps({"provenance": {"commit": here}, "studies": [{"seed": 3}]}))
    assert harness.reused_runs(studies, key="studies") == [{"seed": 3}]


def test_results_are_written_whole(tmp_path):
    out = tmp_path / "results.json"
    harness.write_results(out, {"runs": [1, 2]})
    assert json.loads(out.read_text()) == {"runs": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
