"""One trial of the study: the Optuna objective that trains a config with the adapters on, and its reporting hook.

trial -> params (search space) -> config (base config < --set < params) -> run_training(...) -> value.
At each evaluation one documented scalar is reported, ``val_<output loss> + ga_penalty * (1 - diagonality)``, the
output loss being the model family's (Tacotron 2: ``val_postnet``): the mel loss alone does not show whether
attention aligned, so an unaligned trial is penalized. Optuna's
pruner decides on it after a warm-up; a pruned trial stops through a ``stop`` decision, so its run directory,
metrics and events stay complete. A run that fails (rollback budget spent) ends its trial as failed with the
reason; any other exception fails the trial with its traceback in a user attribute. :class:`TrialOutcome` is the
one place that tells these endings apart and records them. Nothing in a trial crashes the study.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..config import Config, build_config, merge, parse_set_overrides
from ..hooks import Decision, EvalStats, Event, Hook, TrainResult
from ..train.runner import run_training
from ..tts import build_family
from ..watch.previews import list_previews
from .options import StudyOptions
from .space import ObjectiveSpec, suggest
from .storage import StudyTrials, allow_experimental, retried_number

log = logging.getLogger(__name__)


class TrialFailed(RuntimeError):
    """The trial's training run ended as failed (for example its rollback budget was spent)."""


def trial_base(spec: ObjectiveSpec, options: StudyOptions) -> dict[str, Any]:
    """The config overrides every trial starts from: the objective file's config < ``--set``, ``--corpus`` and
    ``--threads``; a trial's sampled params go on top."""
    return merge(spec.config, parse_set_overrides(options.config_sets()))


# ----------------------------------------------------------------------------------------------- reporting
class OptunaReporter(Hook):
    """Reports the objective at each evaluation, records trial attributes, asks to stop when pruned."""

    name = "optuna"

    def __init__(self, trial: optuna.Trial, ga_penalty: float, output_loss: str):
        # output_loss: the model family's term that measures the final output (ModelFamily.output_loss)
        self.trial, self.ga_penalty, self.output_loss = trial, ga_penalty, output_loss
        self.value: float | None = None
        self.pruned_at: int | None = None
        self.event_counts: dict[str, int] = {}  # applied decisions by "<source>.<control>"
        self.alarm_counts: dict[str, int] = {}  # the applied ones that answered trouble (Event.is_alarm)

    def objective_value(self, stats: EvalStats) -> float:
        return stats.val_losses[self.output_loss] + self.ga_penalty * (1.0 - stats.diagonality)

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        value = self.objective_value(stats)
        if not math.isfinite(value):
            return []
        self.value = value
        self.trial.report(value, stats.step)
        metrics = stats.metrics()
        for key in (*EvalStats.SUMMARY, f"val_{self.output_loss}"):
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
    """How a trial ended: complete with a value, pruned, failed with a reason, or failed by an exception."""

    state: str  # as the trial's MLflow run records it (trial_state): complete | pruned | fail
    reason: str  # its trial_reason
    value: float | None = None  # complete: the value Optuna gets
    error: BaseException | None = None  # otherwise what ends the trial in Optuna
    user_attrs: dict[str, Any] = field(default_factory=dict)  # the failure, or the exception's traceback

    @classmethod
    def of_run(cls, result: TrainResult, reporter: OptunaReporter) -> TrialOutcome:
        if reporter.pruned_at is not None:
            reason = f"pruned at step {reporter.pruned_at}"
            return cls("pruned", reason, error=optuna.TrialPruned(reason))
        if result.status == "failed":
            return cls("fail", result.reason, error=TrialFailed(result.reason), user_attrs={"failure": result.reason})
        if reporter.value is None:
            return cls("fail", "no finite evaluation",
                       error=TrialFailed("no finite evaluation: the run never produced a value to report"))
        return cls("complete", result.reason, value=reporter.value)

    @classmethod
    def of_exception(cls, exc: Exception) -> TrialOutcome:
        """Called while ``exc`` is being handled, so that its traceback is the one recorded."""
        return cls("fail", f"{type(exc).__name__}: {exc}", error=exc,
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


# ----------------------------------------------------------------------------------------------- objective
class Objective:
    """The study's objective: each call trains the config of one trial and reports it to Optuna."""

    def __init__(self, spec: ObjectiveSpec, options: StudyOptions, target: int | None = None, tracker: Any = None):
        self.spec, self.options = spec, options
        self.target = target  # the study's trial budget (counted trials) for the admission check; None: no check
        self.tracker = tracker  # a tracking.StudyTracker, or None when tracking is off
        self.artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None
        self.base = trial_base(spec, options)

    def config_for(self, trial: optuna.Trial) -> Config:
        return build_config(merge(self.base, suggest(trial, self.spec.space)))

    def admit(self, trial: optuna.Trial) -> None:
        """Workers check the budget before they ask for a trial; two may ask at once. Trial numbers are given
        out in order, so a trial that finds the budget taken by lower numbers leaves as over budget."""
        if self.target is None:
            return
        trials = trial.study.get_trials(deepcopy=False)
        mine = next(t for t in trials if t.number == trial.number)
        if retried_number(mine) is not None:
            return  # a re-queued killed trial replaces one already counted
        if StudyTrials.of(t for t in trials if t.number < trial.number).counted >= self.target:
            trial.set_user_attr("over_budget", True)
            trial.study.stop()
            raise optuna.TrialPruned("over the study's trial budget (another worker took the last slot)")

    def __call__(self, trial: optuna.Trial) -> float:
        self.admit(trial)
        mlflow_run = None
        try:
            config = self.config_for(trial)
            run_dir = self.options.runs_dir / self.options.study_name / f"trial-{trial.number:04d}"
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("config", config.to_dict())
            reporter = OptunaReporter(trial, self.spec.ga_penalty, build_family(config).output_loss)
            hooks: list[Hook] = [reporter]
            if self.tracker is not None and config.tracking.enabled:
                mlflow_run = self.tracker.reporter(trial.number, config, trial.params, reporter.objective_value)
                hooks.append(mlflow_run)
            try:
                result = run_training(config, run_dir, resume=False, extra_hooks=hooks, progress=False)
            finally:
                if mlflow_run is not None and mlflow_run.run_id:
                    trial.set_user_attr("mlflow_run_id", mlflow_run.run_id)
                self._upload_previews(trial, run_dir)
            outcome = TrialOutcome.of_run(result, reporter)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            outcome = TrialOutcome.of_exception(exc)
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
