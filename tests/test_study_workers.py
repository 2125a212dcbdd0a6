"""Several worker processes on one study in a real PostgreSQL server: an exact trial count, and a killed worker's
trial failed by its missing heartbeat, re-queued and finished by another worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from smart_tuner.study.options import StudyOptions
from smart_tuner.study.space import load_objective
from smart_tuner.study.storage import StudyTrials, retried_number
from smart_tuner.study.workers import open_study

from .pg import postgres_url  # noqa: F401  (the fixture)
from .test_study import objective_file

pytestmark = pytest.mark.slow


def worker(tmp_path, path, url, study, target, heartbeat=1, grace=3, seed=0):
    """A ``worker`` process with the command line ``optimize`` gives its workers."""
    options = StudyOptions(objective=path, study=study, storage=url, target=target, threads=1, seed=seed,
                           runs_dir=tmp_path / "runs", heartbeat_interval=heartbeat, grace_period=grace)
    return subprocess.Popen([sys.executable, "-m", "smart_tuner", "worker", *options.worker_argv()], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def create(tmp_path, path, url, study):
    # The study (and the tables) exist before any worker starts, as `optimize` does it.
    options = StudyOptions(objective=path, study=study, storage=url, runs_dir=tmp_path / "runs")
    return open_study(options, load_objective(path))


def test_two_workers_run_exactly_the_requested_trials(postgres_url, corpus_en, tmp_path):  # noqa: F811
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 8, "eval_every": 4})
    study = create(tmp_path, path, postgres_url, "two-workers")
    procs = [worker(tmp_path, path, postgres_url, "two-workers", target=5, seed=i) for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = StudyTrials.of(study.get_trials())
    complete = trials.complete
    assert len(complete) == 5 and len(trials.results) == 5 and trials.counted == 5
    assert sorted(t.number for t in complete) == list(range(5))  # none lost, none duplicated
    assert len({t.user_attrs["run_dir"] for t in complete}) == 5
    assert complete[0].user_attrs.get("reference") is True


def test_a_killed_worker_trial_is_failed_by_heartbeat_retried_and_the_study_completes(
        postgres_url, corpus_en, tmp_path):  # noqa: F811
    # Long enough trials that the kill lands mid-trial.
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 400, "eval_every": 200})
    study = create(tmp_path, path, postgres_url, "killed")
    victim = worker(tmp_path, path, postgres_url, "killed", target=2)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until its first trial runs and has sent a heartbeat
        running = study.get_trials(states=(TrialState.RUNNING,))
        if running and (tmp_path / "runs" / "killed" / f"trial-{running[0].number:04d}" / "config.yaml").is_file():
            break
        time.sleep(0.3)
    else:
        pytest.fail("the first worker never started a trial")
    time.sleep(2.5)  # past one heartbeat
    killed_number = running[0].number
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(4)  # past the grace period: the trial is stale now

    fast = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"},
                          train={"max_steps": 8, "eval_every": 4}, name="fast")
    rescuer = worker(tmp_path, fast, postgres_url, "killed", target=2)
    output = rescuer.communicate(timeout=240)[0]
    assert rescuer.returncode == 0, output

    trials = study.get_trials()
    killed = next(t for t in trials if t.number == killed_number)
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if retried_number(t) == killed_number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert StudyTrials.of(trials).counted == 2  # the retry took the killed trial's place in the budget
