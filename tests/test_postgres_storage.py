"""The Optuna machinery smart_tuner relies on, against a real PostgreSQL server (see ``tests/pg.py``).

* Worker processes share one study through ``RDBStorage``; trial numbers stay unique and nothing is lost or counted
  twice. ``MaxTrialsCallback`` alone is *not* an exact budget with several workers: it is checked only after a
  worker's own trial ends, so the trials other workers are running at that moment also complete (overshoot up to
  workers - 1; with two workers in step, 11 complete trials for a budget of 10 is the usual outcome). An exact budget
  needs a check before each trial is created: ``guard`` mode below runs smart_tuner's own,
  ``BudgetedStudy.ask`` (the budget check and the trial's creation under one PostgreSQL advisory lock), in each
  worker, and no trial beyond the budget is ever created.
* A worker SIGKILLed mid-trial leaves a RUNNING trial whose heartbeat stops. After the grace period, the next
  worker's ``study.optimize`` (``_run_trial`` calls ``optuna.storages.fail_stale_trials`` before each ``ask``; a
  bare ``study.ask`` does not) marks it FAIL and ``RetryHeartbeatStaleTrialCallback`` enqueues a WAITING copy with
  the same parameters, which that worker's ``ask`` pops first.
* Optuna's tables are created here, before any worker starts: several processes opening ``RDBStorage`` at once on
  an empty PostgreSQL database race on ``CREATE TABLE`` (``UniqueViolation`` on ``pg_type_typname_nsp_index``).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.pg import postgres_url  # noqa: F401  (fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

HEARTBEAT_INTERVAL = 1  # seconds; RDBStorage takes whole seconds
GRACE_PERIOD = 3
TRIAL_SECONDS = 0.2

# A worker process: argv = url, study name, budget N, label, mode (plain | guard | hang), output directory.
# plain: MaxTrialsCallback(N) only. guard: the study is smart_tuner's BudgetedStudy with --study-trials N, whose ask
# refuses to create a trial beyond the budget (StudyFull ends the worker), so the count of trials is exact. hang: the
# first trial signals readiness, then sleeps far longer than the test waits. With a file "side-by-side" in the output
# directory, each worker's first trial waits until the other worker's first trial runs too: the two workers are
# known to have run at the same time (a worker that never meets the other fails).
WORKER = r'''
import json, os, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")  # ExperimentalWarning: heartbeats, retry callback
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

url, study_name, budget, label, mode, out = sys.argv[1:7]
budget, out = int(budget), Path(out)
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.RDBStorage(
    url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
study = optuna.load_study(study_name=study_name, storage=storage)
if mode == "guard":
    from smart_tuner.study.storage import BudgetedStudy

    study = BudgetedStudy(study, storage, budget)


def objective(trial):
    x = trial.suggest_float("x", -10.0, 10.0)
    trial.set_user_attr("worker", label)
    if mode == "hang" and not (out / "ready").exists():
        (out / "ready").write_text(json.dumps({"number": trial.number, "pid": os.getpid()}))
        time.sleep(60)
    if (out / "side-by-side").exists() and not (out / f"running-{label}").exists():
        (out / f"running-{label}").touch()
        deadline = time.monotonic() + 60
        while len(list(out.glob("running-*"))) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other worker never ran a trial")
            time.sleep(0.01)
    time.sleep(TRIAL_SECONDS)
    with open(out / f"{label}.jsonl", "a") as f:
        f.write(json.dumps({"number": trial.number, "x": x, "value": x * x}) + "\n")
    return x * x


(out / f"loaded-{label}").touch()
go = out / "go"
deadline = time.monotonic() + 60
while not go.exists():  # start barrier, so that the workers really run side by side
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.01)
try:
    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(budget, states=(TrialState.COMPLETE,))])
except Exception as exc:
    if type(exc).__name__ != "StudyFull":
        raise
'''.replace("HEARTBEAT_INTERVAL", str(HEARTBEAT_INTERVAL)).replace("GRACE_PERIOD", str(GRACE_PERIOD)) \
   .replace("TRIAL_SECONDS", str(TRIAL_SECONDS))


def make_storage(url):
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


class Workers:
    """Worker processes started by one test; ``close`` kills whichever of them are still running."""

    def __init__(self, url, study_name, out: Path):
        self.url, self.study_name, self.out = url, study_name, out
        self.script = out / "worker.py"
        self.script.write_text(WORKER)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, label, budget, mode, go=True):
        log = open(self.out / f"{label}.log", "w")  # noqa: SIM115 (the worker writes to it until it ends)
        self.procs[label] = subprocess.Popen(
            [sys.executable, str(self.script), self.url, self.study_name, str(budget), label, mode, str(self.out)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.out)
        log.close()
        if go:
            self.go(label)

    def go(self, *labels):
        """Wait until the workers have loaded the study, then release them together."""
        wait_for(lambda: all((self.out / f"loaded-{lb}").exists() for lb in labels), "workers loading the study",
                 timeout=60, details=self.logs, interval=0.02)
        (self.out / "go").touch()

    def wait(self, label, timeout=60):
        try:
            return self.procs[label].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {label} still running after {timeout} s:\n{self.logs()}")

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.out.glob("*.log")))

    def records(self, label):
        path = self.out / f"{label}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def study_env(postgres_url, tmp_path):  # noqa: F811 (the fixture imported from tests.pg)
    """A fresh study on the session's server (tables created here, once, before any worker starts)."""
    storage = make_storage(postgres_url)
    name = f"study-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name=name, storage=storage)
    workers = Workers(postgres_url, name, tmp_path)
    try:
        yield study, storage, workers
    finally:
        workers.close()
        storage.remove_session()
        storage.engine.dispose()


