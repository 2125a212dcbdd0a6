"""Nothing lost when a process dies or a user errs (issue 14): signals during `train` and `optimize`, resumed retries,
exact budgets, a full disk (a real tmpfs), torn logs, a killed save's temporary file, locked run directories,
read-only storages and config changes on resume. Real processes, real signals, real SQLite storages."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from smart_tuner.files import DiskFullError, append_line
from smart_tuner.run_logs import read_metrics

from .conftest import TINY_MODEL, require, tiny_config
from .test_study import objective_file
from .waiting import wait_for


def config_file(tmp_path, corpus, name="tiny.yaml", **train):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"preset": "demo", "model": TINY_MODEL,
                                    "data": {"corpus": str(corpus), "val_size": 4, "free_running_sentences": 2,
                                             "cache_dir": str(tmp_path / "cache")},
                                    "train": {"batch_size": 4, "num_threads": 1, **train}}))
    return path


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left():
    """A failing test must not leave its training process running (it would slow every later test)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(cwd, *args):
    proc = subprocess.Popen([sys.executable, "-m", "smart_tuner", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    STARTED.append(proc)
    return proc


def first_trial_evaluated(storage, study="s"):
    """Whether the study's first trial has reported a value (False while the study does not exist yet)."""
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    except Exception:
        return False
    return bool(trials and trials[0].intermediate_values)


def steps_logged(uri, run_dir):
    """The training steps whose loss reached MLflow (written in batches of tracking.log_every steps)."""
    id_file = Path(run_dir) / "mlflow_run_id.txt"
    if not id_file.is_file():
        return []
    return [m.step for m in MlflowClient(uri).get_metric_history(id_file.read_text().strip(), "loss")]


def checkpoint_step(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)["step"]


# ----------------------------------------------------------------------------------------------- 1. signals
@pytest.mark.slow
def test_sigint_and_sigterm_during_train_stop_at_a_step_with_a_checkpoint_and_a_killed_mlflow_run(
        corpus_en, tmp_path, cli_main):
    config = config_file(tmp_path, corpus_en, max_steps=5000, eval_every=2000)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    proc = start(tmp_path, "train", "--config", config, "--run-dir", run_dir, "--tracking-uri", uri, "--no-progress")
    # Signals land mid-run: after steps were trained (the first batch of losses reached MLflow), long before 5000.
    wait_for(lambda: steps_logged(uri, run_dir), "the first logged steps", timeout=600, proc=proc)
    # 5. A second `train` into the same run directory is refused while the first writes into it.
    second = cli_main("train", "--config", config, "--run-dir", run_dir, "--no-progress", cwd=tmp_path)
    assert second.returncode == 2 and "is in use by another process" in second.stderr, second.stderr
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "resume with:" in out and "--resume" in out
    step = int(out.split("interrupted at step ")[1].split(":")[0])
    assert 0 < step < 5000 and checkpoint_step(run_dir) == step  # last.pt at the very step it stopped
    client = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(run_id).data.tags["status"] == "interrupted"

    # Resumed: the same MLflow run, each step once.
    resumed = cli_main("train", "--config", run_dir / "config.yaml", "--run-dir", run_dir, "--resume",
                       "--max-steps", step + 3, "--tracking-uri", uri, "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, step + 4)), steps
    assert client.get_run(run_id).info.status == "FINISHED"

    # SIGTERM (a scheduler's warning before SIGKILL): the same, with exit status 143.
    other = tmp_path / "other"
    proc = start(tmp_path, "train", "--config", config, "--run-dir", other, "--tracking-uri", uri, "--no-progress")
    wait_for(lambda: steps_logged(uri, other), "the first logged steps", timeout=600, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in out and checkpoint_step(other) == int(out.split("at step ")[1].split(":")[0])


@pytest.mark.slow
def test_sigint_during_optimize_fails_the_trial_as_interrupted_and_the_retry_resumes_from_its_checkpoint(
        corpus_en, tmp_path, cli_main):
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"},
                          train={"max_steps": 3000, "eval_every": 4, "num_threads": 1})
    storage = f"sqlite:///{tmp_path}/s.db"
    common = ["--objective", path, "--storage", storage, "--study", "s", "--runs-dir", tmp_path / "runs",
              "--no-progress"]
    proc = start(tmp_path, "optimize", "--trials", 3, *common)

    wait_for(lambda: first_trial_evaluated(storage), "the first trial's first evaluation", timeout=600, proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "re-queued" in out
    study = optuna.load_study(study_name="s", storage=storage)
    first, retry = study.get_trials()  # no other trial started
    assert first.state == TrialState.FAIL and first.user_attrs["failure"] == "interrupted: interrupted by SIGINT"
    assert retry.state == TrialState.WAITING and retry.params == first.params
    run_dir = Path(first.user_attrs["run_dir"])
    saved = checkpoint_step(run_dir)
    assert saved >= max(first.intermediate_values)  # the checkpoint is at the step it stopped

    # Run again: the re-queued trial continues the run from its checkpoint, with its values up to there.
    again = cli_main("optimize", "--trials", 1, "--set", f"train.max_steps={saved + 8}", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    retry = optuna.load_study(study_name="s", storage=storage).get_trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["run_dir"] == str(run_dir)
    old = {s: v for s, v in first.intermediate_values.items() if s <= saved}
    assert all(retry.intermediate_values[s] == v for s, v in old.items())
    new = sorted(set(retry.intermediate_values) - set(old))
    assert new and new[0] > saved and new[-1] == saved + 8
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == sorted(set(steps))  # one record per evaluation, none twice


@pytest.mark.slow
def test_a_second_sigint_during_optimize_exits_at_once_and_leaves_no_trial_running(corpus_en, tmp_path):
    """The first signal asks the running trial to stop at its next step; the second exits now (a person who
    does not want to wait), still with the trial failed, not left RUNNING."""
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"},
                          train={"max_steps": 3000, "eval_every": 4, "num_threads": 1})
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = start(tmp_path, "optimize", "--trials", 2, "--objective", path, "--storage", storage, "--study", "s",
                 "--runs-dir", tmp_path / "runs", "--no-progress")

    wait_for(lambda: first_trial_evaluated(storage), "the first trial's first evaluation", timeout=600, proc=proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).get_trials()]
    assert TrialState.RUNNING not in states and states[0] == TrialState.FAIL


# ----------------------------------------------------------------------------------------------- 3. budgets
def test_trials_1_on_a_new_study_runs_exactly_the_reference_and_below_1_is_an_error(corpus_en, tmp_path, cli_main):
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 2, "eval_every": 2})
    storage = f"sqlite:///{tmp_path}/s.db"
    result = cli_main("optimize", "--objective", path, "--storage", storage, "--trials", 1,
                      "--runs-dir", tmp_path / "runs", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (trial,) = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["reference"] is True
    assert optuna.load_study(study_name="tiny", storage=storage).metric_names == [
        # its name:
        "val_postnet + 1 * (1 - min(diagonality, free_running_diagonality)) + 0.5 * (1 - free_running_stop_rate)"]
    for flag in ("--trials", "--study-trials"):
        bad = cli_main("optimize", "--objective", path, "--storage", storage, flag, 0, "--no-progress", cwd=tmp_path)
        assert bad.returncode == 2 and f"argument {flag}: 0 is below the minimum of 1" in bad.stderr


# ----------------------------------------------------------------------------------------------- 5. files
@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs (of a size the test chooses) mounted in the test's directory. Where mounting is not allowed
    (not root) the test skips, except under CI, which runs as root: there it fails."""
    mounted = []

    def mount(where, size):
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True)
        require(done.returncode == 0, f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_while_saving_is_a_clear_error_and_the_previous_checkpoint_stays(corpus_en, tmp_path, tmpfs,
                                                                                      cli_main):
    from smart_tuner.train.runner import run_training

    sizing = run_training(tiny_config(corpus_en, tmp_path, train={"max_steps": 2, "eval_every": 2}),
                          tmp_path / "sizing", progress=False)
    size = (sizing.run_dir / "checkpoints" / "last.pt").stat().st_size
    run_dir = tmp_path / "run"
    # Room for best.pt and last.pt of the first evaluation, not for the next checkpoint's temporary file.
    tmpfs(run_dir / "checkpoints", int(2.5 * size))
    config = config_file(tmp_path, corpus_en, max_steps=4, eval_every=2, seed=3)
    result = cli_main("train", "--config", config, "--run-dir", run_dir, "--set", "tracking.enabled=false",
                      "--no-progress", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "inline_container" not in result.stderr + result.stdout
    assert "no space left on the device of" in result.stdout and "while writing" in result.stdout
    assert "the previous checkpoint at step 2" in result.stdout and "is intact" in result.stdout
    assert checkpoint_step(run_dir) == 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_jsonl_lines_are_whole_or_absent_on_a_full_disk(tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "64k")
    log = disk / "metrics.jsonl"
    append_line(log, json.dumps({"step": 1}))
    (disk / "filler").write_bytes(b"x" * (64 * 1024 - 4096 - 100))  # a little room on the log's last page only
    with pytest.raises(DiskFullError, match="no space left on the device of .* while writing .*metrics.jsonl"):
        append_line(log, json.dumps({"step": 2, "padding": "y" * 20000}))
    assert log.read_text() == '{"step": 1}\n'  # the failed line left nothing behind


def test_resume_drops_a_torn_line_and_a_killed_saves_temporary_file(corpus_en, tmp_path):
    from smart_tuner.train.runner import run_training

    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 4, "eval_every": 2})
    run_dir = run_training(config, tmp_path / "run", progress=False).run_dir
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "val_lo')  # what a process killed mid-write left before lines were written whole
    # A killed save leaves its temporary file; the next run in the directory removes it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_dir / "checkpoints" / f".last.pt.{dead.pid}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    config.train.max_steps = 6
    result = run_training(config, run_dir, resume=True, progress=False)
    assert result.status == "completed" and result.step == 6
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == [2, 4, 6] and not stale.exists()


def test_best_and_report_never_write_to_a_storage_and_optimize_on_a_read_only_one_is_one_line(
        corpus_en, tmp_path, cli_main):
    other = tmp_path / "mlflow.db"  # a SQLite file that is no Optuna study
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE experiments (id INTEGER)")
    before = other.read_bytes()
    for command in (["best", "--out", tmp_path / "b.yaml"], ["report", "--out", tmp_path / "r.html"]):
        result = cli_main(*command, "--study", "s", "--storage", f"sqlite:///{other}", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "not an Optuna study storage" in result.stderr
    assert other.read_bytes() == before  # no table was added
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["experiments"]

    path = objective_file(tmp_path, corpus_en)
    study_db = tmp_path / "s.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{study_db}")
    read_only = f"sqlite:///file:{study_db}?mode=ro&uri=true"
    result = cli_main("optimize", "--objective", path, "--storage", read_only, "--trials", 1, "--no-progress",
                      cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(errors) == 1 and errors[0].startswith("error: storage")
    assert "readonly" in errors[0] or "read-only" in errors[0]


# ----------------------------------------------------------------------------------------------- 6. resume
def test_resume_refuses_model_changes_naming_them_and_applies_training_changes(corpus_en, tmp_path, cli_main):
    config = config_file(tmp_path, corpus_en, max_steps=2, eval_every=2)
    run_dir = tmp_path / "run"
    common = ["--config", config, "--run-dir", run_dir, "--set", "tracking.enabled=false", "--no-progress"]
    assert cli_main("train", *common, cwd=tmp_path).returncode == 0
    refused = cli_main("train", *common, "--resume", "--set", "model.r=2", "--set", "audio.n_mels=40", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "size mismatch" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "model.r: 4 -> 2" in line and "audio.n_mels: 80 -> 40" in line and "cannot apply" in line
    applied = cli_main("train", *common, "--resume", "--set", "train.batch_size=2", "--max-steps", 4, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "applying the changed setting train.batch_size: 4 -> 2" in applied.stderr
    assert "applying the changed setting train.max_steps: 2 -> 4" in applied.stderr
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]["train"]["batch_size"] == 2
    assert os.path.isfile(run_dir / "config.yaml")
