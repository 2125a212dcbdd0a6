"""Several worker processes on one study in a real PostgreSQL server: exact budgets (``--trials`` per command,
``--study-trials`` for the study, no stub trials), and a killed worker's trial failed by its missing heartbeat,
re-queued and resumed from its last checkpoint by another worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from smart_tuner.study.objective_file import load_objective
from smart_tuner.study.optimize import open_study
from smart_tuner.study.options import StudyOptions
from smart_tuner.study.storage import StudyTrials, retried_number

from .pg import postgres_url  # noqa: F401  (the fixture)
from .test_study import objective_file
from .waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def worker(tmp_path, path, url, study, trials=None, study_trials=None, heartbeat=1, grace=3, seed=0):
    """A ``worker`` process with the command line ``optimize`` gives its workers."""
    options = StudyOptions(objective=path, study=study, storage=url, trials=trials, study_trials=study_trials,
                           threads=1, seed=seed, runs_dir=tmp_path / "runs", heartbeat_interval=heartbeat,
                           grace_period=grace)
    return subprocess.Popen([sys.executable, "-m", "smart_tuner", "worker", *options.worker_argv()], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def create(tmp_path, path, url, study):
    # The study (and the tables) exist before any worker starts, as `optimize` does it.
    options = StudyOptions(objective=path, study=study, storage=url, runs_dir=tmp_path / "runs")
    return open_study(options, load_objective(path))


def test_budgets_two_workers_trials_each_then_study_trials_however_many_workers(
        postgres_url, corpus_en, tmp_path):  # noqa: F811
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 4, "eval_every": 2})
    study = create(tmp_path, path, postgres_url, "two-workers")
    # --trials is per command: two workers with 2 each run 4 trials, the reference among them, no stub.
    procs = [worker(tmp_path, path, postgres_url, "two-workers", trials=2, seed=i) for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = StudyTrials.of(study.get_trials())
    assert len(trials.completed) == 4 and len(trials.results) == 4 and trials.counted == 4
    assert sorted(t.number for t in trials.completed) == list(range(4))  # none lost, none duplicated
    assert len({t.user_attrs["run_dir"] for t in trials.completed}) == 4
    assert trials.completed[0].user_attrs.get("reference") is True
    # --study-trials 7: three workers, one started late, stop once the study holds 7, with no trial beyond it.
    early = [worker(tmp_path, path, postgres_url, "two-workers", study_trials=7, seed=10 + i) for i in range(2)]
    wait_for(lambda: len(study.get_trials()) > 4, "the early workers' first trial")
    late = worker(tmp_path, path, postgres_url, "two-workers", study_trials=7, seed=20)
    outputs = [p.communicate(timeout=240)[0] for p in [*early, late]]
    assert [p.returncode for p in [*early, late]] == [0, 0, 0], outputs
    trials = StudyTrials.of(study.get_trials())
    assert len(trials.results) == 7 and len(trials.completed) == 7, [t.state for t in trials.results]


def test_a_killed_worker_trial_is_failed_by_heartbeat_retried_and_the_study_completes(
        postgres_url, corpus_en, tmp_path):  # noqa: F811
    # Long enough trials that the kill lands mid-trial.
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 400, "eval_every": 10})
    study = create(tmp_path, path, postgres_url, "killed")
    victim = worker(tmp_path, path, postgres_url, "killed", study_trials=2)
    # The heartbeats as the workers keep them: the storage's own test of a stale trial (grace period 3 s).
    beats = optuna.storages.RDBStorage(postgres_url, heartbeat_interval=1, grace_period=3)

    def last_pt(number):
        return tmp_path / "runs" / "killed" / f"trial-{number:04d}" / "checkpoints" / "last.pt"

    def evaluated_saved_and_beating():
        running = study.get_trials(states=(TrialState.RUNNING,))
        if not (running and running[0].intermediate_values and last_pt(running[0].number).is_file()):
            return False
        with beats.engine.connect() as conn:  # a trial that never beat is never stale
            return conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                                {"t": running[0]._trial_id}).scalar() > 0

    # The kill lands mid-trial: once the first trial has reported an evaluation, saved its checkpoint and beats.
    wait_for(evaluated_saved_and_beating, "the first trial's checkpoint", proc=victim)
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    killed_number = running.number
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    wait_for(lambda: beats._get_stale_trial_ids(study._study_id) == [running._trial_id], "the trial to go stale")
    beats.engine.dispose()

    checkpoint = torch.load(last_pt(killed_number), weights_only=True)["step"]
    fast = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"},
                          train={"max_steps": checkpoint + 20, "eval_every": 10}, name="fast")
    rescuer = worker(tmp_path, fast, postgres_url, "killed", study_trials=2)
    output = rescuer.communicate(timeout=240)[0]
    assert rescuer.returncode == 0, output

    trials = study.get_trials()
    killed = next(t for t in trials if t.number == killed_number)
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if retried_number(t) == killed_number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    # The retry continued the killed trial's run from its last checkpoint: the killed trial's values up to it, then
    # new ones after it, in the same run directory.
    retry = retries[0]
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    inherited = {s: v for s, v in killed.intermediate_values.items() if s <= checkpoint}
    assert inherited and all(retry.intermediate_values[s] == v for s, v in inherited.items())
    new_steps = sorted(s for s in retry.intermediate_values if s not in inherited)
    assert new_steps and new_steps[0] > checkpoint and max(retry.intermediate_values) == checkpoint + 20
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert StudyTrials.of(trials).counted == 2  # the retry took the killed trial's place in the budget