def check_consistent(study, workers, labels):
    """Storage and what the workers' objectives returned agree: unique, gap-free numbers; every complete trial
    ran exactly once, in one worker, with value x**2; returns the complete trials."""
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == list(range(len(trials))), sorted(trials)
    assert len({t._trial_id for t in trials.values()}) == len(trials)
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    recorded = {lb: workers.records(lb) for lb in labels}
    by_number = collections.Counter(r["number"] for recs in recorded.values() for r in recs)
    assert [n for n, c in by_number.items() if c > 1] == [], "a trial ran twice"
    assert set(by_number) == {t.number for t in complete}, "storage and workers disagree on the complete trials"
    for lb, recs in recorded.items():
        for r in recs:
            t = trials[r["number"]]
            assert t.user_attrs["worker"] == lb
            assert t.params == {"x": r["x"]}
            assert t.value == pytest.approx(r["x"] ** 2)
    return complete


def run_side_by_side(study, workers, budget, mode):
    """Workers A and B released together on a budget, their first trials running at the same time (the worker's
    side-by-side barrier); returns the complete trials, all of them and per worker, after checking that the storage
    is consistent."""
    (workers.out / "side-by-side").touch()
    for label in "AB":
        workers.start(label, budget, mode, go=False)
    workers.go("A", "B")
    for label in "AB":
        assert workers.wait(label) == 0, workers.logs()
    complete = check_consistent(study, workers, "AB")
    per_worker = {lb: [t for t in complete if t.user_attrs["worker"] == lb] for lb in "AB"}
    return complete, per_worker


def test_two_workers_share_a_study_max_trials_callback(study_env):
    """MaxTrialsCallback alone: no trial lost or duplicated; the complete count may exceed N by at most one."""
    study, _, workers = study_env
    budget = 12
    complete, per_worker = run_side_by_side(study, workers, budget, "plain")
    assert len(complete) == len(study.get_trials()), "every trial completes"
    assert budget <= len(complete) <= budget + 1, (len(complete), workers.logs())  # overshoot <= workers - 1
    assert all(per_worker.values()), {lb: len(ts) for lb, ts in per_worker.items()}
    assert study.best_value == min(t.value for t in complete)


def test_two_workers_exact_budget_with_the_budgeted_study(study_env):
    """With smart_tuner's budget check under a lock before each trial is created, exactly N trials exist, all
    complete: numbers 0..N-1, and no stub beyond the budget."""
    study, _, workers = study_env
    budget = 12
    complete, _ = run_side_by_side(study, workers, budget, "guard")
    assert sorted(t.number for t in complete) == list(range(budget)), workers.logs()
    assert len(study.get_trials()) == budget


def heartbeat(storage, trial_id):
    """The trial's heartbeat timestamp (None before its first beat)."""
    with storage.engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t"),
                            {"t": trial_id}).scalar_one_or_none()


def is_stale(storage, study, trial_id):
    """Whether the storage counts the trial as stale: its heartbeat older than the grace period by the server's
    clock (the very check ``fail_stale_trials`` makes before it fails a trial)."""
    return trial_id in storage._get_stale_trial_ids(study._study_id)


def test_killed_worker_trial_fails_after_grace_period_and_is_retried(study_env):
    study, storage, workers = study_env
    budget = 5
    workers.start("A", budget, "hang")
    wait_for(lambda: (workers.out / "ready").exists(), "worker A's first trial", 60, details=workers.logs,
             interval=0.02)
    ready = json.loads((workers.out / "ready").read_text())
    (stale,) = study.get_trials()
    assert (stale.number, stale.state) == (ready["number"], TrialState.RUNNING)
    assert ready["pid"] == workers.procs["A"].pid

    # The heartbeat thread of the running trial advances its timestamp (about once a second), and a stale-trial
    # sweep leaves the live worker's trial alone.
    wait_for(lambda: heartbeat(storage, stale._trial_id) is not None, "a first heartbeat", 30,
             details=workers.logs, interval=0.02)
    first = heartbeat(storage, stale._trial_id)
    wait_for(lambda: heartbeat(storage, stale._trial_id) != first, "the heartbeat to advance", 30,
             details=workers.logs, interval=0.02)
    optuna.storages.fail_stale_trials(study)
    assert [(t.number, t.state) for t in study.get_trials()] == [(stale.number, TrialState.RUNNING)]

    os.kill(workers.procs["A"].pid, signal.SIGKILL)
    assert workers.wait("A") == -signal.SIGKILL
    last = heartbeat(storage, stale._trial_id)
    # Nothing beats for the dead worker: the trial goes stale, and nothing has failed it yet.
    wait_for(lambda: is_stale(storage, study, stale._trial_id), "the trial to go stale", 60, details=workers.logs,
             interval=0.02)
    assert heartbeat(storage, stale._trial_id) == last
    assert [(t.number, t.state) for t in study.get_trials()] == [(stale.number, TrialState.RUNNING)]

    workers.start("B", budget, "plain")
    assert workers.wait("B") == 0, workers.logs()

    trials = study.get_trials()
    (failed,) = [t for t in trials if t.number == stale.number]
    assert failed.state == TrialState.FAIL, workers.logs()  # by worker B's optimize: RUNNING until B started
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None]
    assert len(retries) == 1, retries
    (retry,) = retries
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == stale.number
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [stale.number]
    assert retry.params == failed.params == stale.params  # the same point is evaluated again
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"] == "B"
    assert retry.number == stale.number + 1  # enqueued WAITING by B's sweep, then popped by B's first ask

    complete = check_consistent(study, workers, "B")
    assert len(complete) == budget
    assert collections.Counter(t.state for t in trials) == {TrialState.COMPLETE: budget, TrialState.FAIL: 1}
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
