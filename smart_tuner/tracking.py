"""MLflow tracking: one parent run per study, one nested run per training run, fed by a hook.

:class:`MlflowReporter` is an ordinary :class:`~smart_tuner.hooks.Hook` that never returns decisions. It
buffers per-step metrics and writes them with one ``log_batch`` call every ``log_every`` steps (one HTTP or SQL
round trip per metric per step would cost more than a tiny model's step), logs evaluation metrics and a thinned
series of alignment heatmaps, counts the adapters' applied events, and on the end of training uploads the run's
``events.jsonl`` / ``metrics.jsonl`` and sets the run's final status.

Every call goes through an explicit :class:`mlflow.MlflowClient`; nothing here touches MLflow's global state
(``mlflow.set_tracking_uri``, active runs), so several studies or trials may track in one process.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from .config import flatten, redact_url
from .hooks import EvalStats, Event, Hook, RunInfo, StepStats, TrainResult

DEFAULT_DIR = Path("mlflow")
SECRET_PARAMS = {"alerts.telegram.token"}

# StepStats field -> metric name. Training-batch values carry no prefix except diagonality, which would
# otherwise collide with the validation diagonality of the evaluations.
STEP_METRICS = {"loss": "loss", "mel": "mel", "postnet": "postnet", "gate": "gate", "ga": "ga",
                "grad_norm": "grad_norm", "lr": "lr", "ga_weight": "ga_weight",
                "diagonality": "train_diagonality", "step_time": "step_time"}
EVAL_METRICS = ("val_loss", "val_mel", "val_postnet", "val_gate", "val_ga", "diagonality", "focus",
                "monotonicity", "coverage", "infer_diagonality", "infer_focus", "infer_monotonicity",
                "infer_coverage", "infer_stop_rate", "elapsed")
# TrainResult.status -> (status tag, MLflow terminal run status)
END_STATUS = {"completed": ("finished", "FINISHED"), "stopped": ("stopped", "KILLED"),
              "failed": ("failed", "FAILED")}


# ----------------------------------------------------------------------------------------------- store
def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's local SQLite store (``mlflow/`` is created)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (DEFAULT_DIR / "artifacts").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DIR.as_posix()}/mlflow.db"


def default_artifact_location() -> str:
    """File URI of ``mlflow/artifacts`` (absolute: a relative location would follow the process's cwd)."""
    root = DEFAULT_DIR / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve().as_uri()


def make_client(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


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
        artifact_location = default_artifact_location()
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)




def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_thinned_in(number: int) -> bool:
    """Evaluation numbers 1, 2, 4, 8, ...: a heatmap series that stays short however long the run."""
    return number >= 1 and number & (number - 1) == 0


# ----------------------------------------------------------------------------------------------- reporter
class MlflowReporter(Hook):
    """A training run as an MLflow run (nested under the study's run when ``parent_run_id`` is given)."""

    name = "mlflow"

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str | None = None,
                 run_name: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, log_every: int = 10,
                 artifact_every: Callable[[int], bool] = _is_thinned_in,
                 objective_fn: Callable[[EvalStats], float] | None = None, log_checkpoint: bool = False):
        if log_every < 1:
            raise ValueError("log_every must be >= 1")
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.run_name, self.tags, self.params = run_name, dict(tags or {}), dict(params or {})
        self.log_every, self.artifact_every = log_every, artifact_every
        self.objective_fn, self.log_checkpoint = objective_fn, log_checkpoint
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.buffer: list[Metric] = []
        self.steps_buffered = 0
        self.evals = 0
        self.last_alignment: tuple[int, Any] | None = None  # (step, tensor) of an evaluation not yet drawn
        self.event_counts: dict[str, int] = {}
        self.trajectories: dict[str, list[tuple[int, float]]] = {"lr": [], "ga_weight": []}

    # ------------------------------------------------------------------------------------- hook
    def on_train_start(self, info: RunInfo) -> None:
        tags = {**self.tags, "run_dir": str(info.run_dir), "device": info.device}
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        if self.run_name:
            tags[MLFLOW_RUN_NAME] = self.run_name
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        self.run_id, self.run_dir = run.info.run_id, Path(info.run_dir)
        run_facts = {"parameters": info.parameters, "train_size": info.train_size, "val_size": info.val_size,
                     "start_step": info.start_step}
        params = config_params(info.config, run_facts, self.params)
        self.client.log_batch(self.run_id, params=params)

    def on_step(self, stats: StepStats) -> list:
        timestamp = _now_ms()
        for field, key in STEP_METRICS.items():
            self._add(key, getattr(stats, field), stats.step, timestamp)
        self.steps_buffered += 1
        if self.steps_buffered >= self.log_every:
            self.flush()
        return []

    def on_eval(self, stats: EvalStats) -> list:
        self.evals += 1
        timestamp = _now_ms()
        for key in EVAL_METRICS:
            self._add(key, getattr(stats, key), stats.step, timestamp)
        self._add("train_loss_mean", stats.train_loss, stats.step, timestamp)
        if self.objective_fn is not None:
            self._add("objective", self.objective_fn(stats), stats.step, timestamp)
        self.flush()  # step metrics ride along in the same batch
        if stats.alignment is not None:
            if self.artifact_every(self.evals):
                self._log_alignment(stats.step, stats.alignment)
                self.last_alignment = None
            else:
                self.last_alignment = (stats.step, stats.alignment)
        return []

    def on_event(self, event: Event) -> None:
        if not event.applied or self.run_id is None:
            return
        key = f"events.{event.source}.{event.control}"
        self.event_counts[key] = self.event_counts.get(key, 0) + 1
        timestamp = _now_ms()
        self._add(key, self.event_counts[key], event.step, timestamp)
        if event.control in self.trajectories and _finite(event.new):
            self.trajectories[event.control].append((event.step, float(event.new)))
            self._add(f"control.{event.control}", event.new, event.step, timestamp)

    def on_train_end(self, result: TrainResult) -> None:
        if self.run_id is None:
            return
        if result.best_val_loss is not None:
            self._add("best_val_loss", result.best_val_loss, result.step, _now_ms())
        self.flush()
        if self.last_alignment is not None:  # the last evaluation's heatmap, if thinning skipped it
            self._log_alignment(*self.last_alignment)
            self.last_alignment = None
        run_dir = Path(result.run_dir)
        for name in ("events.jsonl", "metrics.jsonl"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name), "logs")
        if self.log_checkpoint:
            for name in ("best.pt", "last.pt"):
                if (run_dir / "checkpoints" / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / "checkpoints" / name), "checkpoints")
                    break
        tag, status = END_STATUS.get(result.status, ("failed", "FAILED"))
        self.client.log_batch(self.run_id, tags=[RunTag("status", tag),
                                                 RunTag("reason", (result.reason or "")[:MAX_TAG_VAL_LENGTH]),
                                                 RunTag("final_step", str(result.step))])
        self.client.set_terminated(self.run_id, status=status)

    # ------------------------------------------------------------------------------------- artifacts
    def log_audio_preview(self, wav: Any, sample_rate: int, step: int, name: str = "preview") -> str:
        """Write a waveform as a WAV artifact ``audio/<name>_step<step>.wav``; returns its artifact path."""
        from .data.audio import save_wav  # soundfile is only needed when audio is actually logged

        filename = f"{name}_step{step:06d}.wav"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            save_wav(path, wav, sample_rate)
            self.client.log_artifact(self._require_run(), str(path), "audio")
        return f"audio/{filename}"

    def _log_alignment(self, step: int, alignment: Any) -> None:
        from .plots import alignment_png  # matplotlib only when a heatmap is drawn

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"alignment_step{step:06d}.png"
            path.write_bytes(alignment_png(alignment, title=f"step {step}"))
            self.client.log_artifact(self._require_run(), str(path), "alignment")

    # ------------------------------------------------------------------------------------- batching
    def _add(self, key: str, value: Any, step: int, timestamp: int) -> None:
        if _finite(value):  # MLflow stores NaN, but it breaks charts and comparisons
            self.buffer.append(Metric(key, float(value), timestamp, int(step)))

    def flush(self) -> None:
        """Write the buffered metrics with one ``log_batch`` (the client splits oversized batches)."""
        if self.buffer and self.run_id is not None:
            self.client.log_batch(self.run_id, metrics=self.buffer)
        self.buffer, self.steps_buffered = [], 0

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowReporter: no run yet (on_train_start has not been called)")
        return self.run_id


