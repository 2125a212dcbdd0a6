"""MLflow tracking against a real local store (SQLite + file artifacts in a temp dir), read back with MlflowClient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from smart_tuner import paths
from smart_tuner.config import build_config
from smart_tuner.hooks import EvalStats, Event, RunInfo, StepStats, TrainResult
from smart_tuner.watch import tracking
from smart_tuner.watch.previews import PreviewWriter
from smart_tuner.watch.tracking import MlflowReporter, end_study_run, ensure_experiment, start_study_run
from tests.conftest import tiny_config

from .stats import eval_stats as make_eval_stats
from .stats import step_stats as make_step_stats

CONFIG = {"model": {"r": 4, "prenet_dims": [16, 16]}, "train": {"lr": 1e-3, "note": "x" * 7000},
          "adapters": {"plateau": {"factor": 0.5}},
          "alerts": {"telegram": {"token": "SECRET-TOKEN", "chat_id": "42"}}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One store per module: creating the SQLite schema takes seconds.
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


@pytest.fixture
def experiment(client, tmp_path, request):
    return ensure_experiment(client, request.node.name, artifact_location=(tmp_path / "artifacts").as_uri())


class Spy:
    """Counts log_batch calls and fails on any per-metric call: the reporter must batch."""

    def __init__(self, client: MlflowClient, monkeypatch):
        self.batches = 0
        original = client.log_batch

        def log_batch(*args, **kwargs):
            self.batches += 1
            return original(*args, **kwargs)

        def forbidden(*args, **kwargs):
            raise AssertionError("log_metric called: metrics must go through log_batch")

        monkeypatch.setattr(client, "log_batch", log_batch)
        monkeypatch.setattr(client, "log_metric", forbidden)


def step_stats(step: int, loss: float = 1.0) -> StepStats:
    return make_step_stats(step, loss=loss, postnet=0.3, gate=0.2, ga=0.1, grad_norm=2.0, ga_weight=5.0,
                           step_time=0.01, diagonality=0.5)


def eval_stats(step: int) -> EvalStats:
    return make_eval_stats(step, val_loss=1.0 / step, val_postnet=0.3, val_gate=0.2, val_ga=0.1,
                     diagonality=0.6, focus=0.5, monotonicity=0.9, coverage=0.8, free_running_diagonality=0.4,
                     free_running_focus=0.3, free_running_monotonicity=0.7, free_running_coverage=0.6,
                     free_running_stop_rate=float("nan"),
                     ga_weight=5.0, train_loss=1.2, elapsed=3.0, alignment=torch.rand(12, 7),
                     mels={"target": torch.randn(80, 30) - 4, "teacher_forced": torch.randn(80, 30) - 4,
                           "free_running": torch.randn(80, 24) - 4})


def run_info(run_dir: Path, config=CONFIG) -> RunInfo:
    return RunInfo(run_dir=run_dir, config=config, device="cpu", parameters=1234, train_size=20, val_size=4,
                   start_step=0)


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifacts(client, run_id, path):
    return sorted(Path(f.path).name for f in client.list_artifacts(run_id, path))


# ----------------------------------------------------------------------------------------------- store
def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert paths.default_tracking_uri() == "http://tracker:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert paths.default_tracking_uri() == "sqlite:///mlflow/mlflow.db"
    assert tracking.default_artifact_location("sqlite:///mlflow/mlflow.db") == (
        tmp_path / "mlflow" / "artifacts").resolve().as_uri()
    assert not (tmp_path / "mlflow").exists()  # computing a default creates nothing
    # Opening a store for writing makes its database's directory (an absolute path: MLflow caches its stores by URI).
    tracking.open_tracking(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert (tmp_path / "new" / "mlflow.db").is_file()
    elsewhere = tmp_path / "other" / "store.db"
    assert tracking.default_artifact_location(f"sqlite:///{elsewhere}") == (
        tmp_path / "other" / "artifacts").as_uri()  # next to the database, whatever the working directory


def test_config_params_are_dotted_clipped_and_secret_free():
    params = {p.key: p.value for p in tracking.config_params(CONFIG, {"trial": 3})}
    assert params["model.r"] == "4"
    assert params["model.prenet_dims"] == "[16, 16]"
    assert params["adapters.plateau.factor"] == "0.5"
    assert params["trial"] == "3"
    assert len(params["train.note"]) == 6000  # MLflow's param value limit
    assert "alerts.telegram.token" not in params
    assert not any("SECRET" in v for v in params.values())


# ----------------------------------------------------------------------------------------------- reporter
def test_reporter_logs_a_full_run(client, experiment, tmp_path, monkeypatch):
    parent = start_study_run(client, "test_reporter_parent", "demo", "sqlite:///studies/demo.db", "objectives/d.yaml",
                             artifact_location=(tmp_path / "parent").as_uri())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    previews = PreviewWriter(build_config({}))  # renders; the reporter uploads what it rendered
    reporter = MlflowReporter(client, experiment, parent_run_id=parent, run_name="trial-0001",
                              tags={"trial": "1"}, params={"trial_number": 1}, log_every=5,
                              objective_fn=lambda s: s.val_losses["postnet"] + 2.0 * (1.0 - s.diagonality))
    spy = Spy(client, monkeypatch)
    hooks = [previews, reporter]
    for hook in hooks:
        hook.on_train_start(run_info(run_dir))
    assert (run_dir / tracking.MLFLOW_RUN_FILE).read_text().strip() == reporter.run_id
    for step in range(1, 21):
        assert reporter.on_step(step_stats(step, loss=float("nan") if step == 3 else 1.0 / step)) == []
        if step == 7:
            reporter.on_event(Event(7, "plateau", "lr", 1e-3, 5e-4, "plateau", 0.9, applied=True))
            reporter.on_event(Event(7, "ga", "lr", 1e-3, 2e-4, "lost to plateau", None, applied=False))
            reporter.on_event(Event(7, "emergency", "skip_update", None, None, "emergency: nan", None, True))
        if step % 4 == 0:  # evaluations 1..5 at steps 4, 8, 12, 16, 20
            for hook in hooks:
                assert hook.on_eval(eval_stats(step)) == []
    (run_dir / "events.jsonl").write_text('{"step": 7}\n')
    (run_dir / "metrics.jsonl").write_text('{"step": 4}\n')
    for hook in hooks:
        hook.on_train_end(TrainResult("completed", 20, "reached train.max_steps=20", run_dir, None, 0.05))

    run = client.get_run(reporter.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["mlflow.runName"] == "trial-0001"
    assert run.data.tags["trial"] == "1"
    assert run.data.tags["status"] == "finished"
    assert run.data.tags["reason"] == "reached train.max_steps=20"
    params = run.data.params
    assert params["model.r"] == "4" and params["train.lr"] == "0.001" and params["trial_number"] == "1"
    assert params["parameters"] == "1234"
    assert "alerts.telegram.token" not in params and "SECRET-TOKEN" not in json.dumps(params)

    loss = history(client, reporter.run_id, "loss")
    assert [s for s, _ in loss] == [s for s in range(1, 21) if s != 3]  # the NaN step is left out
    assert loss[0][1] == pytest.approx(1.0)
    for key in ("mel", "postnet", "gate", "ga", "grad_norm", "lr", "ga_weight", "train_diagonality"):
        assert len(history(client, reporter.run_id, key)) == 20, key
    # 4 step flushes + 5 evaluation flushes + params + end metrics + end tags, and never one call per metric
    assert spy.batches <= 20 // 5 + 5 + 4

    assert [s for s, _ in history(client, reporter.run_id, "val_loss")] == [4, 8, 12, 16, 20]
    for key in ("val_mel", "val_postnet", "val_gate", "val_ga", "diagonality", "focus", "monotonicity",
                "coverage", "free_running_diagonality", "free_running_focus", "free_running_monotonicity",
                "free_running_coverage"):
        assert len(history(client, reporter.run_id, key)) == 5, key
    assert history(client, reporter.run_id, "free_running_stop_rate") == []  # NaN every time
    assert history(client, reporter.run_id, "objective")[0][1] == pytest.approx(0.3 + 2.0 * 0.4)
    assert history(client, reporter.run_id, "best_val_loss") == [(20, pytest.approx(0.05))]

    assert history(client, reporter.run_id, "events.plateau.lr") == [(7, 1.0)]
    assert history(client, reporter.run_id, "events.emergency.skip_update") == [(7, 1.0)]
    assert history(client, reporter.run_id, "events.ga.lr") == []  # not applied
    assert history(client, reporter.run_id, "control.lr") == [(7, pytest.approx(5e-4))]
    assert reporter.trajectories["lr"] == [(7, 5e-4)]

    # Previews at evaluations 1, 2, 4 and the last (5); evaluation 3 (step 12) is thinned out.
    assert artifacts(client, reporter.run_id, "previews") == [
        "step_000004", "step_000008", "step_000016", "step_000020"]
    assert artifacts(client, reporter.run_id, "previews/step_000020") == ["alignment.png", "audio.wav", "mel.png"]
    dst = tmp_path / "download"
    for name in ("alignment.png", "mel.png"):
        png = Path(client.download_artifacts(reporter.run_id, f"previews/step_000020/{name}", str(dst)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wav, rate = sf.read(client.download_artifacts(reporter.run_id, "previews/step_000020/audio.wav", str(dst)))
    assert rate == 22050 and len(wav) == 23 * 256  # Griffin-Lim of the 24 free-running frames
    assert artifacts(client, reporter.run_id, "logs") == ["events.jsonl", "metrics.jsonl"]
    events = Path(client.download_artifacts(reporter.run_id, "logs/events.jsonl", str(dst)))
    assert events.read_text() == '{"step": 7}\n'
    assert artifacts(client, reporter.run_id, "checkpoints") == []  # log_checkpoint is off by default


@pytest.mark.parametrize("synchronous", [True, False])
def test_mlflow_errors_never_stop_a_run(client, experiment, tmp_path, monkeypatch, caplog, synchronous):
    reporter = MlflowReporter(client, experiment, log_every=2, synchronous=synchronous)
    reporter.on_train_start(run_info(tmp_path))
    calls = []

    def failing(*args, **kwargs):  # the store goes away mid-run
        calls.append(1)
        raise MlflowException("connection refused")

    monkeypatch.setattr(client, "log_batch", failing)
    for step in range(1, 7):
        assert reporter.on_step(step_stats(step)) == []
    assert reporter.on_eval(eval_stats(6)) == []
    reporter.on_train_end(TrainResult("completed", 6, "done", tmp_path, None, None))
    reporter.set_outcome("completed")
    # One failure ends tracking: no retry per step (the writer thread may have taken one more batch meanwhile).
    assert reporter.broken and 1 <= len(calls) <= (1 if synchronous else 3)
    assert reporter.writer is None  # the writer thread is stopped
    assert "MLflow tracking stopped for this run" in caplog.text and "connection refused" in caplog.text


@pytest.mark.parametrize("status, reason, run_status, tag", [
    ("stopped", "optuna: pruned by Optuna at step 4", "KILLED", "stopped"),
    ("failed", "rollback budget spent", "FAILED", "failed"),
])
def test_reporter_final_status(client, experiment, tmp_path, status, reason, run_status, tag):
    reporter = MlflowReporter(client, experiment, log_every=100, log_checkpoint=True)
    reporter.on_train_start(run_info(tmp_path))
    reporter.on_step(step_stats(1))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"weights")
    reporter.on_train_end(TrainResult(status, 1, reason, tmp_path, None, None))
    run = client.get_run(reporter.run_id)
    assert run.info.status == run_status
    assert run.data.tags["status"] == tag and run.data.tags["reason"] == reason
    assert "mlflow.parentRunId" not in run.data.tags
    assert history(client, reporter.run_id, "loss") == [(1, 1.0)]  # the unfull buffer is flushed at the end
    assert artifacts(client, reporter.run_id, "checkpoints") == ["last.pt"]
    assert artifacts(client, reporter.run_id, "logs") == []  # no jsonl files in this run dir


def test_study_run_is_reused_until_ended(client, tmp_path):
    location = (tmp_path / "artifacts").as_uri()
    first = start_study_run(client, "study-exp", "s1", "postgresql://bob:hunter2@db/optuna", "objectives/a.yaml",
                            artifact_location=location)
    assert start_study_run(client, "study-exp", "s1", "postgresql://bob:hunter2@db/optuna", "y") == first  # a worker
    other = start_study_run(client, "study-exp", "s2", "sqlite:///studies/s2.db", "objectives/b.yaml")
    assert other != first
    run = client.get_run(first)
    assert run.data.tags["study"] == "s1" and run.data.tags["objective"] == "objectives/a.yaml"
    assert run.data.tags["storage"] == "postgresql://bob:***@db/optuna"
    assert client.get_experiment(run.info.experiment_id).artifact_location == location

    end_study_run(client, first, {"best_value": 0.25, "n_trials": 6, "best_params": {"lr": 1e-3},
                                  "best_trial": None})
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_value"] == 0.25 and run.data.metrics["n_trials"] == 6
    assert run.data.metrics["best_params.lr"] == 1e-3
    assert run.data.tags["best_trial"] == "null"
    # A continued study reopens its run; the same name in another storage is another study.
    assert start_study_run(client, "study-exp", "s1", "postgresql://bob:other@db/optuna", "y") == first
    assert client.get_run(first).info.status == "RUNNING"
    assert start_study_run(client, "study-exp", "s1", "sqlite:///elsewhere.db", "y") != first


# ----------------------------------------------------------------------------------------------- training
def test_real_training_reaches_mlflow(client, experiment, corpus_en, tmp_path, monkeypatch):
    from smart_tuner.train.runner import run_training

    torch.set_num_threads(1)
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4, "num_threads": 1})
    reporter = MlflowReporter(client, experiment, run_name="tiny", log_every=3, log_checkpoint=True)
    spy = Spy(client, monkeypatch)
    result = run_training(config, tmp_path / "run", extra_hooks=[reporter], progress=False)
    assert result.status == "completed"
    run = client.get_run(reporter.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.params["train.max_steps"] == "8" and run.data.params["model.r"] == "4"
    assert [s for s, _ in history(client, reporter.run_id, "loss")] == list(range(1, 9))
    assert [s for s, _ in history(client, reporter.run_id, "val_loss")] == [4, 8]
    assert len(history(client, reporter.run_id, "diagonality")) == 2
    assert spy.batches <= 8 // 3 + 2 + 4
    assert artifacts(client, reporter.run_id, "previews") == ["step_000004", "step_000008"]
    assert artifacts(client, reporter.run_id, "previews/step_000008") == ["alignment.png", "audio.wav", "mel.png"]
    assert "metrics.jsonl" in artifacts(client, reporter.run_id, "logs")
    assert artifacts(client, reporter.run_id, "checkpoints") == ["best.pt"]
