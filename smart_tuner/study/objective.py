"""One trial of the study: the Optuna objective that trains a config with the adapters on, and its reporting hook.

trial -> params (search space) -> config (base config < --set < params) -> run_training(...) -> value.
At each evaluation one documented scalar is reported, the score (:class:`~smart_tuner.study.objective_file.Score`:
``val_<output loss> + alignment_penalty * (1 - D) + stop_penalty * (1 - free_running_stop_rate)``), the output loss
being the model family's (Tacotron 2: ``val_postnet``): the mel loss alone does not show whether attention aligned, so
an unaligned trial is penalized. Optuna's pruner decides on it after a warm-up; a pruned trial stops through a
``stop`` decision, so its run directory, metrics and events stay complete. A run that fails (rollback budget spent)
ends its trial as failed with the reason; any other exception fails the trial with its traceback in a user attribute.
:class:`TrialOutcome` is the one place that tells these endings apart and records them. Nothing in a trial crashes the
study.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..config import Config, build_config, merge, parse_set_overrides
from ..hooks import Decision, EvalStats, Event, Hook, RunInfo, StepStats, TrainResult
from ..train.distributed import Group, GroupLost
from ..train.runner import run_training
from ..tts import build_family
from ..watch.previews import list_previews
from .objective_file import ObjectiveSpec, Score, suggest
from .options import StudyOptions
from .storage import TrialFailed, allow_experimental, retried_number

log = logging.getLogger(__name__)


def trial_base(spec: ObjectiveSpec, options: StudyOptions) -> dict[str, Any]:
    """The config overrides every trial starts from: the objective file's config < ``--set``, ``--corpus`` and
    ``--threads``; a trial's sampled params go on top."""
    return merge(spec.config, parse_set_overrides(options.config_sets()))


# ----------------------------------------------------------------------------------------------- reporting
class OptunaReporter(Hook):
    """Reports the objective at each evaluation, records trial attributes, asks to stop when pruned."""

    name = "optuna"

    def __init__(self, trial: optuna.Trial, score: Score, output_loss: str,
                 inherited: dict[int, float] | None = None):
        # output_loss: the model family's term that measures the final output (ModelFamily.output_loss);
        # inherited: the intermediate values of the trial this one continues, reported again up to its checkpoint
        self.trial, self.score, self.output_loss = trial, score, output_loss
        self.inherited = dict(inherited or {})
        self.value: float | None = None
        self.pruned_at: int | None = None
        self.event_counts: dict[str, int] = {}  # applied decisions by "<source>.<control>"
        self.alarm_counts: dict[str, int] = {}  # the applied ones that answered trouble (Event.is_alarm)

    def on_train_start(self, info: RunInfo) -> None:
        for step, value in sorted(self.inherited.items()):
            if step <= info.start_step:
                self.trial.report(value, step)
                self.value = value

    def objective_value(self, stats: EvalStats) -> float:
        return self.score.value(stats.val_losses[self.output_loss], stats.metrics())

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        value = self.objective_value(stats)
        if not math.isfinite(value):
            return []
        self.value = value
        self.trial.report(value, stats.step)
        metrics = stats.metrics()
        for key in (*EvalStats.SUMMARY, f"val_{self.output_loss}"):
            if math.isfinite(metrics[key]):  # NaN: not measured (free-running with data.free_running_sentences 0)
                self.trial.set_user_attr(key, metrics[key])
        self.trial.set_user_attr("step", stats.step)
        if self.trial.should_prune():
            self.pruned_at = stats.step
            return [Decision("stop", None, f"pruned by Optuna at step {stats.step}", value)]
        return []

    def on_event(self, event: Event) -> None:
        if event.applied and event.source != self.name:
            key = f"{event.source}.{event.control}"
            self.event_counts[key] = self.event_counts.get(key, 0) + 1
            if event.is_alarm:
                self.alarm_counts[key] = self.alarm_counts.get(key, 0) + 1

    def on_train_end(self, result: TrainResult) -> None:
        self.trial.set_user_attr("events", dict(self.event_counts))
        self.trial.set_user_attr("alarms", dict(self.alarm_counts))
        self.trial.set_user_attr("status", result.status)
        self.trial.set_user_attr("reason", result.reason)