# ----------------------------------------------------------------------------------------------- study run
STUDY_ROLE_TAG = "smart_tuner.role"


def start_study_run(client: MlflowClient, experiment_name: str, study_name: str, storage_url_redacted: str,
                    objective_path: str | os.PathLike, artifact_location: str | None = None) -> str:
    """The study's parent run: an unfinished one with the same study name is reused, so that several workers
    (or a resumed study) nest their trials under one run."""
    experiment_id = ensure_experiment(client, experiment_name, artifact_location)
    existing = client.search_runs([experiment_id],
                                  filter_string=f"tags.study = '{study_name}' and "
                                                f"tags.`{STUDY_ROLE_TAG}` = 'study' and "
                                                f"attributes.status = 'RUNNING'",
                                  max_results=1, order_by=["attributes.start_time ASC"])
    if existing:
        return existing[0].info.run_id
    tags = {"study": study_name, "storage": redact_url(storage_url_redacted), "objective": str(objective_path),
            STUDY_ROLE_TAG: "study", MLFLOW_RUN_NAME: study_name}
    return client.create_run(experiment_id, tags=tags, run_name=study_name).info.run_id


def end_study_run(client: MlflowClient, run_id: str, summary: dict[str, Any]) -> None:
    """Finish the parent run: finite numbers of ``summary`` become metrics, everything else tags."""
    flat = flatten(summary)
    metrics = [Metric(k[:MAX_ENTITY_KEY_LENGTH], float(v), _now_ms(), 0) for k, v in flat.items() if _finite(v)]
    tags = [RunTag(k[:MAX_ENTITY_KEY_LENGTH], (v if isinstance(v, str) else json.dumps(v, default=str))
                   [:MAX_TAG_VAL_LENGTH])
            for k, v in flat.items() if not _finite(v)]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.set_terminated(run_id, status="FINISHED")
