"""MLflow tracking: one parent run per study, one nested run per trial, a run of its own per `train`.

:class:`MlflowReporter` is an ordinary :class:`~smart_tuner.hooks.Hook` that never returns decisions. It
buffers per-step metrics and writes them with one background ``log_batch`` every ``log_every`` steps (one HTTP
or SQL round trip per metric per step would cost more than a tiny model's step), logs evaluation metrics, uploads
the previews the :class:`~smart_tuner.watch.previews.PreviewWriter` rendered (alignment and mel PNGs, a Griffin-Lim
WAV), counts the adapters' applied events as metric series, and at the end uploads the run's ``events.jsonl`` /
``metrics.jsonl`` and sets the run's final status. :class:`StudyTracker` holds a study's parent run and makes one
reporter per trial; :func:`train_reporter` makes the reporter of a production run.

Every call goes through an explicit :class:`mlflow.MlflowClient`; nothing here touches MLflow's global state
(``mlflow.set_tracking_uri``, active runs), so several studies or trials may track in one process.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from ..config import flatten
from ..errors import UserError
from ..files import write_atomic
from ..hooks import EvalStats, Event, Hook, RunInfo, StepStats, TrainResult
from ..numeric import is_finite_number
from ..paths import default_tracking_uri, make_sqlite_dir, mlflow_artifact_root
from ..redact import redact_text, redact_url
from .previews import list_previews

log = logging.getLogger(__name__)

SECRET_PARAMS = {"alerts.telegram.token"}
MLFLOW_RUN_FILE = "mlflow_run_id.txt"  # in a run dir: the MLflow run that `train --resume` continues

# Metric names are those of StepStats.scalars() and EvalStats.metrics(), except where a step's and an
# evaluation's names would collide in one run (the training batch's diagonality, the mean training loss).
STEP_RENAMES = {"diagonality": "train_diagonality"}
EVAL_RENAMES = {"train_loss": "train_loss_mean"}
# TrainResult.status -> (status tag, MLflow terminal run status)
END_STATUS = {"completed": ("finished", "FINISHED"), "stopped": ("stopped", "KILLED"),
              "interrupted": ("interrupted", "KILLED"), "failed": ("failed", "FAILED")}


# ----------------------------------------------------------------------------------------------- store
def default_artifact_location(tracking_uri: str) -> str:
    """File URI of a local store's artifact root (``artifacts/`` next to its database; absolute, so that it does
    not follow the process's working directory). MLflow makes the directories when it writes artifacts."""
    return mlflow_artifact_root(tracking_uri).resolve().as_uri()


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing. A local store's new experiments keep their artifacts
    under ``mlflow/artifacts``; a tracking server chooses its own location unless one is given."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    if artifact_location is None and _is_local(client.tracking_uri):
        artifact_location = default_artifact_location(client.tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another worker created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# ----------------------------------------------------------------------------------------------- helpers


def config_params(*configs: dict[str, Any]) -> list[Param]:
    """Every leaf of the (nested) dicts as an MLflow param, later dicts winning, secrets left out, clipped to
    MLflow's key and value limits."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged.update(flatten(config))
    params = []
    for key, value in sorted(merged.items()):
        if key in SECRET_PARAMS:
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        params.append(Param(key[:MAX_ENTITY_KEY_LENGTH], text[:MAX_PARAM_VAL_LENGTH]))
    return params


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------------------- reporter
class MlflowReporter(Hook):
    """A training run as an MLflow run (nested under the study's run when ``parent_run_id`` is given).

    Tracking is best effort: the first MLflow error is logged as a warning and ends tracking for this run; the
    training goes on. Metric batches and preview uploads are written by one background thread of the reporter, in
    order, and waited for at the end (MLflow's own async mode waits about a second per run when it shuts down).
    ``synchronous=True`` writes on the calling thread instead.
    """

    name = "mlflow"

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str | None = None,
                 run_name: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, log_every: int = 10,
                 objective_fn: Callable[[EvalStats], float] | None = None, log_checkpoint: bool = False,
                 resume_run_id: str | None = None, synchronous: bool = False):
        if log_every < 1:
            raise ValueError("log_every must be >= 1")
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.run_name, self.tags, self.params = run_name, dict(tags or {}), dict(params or {})
        self.log_every, self.objective_fn, self.log_checkpoint = log_every, objective_fn, log_checkpoint
        self.synchronous = synchronous
        self.run_id: str | None = resume_run_id
        self.resumed = resume_run_id is not None
        self.run_dir: Path | None = None
        self.broken = False  # an MLflow error ended tracking for this run
        self.ended = False
        self.buffer: list[Metric] = []
        self.steps_buffered = 0
        self.writer: ThreadPoolExecutor | None = None if synchronous else ThreadPoolExecutor(
            1, thread_name_prefix="mlflow-writer")
        self.pending: list[Future] = []  # background writes not waited for yet
        self.uploaded_previews: set[int] = set()
        # A resumed run: steps up to this one are in the run already (logged after the checkpoint, before the
        # process died); the resumed run replays them and must not log them twice.
        self.logged_until = -1
        self.event_counts: dict[str, int] = {}
        self.trajectories: dict[str, list[tuple[int, float]]] = {}  # lr and loss weights: (step, new value)

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.broken:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # tracking must never end a training run
            self.broken = True
            log.warning("MLflow tracking stopped for this run (%s failed: %s: %s)", what, type(exc).__name__,
                        str(exc).splitlines()[0][:300] if str(exc) else "")
            return None

    # ------------------------------------------------------------------------------------- hook
    def on_train_start(self, info: RunInfo) -> None:
        self.run_dir = Path(info.run_dir)
        self._safely("starting the run", self._start, info)

    def _start(self, info: RunInfo) -> None:
        if self.resumed:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "resumed_at_step", str(info.start_step))
            logged = [m.step for m in self.client.get_metric_history(self.run_id, "loss")]
            self.logged_until = max([*logged, info.start_step])
            return
        tags = {**self.tags, "run_dir": str(info.run_dir), "device": info.device}
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        if self.run_name:
            tags[MLFLOW_RUN_NAME] = self.run_name
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        write_atomic(self.run_dir / MLFLOW_RUN_FILE, self.run_id + "\n")
        run_facts = {"parameters": info.parameters, "train_size": info.train_size, "val_size": info.val_size}
        self.client.log_batch(self.run_id, params=config_params(info.config, run_facts, self.params))

    def on_step(self, stats: StepStats) -> list:
        timestamp = _now_ms()
        for name, value in stats.scalars().items():
            if not name.startswith("grad_norm."):  # per-module norms stay in debug bundles
                self._add(STEP_RENAMES.get(name, name), value, stats.step, timestamp)
        self.steps_buffered += 1
        if self.steps_buffered >= self.log_every:
            self.flush()
        return []

    def on_eval(self, stats: EvalStats) -> list:
        timestamp = _now_ms()
        for name, value in stats.metrics().items():
            self._add(EVAL_RENAMES.get(name, name), value, stats.step, timestamp)
        if self.objective_fn is not None:
            self._add("objective", self.objective_fn(stats), stats.step, timestamp)
        self.flush()  # step metrics ride along in the same batch
        self._submit("uploading previews", self._upload_previews)
        return []

    def on_event(self, event: Event) -> None:
        if not event.applied:
            return
        key = f"events.{event.source}.{event.control}"
        self.event_counts[key] = self.event_counts.get(key, 0) + 1
        timestamp = _now_ms()
        self._add(key, self.event_counts[key], event.step, timestamp)
        if is_finite_number(event.new):  # the learning rate or a loss weight (actions carry no value)
            self.trajectories.setdefault(event.control, []).append((event.step, float(event.new)))
            self._add(f"control.{event.control}", event.new, event.step, timestamp)

    def on_train_end(self, result: TrainResult) -> None:
        if result.best_val_loss is not None:
            self._add("best_val_loss", result.best_val_loss, result.step, _now_ms())
        self.flush()
        self._safely("finishing the run", self._end, result)
        if self.writer is not None:  # tracking broke before the end: stop the writer thread anyway
            self.writer.shutdown(wait=False, cancel_futures=True)
            self.writer = None

    def _end(self, result: TrainResult) -> None:
        if self.run_id is None:
            return
        self._wait()
        self._upload_previews()  # the last evaluation's, rendered at the end when thinning skipped it
        run_dir = Path(result.run_dir)
        for name in ("events.jsonl", "metrics.jsonl"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name), "logs")
        if self.log_checkpoint:
            self.upload_checkpoint(run_dir)
        tag, status = END_STATUS.get(result.status, ("failed", "FAILED"))
        self.client.log_batch(self.run_id, tags=[RunTag("status", tag),
                                                 RunTag("reason", (result.reason or "")[:MAX_TAG_VAL_LENGTH]),
                                                 RunTag("final_step", str(result.step))])
        self.client.set_terminated(self.run_id, status=status)
        self.ended = True

    # ------------------------------------------------------------------------------------- after the run
    def upload_checkpoint(self, run_dir: str | Path) -> str | None:
        """The run's best checkpoint (else its last) as ``checkpoints/<name>``; returns the name logged."""
        for name in ("best.pt", "last.pt"):
            path = Path(run_dir) / "checkpoints" / name
            if path.is_file() and self.run_id is not None:
                self.client.log_artifact(self.run_id, str(path), "checkpoints")
                return name
        return None

    def set_outcome(self, state: str, reason: str = "") -> None:
        """How the trial ended (completed, pruned, failed, interrupted: study.objective.TrialOutcome), and why."""
        def tag() -> None:
            if self.run_id is None:
                return
            self.client.log_batch(self.run_id, tags=[RunTag("trial_state", state),
                                                     RunTag("trial_reason", reason[:MAX_TAG_VAL_LENGTH])])
            if not self.ended:  # the training raised before its end hook: close the run as failed
                self.client.set_terminated(self.run_id, status="FAILED")
                self.ended = True
        self._safely("recording the trial's state", tag)

    # ------------------------------------------------------------------------------------- artifacts
    def _upload_previews(self) -> None:
        """Preview directories the preview writer rendered since the last call, as ``previews/step_N/``."""
        if self.run_id is None or self.run_dir is None:
            return
        for step, files in list_previews(self.run_dir):
            if step not in self.uploaded_previews:
                self.client.log_artifacts(self.run_id, str(next(iter(files.values())).parent),
                                          f"previews/step_{step:06d}")
                self.uploaded_previews.add(step)

    # ------------------------------------------------------------------------------------- batching
    def _add(self, key: str, value: Any, step: int, timestamp: int) -> None:
        if is_finite_number(value) and step > self.logged_until:  # NaN breaks MLflow's charts and comparisons
            self.buffer.append(Metric(key, float(value), timestamp, int(step)))

    def flush(self) -> None:
        """Write the buffered metrics with one ``log_batch`` (the client splits oversized batches)."""
        buffer, self.buffer, self.steps_buffered = self.buffer, [], 0
        if buffer and self.run_id is not None:
            self._submit("logging metrics", self.client.log_batch, self.run_id, buffer)

    def _submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the writer thread (or here when synchronous); a failed earlier write ends tracking."""
        if self.broken:
            return
        if self.writer is None:
            self._safely(what, fn, *args)
            return
        still_pending = []
        for future in self.pending:
            if not future.done():
                still_pending.append(future)
            elif future.exception() is not None:
                self._safely("a background write", future.result)  # logs it and marks tracking broken
                return
        self.pending = still_pending
        self.pending.append(self.writer.submit(fn, *args))

    def _wait(self) -> None:
        """Every background write done; the first failure is raised (the caller logs it)."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()
        if self.writer is not None:
            self.writer.shutdown(wait=True)
            self.writer = None


# ----------------------------------------------------------------------------------------------- study run
STUDY_ROLE_TAG = "smart_tuner.role"


def start_study_run(client: MlflowClient, experiment_name: str, study_name: str, storage_url: str,
                    objective_path: str | os.PathLike, artifact_location: str | None = None) -> str:
    """The study's parent run. An existing one of the same study and storage is reused (and set running again
    when a continued study had finished it), so that several workers and later sessions nest their trials
    under one run."""
    experiment_id = ensure_experiment(client, experiment_name, artifact_location)
    storage = redact_url(storage_url)
    existing = client.search_runs([experiment_id],
                                  filter_string=f"tags.study = '{_quote(study_name)}' and "
                                                f"tags.`{STUDY_ROLE_TAG}` = 'study'",
                                  max_results=50, order_by=["attributes.start_time ASC"])
    for run in existing:
        if run.data.tags.get("storage") == storage:
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    tags = {"study": study_name, "storage": storage, "objective": str(objective_path),
            STUDY_ROLE_TAG: "study", MLFLOW_RUN_NAME: study_name}
    return client.create_run(experiment_id, tags=tags, run_name=study_name).info.run_id


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def end_study_run(client: MlflowClient, run_id: str, summary: dict[str, Any]) -> None:
    """Finish the parent run: finite numbers of ``summary`` become metrics, everything else tags."""
    flat = flatten(summary)
    metrics = [Metric(k[:MAX_ENTITY_KEY_LENGTH], float(v), _now_ms(), 0)
               for k, v in flat.items() if is_finite_number(v)]
    tags = [RunTag(k[:MAX_ENTITY_KEY_LENGTH], (v if isinstance(v, str) else json.dumps(v, default=str))
                   [:MAX_TAG_VAL_LENGTH])
            for k, v in flat.items() if not is_finite_number(v)]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.set_terminated(run_id, status="FINISHED")


class TrackingError(UserError, ValueError):
    """The MLflow store cannot be used as asked; the message says which and what to do."""


def open_tracking(tracking_uri: str | None) -> MlflowClient:
    """A client on ``tracking_uri`` (or the default store), checked once so that a wrong URI fails up front."""
    uri = tracking_uri or default_tracking_uri()
    try:
        make_sqlite_dir(uri)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(f"MLflow tracking store {redact_url(uri)}: cannot use it ({type(exc).__name__}: "
                            f"{redact_text(str(exc).splitlines()[0] if str(exc) else '', uri)[:200]}); pass a working "
                            "--tracking-uri, or set tracking.enabled=false") from None
    return client


class StudyTracker:
    """A study in MLflow: experiment and parent run named after the study, a nested run per trial."""

    def __init__(self, client: MlflowClient, study_name: str, storage_url: str, objective_path: str | os.PathLike,
                 parent_run_id: str | None = None):
        self.client, self.study_name = client, study_name
        self.parent_run_id = parent_run_id or start_study_run(client, study_name, study_name, storage_url,
                                                              objective_path)
        self.experiment_id = client.get_run(self.parent_run_id).info.experiment_id

    def reporter(self, trial_number: int, config: Any, params: dict[str, Any],
                 objective_fn: Callable[[EvalStats], float] | None = None) -> MlflowReporter:
        return MlflowReporter(self.client, self.experiment_id, parent_run_id=self.parent_run_id,
                              run_name=f"trial-{trial_number:04d}",
                              tags={"study": self.study_name, "trial": str(trial_number),
                                    STUDY_ROLE_TAG: "trial"},
                              params={f"trial_params.{k}": v for k, v in params.items()},
                              log_every=config.tracking.log_every, objective_fn=objective_fn,
                              log_checkpoint=False)

    def finish(self, summary: dict[str, Any], best_run_id: str | None = None,
               best_run_dir: str | Path | None = None) -> None:
        """Close the parent run with the study's summary; the best trial's final checkpoint goes to its run."""
        if best_run_id and best_run_dir:
            checkpoint = Path(best_run_dir) / "checkpoints" / "last.pt"
            if checkpoint.is_file():
                self.client.log_artifact(best_run_id, str(checkpoint), "checkpoints")
                self.client.set_tag(self.parent_run_id, "best_run_id", best_run_id)
        end_study_run(self.client, self.parent_run_id, summary)


def train_reporter(client: MlflowClient, config: Any, run_dir: str | Path) -> MlflowReporter:
    """The reporter of a `train` run: experiment ``tracking.experiment`` (else the source study's name, else
    "train"), tagged with the study and trial its config came from; a resumed run continues its MLflow run."""
    cfg = config.tracking
    experiment = cfg.experiment or cfg.source_study or "train"
    tags = {STUDY_ROLE_TAG: "production"}
    if cfg.source_study:
        tags.update(study=cfg.source_study, trial=str(cfg.source_trial))
    id_file = Path(run_dir) / MLFLOW_RUN_FILE
    resume_id = id_file.read_text().strip() if id_file.is_file() else None
    if resume_id:
        try:
            client.get_run(resume_id)
        except MlflowException:
            log.warning("MLflow run %s of %s is not in this store: starting a new run", resume_id, run_dir)
            resume_id = None
    reporter = MlflowReporter(client, ensure_experiment(client, experiment), run_name=Path(run_dir).name,
                              tags=tags, log_every=cfg.log_every, log_checkpoint=cfg.log_checkpoint,
                              resume_run_id=resume_id)
    return reporter