# ----------------------------------------------------------------------------------------------- outcome
@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: completed with a value, pruned, failed with a reason or by an exception, or interrupted."""

    state: str  # as the trial's MLflow run records it (trial_state): completed | pruned | failed | interrupted
    reason: str  # its trial_reason
    value: float | None = None  # completed: the value Optuna gets
    error: BaseException | None = None  # otherwise what ends the trial in Optuna
    user_attrs: dict[str, Any] = field(default_factory=dict)  # the failure, or the exception's traceback

    @classmethod
    def of_run(cls, result: TrainResult, reporter: OptunaReporter) -> TrialOutcome:
        if result.status == "interrupted":  # a signal: failed at once (not left running), and re-queued
            return cls("interrupted", "interrupted", error=TrialFailed(result.reason),
                       user_attrs={"failure": f"interrupted: {result.reason}"})
        if reporter.pruned_at is not None:
            reason = f"pruned at step {reporter.pruned_at}"
            return cls("pruned", reason, error=optuna.TrialPruned(reason))
        if result.status == "failed":
            return cls("failed", result.reason, error=TrialFailed(result.reason), user_attrs={"failure": result.reason})
        if reporter.value is None:
            return cls("failed", "no finite evaluation",
                       error=TrialFailed("no finite evaluation: the run never produced a value to report"))
        return cls("completed", result.reason, value=reporter.value)

    @classmethod
    def of_exception(cls, exc: Exception) -> TrialOutcome:
        """Called while ``exc`` is being handled, so that its traceback is the one recorded."""
        return cls("failed", f"{type(exc).__name__}: {exc}", error=exc,
                   user_attrs={"traceback": traceback.format_exc()[-4000:]})

    def record(self, trial: optuna.Trial, mlflow_run: Any) -> float | None:
        """Record the outcome on the trial and its MLflow run; return the value, or raise what ends the trial."""
        for key, value in self.user_attrs.items():
            trial.set_user_attr(key, value)
        if mlflow_run is not None:
            mlflow_run.set_outcome(self.state, self.reason)
        if self.error is not None:
            raise self.error
        return self.value


def frozen(trial: optuna.Trial, number: int | None = None) -> FrozenTrial:
    """The stored record of ``trial`` (or of trial ``number`` of its study)."""
    number = trial.number if number is None else number
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == number)


def inherited_values(trial: optuna.Trial) -> dict[int, float]:
    """The intermediate values of the failed trial that ``trial`` runs again (the last one of its retry chain)."""
    with allow_experimental():
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen(trial))
    return dict(frozen(trial, history[-1]).intermediate_values) if history else {}


def requeue(trial: optuna.Trial) -> None:
    """Queue a copy of an interrupted trial (same params, user attributes and retry history), as the heartbeat
    callback does for a trial whose worker died: the next worker to ask for a trial continues it."""
    with allow_experimental():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(trial.study, frozen(trial))


# ----------------------------------------------------------------------------------------------- objective
class ProgressReporter(Hook):
    """Shows a running trial's step, loss and diagonality to a person: through ``show`` in this process, or as the
    trial's ``progress`` user attribute (at most every ``interval`` seconds), which ``optimize`` reads for the
    trials of its worker processes."""

    name = "progress"

    def __init__(self, trial: optuna.Trial, max_steps: int, show: Callable[[dict[str, Any]], None] | None = None,
                 interval: float = 5.0):
        self.trial, self.show, self.interval = trial, show, interval
        self.progress: dict[str, Any] = {"trial": trial.number, "step": 0, "max_steps": max_steps,
                                         "loss": None, "diagonality": None}
        self.last = -math.inf

    def on_step(self, stats: StepStats) -> list[Decision]:
        self.progress.update(step=stats.step, loss=stats.loss if math.isfinite(stats.loss) else None)
        self._publish()
        return []

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        self.progress["diagonality"] = stats.diagonality if math.isfinite(stats.diagonality) else None
        self._publish(force=True)
        return []

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.show else self.interval):
            return
        self.last = now
        if self.show is not None:
            self.show(dict(self.progress))
        else:
            self.trial.set_user_attr("progress", dict(self.progress))


class Objective:
    """The study's objective: each call trains the config of one trial and reports it to Optuna. A re-queued trial
    (its worker died, or it was interrupted) continues the dead trial's run from its ``last.pt``, with the dead
    trial's intermediate values up to that checkpoint."""

    def __init__(self, spec: ObjectiveSpec, options: StudyOptions, tracker: Any = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, group: Group | None = None):
        self.spec, self.options = spec, options
        self.group = group or Group()  # several ranks: each trial is announced to the others (follow_trials)
        self.tracker = tracker  # a tracking.StudyTracker, or None when tracking is off
        self.on_progress = on_progress  # shows progress in this process; None: the trial's user attribute
        self.artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None
        self.base = trial_base(spec, options)

    def config_for(self, trial: optuna.Trial) -> Config:
        return build_config(merge(self.base, suggest(trial, self.spec.space)))

    def run_dir_for(self, trial: optuna.Trial) -> tuple[Path, bool]:
        """Where the trial trains, and whether it resumes there: a retry continues the run directory of the trial
        it replaces when that run left a checkpoint."""
        inherited = trial.user_attrs.get("run_dir") if retried_number(frozen(trial)) is not None else None
        if inherited and (Path(inherited) / "checkpoints" / "last.pt").is_file():
            return Path(inherited), True
        return self.options.runs_dir / self.options.study_name / f"trial-{trial.number:04d}", False

    def __call__(self, trial: optuna.Trial) -> float:
        mlflow_run = None
        try:
            config = self.config_for(trial)
            run_dir, resume = self.run_dir_for(trial)
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("config", config.to_dict())
            reporter = OptunaReporter(trial, self.spec.score, build_family(config).output_loss,
                                      inherited=inherited_values(trial) if resume else {})
            hooks: list[Hook] = [reporter, ProgressReporter(trial, config.train.max_steps, self.on_progress)]
            if self.tracker is not None and config.tracking.enabled:
                mlflow_run = self.tracker.reporter(trial.number, config, trial.params, reporter.objective_value)
                hooks.append(mlflow_run)
            if resume:
                log.info("trial %d continues %s from its last checkpoint", trial.number, run_dir)
            self.group.announce((config.to_dict(), str(run_dir), resume))  # the other ranks train it with this one
            try:
                result = run_training(config, run_dir, resume=resume, extra_hooks=hooks, progress=False)
            finally:
                if mlflow_run is not None and mlflow_run.run_id:
                    trial.set_user_attr("mlflow_run_id", mlflow_run.run_id)
                self._upload_previews(trial, run_dir)
            outcome = TrialOutcome.of_run(result, reporter)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            outcome = TrialOutcome.of_exception(exc)
        if outcome.state == "interrupted":
            requeue(trial)
        if self.group.distributed and outcome.state == "failed":
            # A failure may have struck one rank only (a full disk, a storage error, out of memory): the ranks may
            # no longer call the same collectives, so this worker's group trains no other trial.
            self.group.mark_broken(f"trial {trial.number} failed")
        if self.group.broken:
            trial.set_user_attr("failure", outcome.reason)
            if mlflow_run is not None:
                mlflow_run.set_outcome("failed", outcome.reason)
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # GroupLost passes by Optuna's handling
            raise GroupLost(f"trial {trial.number}: {outcome.reason}")
        return outcome.record(trial, mlflow_run)

    def _upload_previews(self, trial: optuna.Trial, run_dir: Path) -> None:
        """The run's alignment images (and the last mel image and audio) into the study's artifact store, where
        optuna-dashboard shows them with the trial. Best effort: a full disk must not fail a finished trial."""
        previews = list_previews(run_dir)
        if not previews:
            return
        where = self.options.artifact_store_dir
        try:
            if self.artifact_store is None:
                where.mkdir(parents=True, exist_ok=True)
                self.artifact_store = optuna.artifacts.FileSystemArtifactStore(where)
            uploads = [(step, files["alignment.png"]) for step, files in previews if "alignment.png" in files]
            last_step, last = previews[-1]
            uploads += [(last_step, last[name]) for name in ("mel.png", "audio.wav") if name in last]
            with tempfile.TemporaryDirectory() as tmp:
                for step, path in uploads:
                    named = Path(tmp) / f"{path.stem}_step{step:06d}{path.suffix}"  # the dashboard lists names
                    shutil.copyfile(path, named)
                    with allow_experimental():
                        optuna.artifacts.upload_artifact(
                            artifact_store=self.artifact_store, file_path=str(named), study_or_trial=trial,
                            mimetype="audio/wav" if path.suffix == ".wav" else "image/png")
        except Exception as exc:
            log.warning("trial %d: uploading previews to %s failed: %s", trial.number, where, exc)
