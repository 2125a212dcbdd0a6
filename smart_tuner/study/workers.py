"""The study: an objective file and an Optuna study -> trials, each a full training run with the adapters.

trial -> params (search space) -> config (base config < --set < params) -> run_training(...) -> value.
At each evaluation one documented scalar is reported, ``val_postnet + ga_penalty * (1 - diagonality)``: the
postnet mel loss alone does not show whether attention aligned, so an unaligned trial is penalized. Optuna's
pruner decides on it after a warm-up; a pruned trial stops through a ``stop`` decision, so its run directory,
metrics and events stay complete. A run that fails (rollback budget spent) ends its trial as failed with the
reason; any other exception fails the trial with its traceback in a user attribute. Nothing in a trial crashes
the study.

Several workers share one study through its storage (SQLite by default; PostgreSQL or any SQLAlchemy URL for
several machines). RDB storages record heartbeats, so a killed worker's trial is failed and re-queued by
``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from ..config import Config, ConfigError, build_config, flatten, merge, parse_set_overrides, redact_url
from ..hooks import Decision, EvalStats, Event, Hook, TrainResult
from ..paths import study_artifact_dir
from ..train.runner import run_training
from .space import ObjectiveSpec, load_objective, make_pruner, params_to_overrides, reference_params, suggest

log = logging.getLogger(__name__)
# Heartbeats and the retry callback are marked experimental in Optuna; they are what several workers rely on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "sha", "none")
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial without a heartbeat for this long is failed (and re-queued)
MAX_RETRIES = 2  # re-queues of one killed trial


class StudyError(ConfigError):
    """A study cannot be run or read as asked; the message says what to do."""


class TrialFailed(RuntimeError):
    """The trial's training run ended as failed (for example its rollback budget was spent)."""


@dataclass
class StudyOptions:
    objective: Path = Path("objectives/demo.yaml")
    study: str | None = None  # default: the objective file's name
    storage: str | None = None  # default: sqlite:///studies/<study>.db
    sampler: str = "tpe"
    startup_trials: int = 5  # random trials before TPE / GP / CMA-ES take over
    pruner: str | None = None  # default: the objective file's pruning.pruner
    seed: int | None = None
    timeout: float | None = None
    trials: int = 10
    sets: list[str] = field(default_factory=list)
    corpus: str | None = None
    runs_dir: Path = Path("runs")
    threads: int = 0  # torch threads per worker; 0: cores / workers
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    enqueue_reference: bool = True  # a new study's first trial is the objective file's base config
    tracking_uri: str | None = None  # MLflow store; default $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db
    mlflow_parent: str | None = None  # the study's parent MLflow run (given to worker processes)
    artifact_dir: Path | None = None  # Optuna artifact store of the trials' previews; default: smart_tuner.paths

    @property
    def study_name(self) -> str:
        return self.study or self.objective.stem


# ----------------------------------------------------------------------------------------------- storage
def storage_url(name: str, url: str | None) -> str:
    if url:
        return url
    Path("studies").mkdir(exist_ok=True)
    return f"sqlite:///studies/{name}.db"


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats, so that a killed worker's trial is failed and re-queued."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes wait for the lock
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES),
                **kwargs)
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            text = str(exc)
            # Workers starting at once on an empty database race to create the tables; the loser retries.
            if attempt < 4 and ("already exists" in text or "UniqueViolation" in text):
                time.sleep(0.5 + random.random())
                continue
            raise StudyError(f"storage {redact_url(url)}: cannot open it ({type(exc).__name__}: "
                             f"{redact_url(text.splitlines()[0])[:200]})") from None
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int | None, startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """``startup_trials`` random trials before the model-based samplers take over: Optuna's default of 10 would
    make a short study (the demo's 6 trials) a random search."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)  # multivariate in Optuna 5
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials)
    raise StudyError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


# ----------------------------------------------------------------------------------------------- reporting
class OptunaReporter(Hook):
    """Reports the objective at each evaluation, records trial attributes, asks to stop when pruned."""

    name = "optuna"

    def __init__(self, trial: optuna.Trial, ga_penalty: float):
        self.trial, self.ga_penalty = trial, ga_penalty
        self.value: float | None = None
        self.pruned_at: int | None = None
        self.event_counts: dict[str, int] = {}

    def objective_value(self, stats: EvalStats) -> float:
        return stats.val_postnet + self.ga_penalty * (1.0 - stats.diagonality)

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        value = self.objective_value(stats)
        if not math.isfinite(value):
            return []
        self.value = value
        self.trial.report(value, stats.step)
        for key in ("diagonality", "infer_diagonality", "focus", "val_loss", "val_postnet"):
            self.trial.set_user_attr(key, getattr(stats, key))
        self.trial.set_user_attr("step", stats.step)
        if self.trial.should_prune():
            self.pruned_at = stats.step
            return [Decision("stop", None, f"pruned by Optuna at step {stats.step}", value)]
        return []

    def on_event(self, event: Event) -> None:
        if event.applied and event.source != self.name:
            key = f"{event.source}.{event.control}"
            self.event_counts[key] = self.event_counts.get(key, 0) + 1

    def on_train_end(self, result: TrainResult) -> None:
        self.trial.set_user_attr("events", dict(self.event_counts))
        self.trial.set_user_attr("status", result.status)
        self.trial.set_user_attr("reason", result.reason)


# ----------------------------------------------------------------------------------------------- objective
class Objective:
    def __init__(self, spec: ObjectiveSpec, options: StudyOptions, study_name: str, target: int | None = None,
                 tracker: Any = None):
        self.spec, self.options, self.study_name = spec, options, study_name
        self.target = target  # the study's trial budget (counted trials), for the admission check
        self.tracker = tracker  # a tracking.StudyTracker, or None when tracking is off
        self.artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None
        self.base = merge(spec.config, parse_set_overrides(self._sets()))
        searched = {d.key for d in spec.space}
        clash = sorted(k for k in flatten(parse_set_overrides(options.sets)) if k in searched)
        if clash:
            log.warning("--set of searched keys %s: each trial's sampled value wins", ", ".join(clash))

    def _sets(self) -> list[str]:
        sets = list(self.options.sets)
        if self.options.corpus:
            sets.append(f"data.corpus={self.options.corpus}")
        if self.options.threads:
            sets.append(f"train.num_threads={self.options.threads}")
        return sets

    def config_for(self, trial: optuna.Trial) -> Config:
        return build_config(merge(self.base, suggest(trial, self.spec.space)))

    def admit(self, trial: optuna.Trial) -> None:
        """Workers check the budget before they ask for a trial; two may ask at once. Trial numbers are given
        out in order, so a trial that finds the budget taken by lower numbers leaves as over budget."""
        if self.target is None:
            return
        trials = trial.study.get_trials(deepcopy=False)
        mine = next(t for t in trials if t.number == trial.number)
        if _retried_number(mine) is not None:
            return  # a re-queued killed trial replaces one already counted
        if _count(t for t in trials if t.number < trial.number) >= self.target:
            trial.set_user_attr("over_budget", True)
            trial.study.stop()
            raise optuna.TrialPruned("over the study's trial budget (another worker took the last slot)")

    def __call__(self, trial: optuna.Trial) -> float:
        self.admit(trial)
        mlflow_run = None
        try:
            config = self.config_for(trial)
            run_dir = self.options.runs_dir / self.study_name / f"trial-{trial.number:04d}"
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("config", config.to_dict())
            reporter = OptunaReporter(trial, self.spec.ga_penalty)
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
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            if mlflow_run is not None:
                mlflow_run.set_outcome("fail", f"{type(exc).__name__}: {exc}")
            raise
        if reporter.pruned_at is not None:
            if mlflow_run is not None:
                mlflow_run.set_outcome("pruned", f"pruned at step {reporter.pruned_at}")
            raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
        if result.status == "failed":
            trial.set_user_attr("failure", result.reason)
            if mlflow_run is not None:
                mlflow_run.set_outcome("fail", result.reason)
            raise TrialFailed(result.reason)
        if reporter.value is None:
            if mlflow_run is not None:
                mlflow_run.set_outcome("fail", "no finite evaluation")
            raise TrialFailed("no finite evaluation: the run never produced a value to report")
        if mlflow_run is not None:
            mlflow_run.set_outcome("complete", result.reason)
        return reporter.value

    def _upload_previews(self, trial: optuna.Trial, run_dir: Path) -> None:
        """The run's alignment images (and the last mel image and audio) into the study's artifact store, where
        optuna-dashboard shows them with the trial. Best effort: a full disk must not fail a finished trial."""
        from ..watch.previews import list_previews

        previews = list_previews(run_dir)
        if not previews:
            return
        try:
            if self.artifact_store is None:
                where = self.artifact_dir()
                where.mkdir(parents=True, exist_ok=True)
                self.artifact_store = optuna.artifacts.FileSystemArtifactStore(where)
            uploads = [(step, files["alignment.png"]) for step, files in previews if "alignment.png" in files]
            last_step, last = previews[-1]
            uploads += [(last_step, last[name]) for name in ("mel.png", "audio.wav") if name in last]
            with tempfile.TemporaryDirectory() as tmp:
                for step, path in uploads:
                    named = Path(tmp) / f"{path.stem}_step{step:06d}{path.suffix}"  # the dashboard lists names
                    shutil.copyfile(path, named)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.artifacts.upload_artifact(
                            artifact_store=self.artifact_store, file_path=str(named), study_or_trial=trial,
                            mimetype="audio/wav" if path.suffix == ".wav" else "image/png")
        except Exception as exc:
            log.warning("trial %d: uploading previews to %s failed: %s", trial.number, self.artifact_dir(), exc)

    def artifact_dir(self) -> Path:
        return self.options.artifact_dir or study_artifact_dir(storage_url(self.study_name, self.options.storage))


# ----------------------------------------------------------------------------------------------- optimize
def _retried_number(trial: optuna.trial.FrozenTrial) -> int | None:
    with warnings.catch_warnings():  # experimental in Optuna, and called for every trial of every count
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def _count(trials) -> int:
    """Trials that use the budget: all but over-budget ones and failed ones that were re-queued (the retry
    counts instead)."""
    trials = list(trials)
    retried = {_retried_number(t) for t in trials} - {None}
    return sum(1 for t in trials if not t.user_attrs.get("over_budget")
               and not (t.state == TrialState.FAIL and t.number in retried))


def counted_trials(study: optuna.Study) -> int:
    return _count(study.get_trials(deepcopy=False))


def open_study(options: StudyOptions, spec: ObjectiveSpec, create: bool = True) -> optuna.Study:
    name = options.study_name
    url = storage_url(name, options.storage)
    storage = open_storage(url, options.heartbeat_interval, options.grace_period)
    max_steps = build_config(merge(spec.config, parse_set_overrides(options.sets))).train.max_steps
    pruner = make_pruner(spec.pruning, options.pruner, max_steps=max_steps)
    sampler = make_sampler(options.sampler, options.seed, options.startup_trials)
    if create:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize", load_if_exists=True)
        if not study.user_attrs.get("objective"):
            study.set_user_attr("objective", str(options.objective))
        if options.enqueue_reference and not study.user_attrs.get("reference_enqueued"):
            study.set_user_attr("reference_enqueued", True)
            params, left_out = reference_params(spec)
            study.enqueue_trial(params, user_attrs={"reference": True}, skip_if_exists=True)
            if left_out:
                log.warning("reference defaults outside the search space (sampled instead): %s", ", ".join(left_out))
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StudyError(f"no study {name!r} in {redact_url(url)}; run `optimize --study {name}` first, or "
                         f"pass --storage") from None


def open_study_readonly(options: StudyOptions) -> optuna.Study:
    """An existing study, for reading results (``best``, ``train --from-study``)."""
    _route_optuna_logging()
    url = storage_url(options.study_name, options.storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise StudyError(f"no study storage at {url[len('sqlite:///'):]}; run `optimize --study "
                         f"{options.study_name}` first, or pass --storage")
    try:
        return optuna.load_study(study_name=options.study_name, storage=open_storage(url))
    except KeyError:
        raise StudyError(f"no study {options.study_name!r} in {redact_url(url)}") from None


def run_worker(options: StudyOptions, target: int, deadline: float | None) -> None:
    """Run trials of the shared study until it holds ``target`` counted trials (or the deadline passes)."""
    spec = load_objective(options.objective)
    study = open_study(options, spec)
    objective = Objective(spec, options, study.study_name, target)
    objective.tracker = _tracker(options, objective, study.study_name)
    while counted_trials(study) < target and (deadline is None or time.time() < deadline):
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def _route_optuna_logging() -> None:
    # Optuna's own stderr handler would garble progress bars; its records go through ours instead.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def optimize(options: StudyOptions, n_jobs: int = 1, gpus: list[str] | None = None,
             progress: bool = True) -> optuna.Study:
    """Run ``options.trials`` more trials of the study, in ``n_jobs`` worker processes (one per GPU)."""
    _route_optuna_logging()
    spec = load_objective(options.objective)
    if options.sampler not in SAMPLERS:
        raise StudyError(f"--sampler {options.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if options.pruner is not None and options.pruner not in PRUNERS:
        raise StudyError(f"--pruner {options.pruner!r}: choose one of {', '.join(PRUNERS)}")
    study = open_study(options, spec)
    workers = len(gpus) if gpus else max(1, n_jobs)
    if not options.threads and not gpus:
        options.threads = max(1, (os.cpu_count() or 1) // workers)  # threads x processes <= cores
    objective = Objective(spec, options, study.study_name)
    objective.tracker = _tracker(options, objective, study.study_name)
    if objective.tracker is not None:
        options.mlflow_parent = objective.tracker.parent_run_id  # the workers nest their trials under it
    # The corpus and its features are prepared once, before any worker starts.
    from ..data.dataset import prepare_data

    prepare_data(build_config(objective.base))
    # Waiting trials (the enqueued reference, a re-queued killed trial) are among the trials run now.
    start = counted_trials(study) - len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    target = start + options.trials
    deadline = time.time() + options.timeout if options.timeout else None
    objective.target = target
    log.info("study %s in %s: %d trials so far, running %d more with %d worker(s)", study.study_name,
             redact_url(storage_url(study.study_name, options.storage)), start, options.trials, workers)
    bar = tqdm(total=options.trials, desc=f"study {study.study_name}", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            while counted_trials(study) < target and (deadline is None or time.time() < deadline):
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
                _update_bar(bar, study, start)
        else:
            _run_worker_processes(options, target, deadline, gpus or [None] * workers, study, bar, start)
    finally:
        _update_bar(bar, study, start)
        bar.close()
        if objective.tracker is not None:
            _finish_tracking(objective.tracker, study)
    return study


def _tracker(options: StudyOptions, objective: Objective, study_name: str) -> Any:
    """The study's MLflow tracker, or None when the base config turns tracking off."""
    if not build_config(objective.base).tracking.enabled:
        return None
    from ..watch.tracking import StudyTracker, open_tracking

    client = open_tracking(options.tracking_uri)
    return StudyTracker(client, study_name, storage_url(study_name, options.storage), options.objective,
                        parent_run_id=options.mlflow_parent)


def _finish_tracking(tracker: Any, study: optuna.Study) -> None:
    """Close the study's parent run with its summary; upload the best trial's final checkpoint."""
    try:
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("over_budget")]
        best = _best_trial(study)
        summary = {"trials": len(trials), **{f"trials_{state.name.lower()}": sum(t.state == state for t in trials)
                                              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}}
        if best is not None:
            summary.update(best_value=best.value, best_trial=str(best.number),
                           best_diagonality=best.user_attrs.get("diagonality"), best_params=best.params)
        tracker.finish(summary, best.user_attrs.get("mlflow_run_id") if best else None,
                       best.user_attrs.get("run_dir") if best else None)
    except Exception as exc:  # the study itself is safe in its storage; tracking is best effort
        log.warning("MLflow: closing the study run failed: %s: %s", type(exc).__name__, exc)


def _update_bar(bar: tqdm, study: optuna.Study, start: int) -> None:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    bar.n = min(bar.total, max(0, len(finished) - start))
    best = _best_trial(study)
    bar.set_postfix(best=f"{best.value:.4f}" if best else "-", refresh=False)
    bar.refresh()


def _run_worker_processes(options: StudyOptions, target: int, deadline: float | None, slots: list[str | None],
                          study: optuna.Study, bar: tqdm, start: int) -> None:
    """One process per slot (a GPU id, or None on CPU), each running trials until the study is full."""
    procs = []
    for slot in slots:
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        command = [sys.executable, "-m", "smart_tuner", "worker", "--objective", str(options.objective),
                   "--study", study.study_name, "--storage", storage_url(study.study_name, options.storage),
                   "--sampler", options.sampler, "--startup-trials", str(options.startup_trials),
                   "--target", str(target), "--threads", str(options.threads),
                   "--runs-dir", str(options.runs_dir)]
        if options.pruner:
            command += ["--pruner", options.pruner]
        if options.seed is not None:
            command += ["--seed", str(options.seed + len(procs))]  # distinct streams per worker
        if deadline:
            command += ["--deadline", str(deadline)]
        if options.corpus:
            command += ["--corpus", options.corpus]
        command += ["--heartbeat-interval", str(options.heartbeat_interval),
                    "--grace-period", str(options.grace_period)]
        if options.artifact_dir:
            command += ["--artifact-dir", str(options.artifact_dir)]
        if options.tracking_uri:
            command += ["--tracking-uri", options.tracking_uri]
        if options.mlflow_parent:
            command += ["--mlflow-parent", options.mlflow_parent]
        for item in options.sets:
            command += ["--set", item]
        procs.append(subprocess.Popen(command, env=env))
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2.0)
            _update_bar(bar, study, start)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        log.warning("%d worker process(es) exited with an error: %s", len(failed), failed)


# ----------------------------------------------------------------------------------------------- results
def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: t.value) if complete else None


def summary(study: optuna.Study) -> str:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("over_budget")]
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                            TrialState.WAITING)}
    lines = [f"study {study.study_name}: {len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)]
    best = _best_trial(study)
    if best is None:
        lines.append("no complete trial yet")
    else:
        lines.append(f"best trial {best.number}: value {best.value:.4f}, diagonality "
                     f"{best.user_attrs.get('diagonality', float('nan')):.3f}, run dir {best.user_attrs.get('run_dir')}")
        lines += [f"  {key} = {value}" for key, value in sorted(best.params.items())]
    for t in trials:
        if t.state == TrialState.FAIL and (t.user_attrs.get("failure") or t.user_attrs.get("traceback")):
            reason = t.user_attrs.get("failure") or t.user_attrs["traceback"].strip().splitlines()[-1]
            lines.append(f"trial {t.number} failed: {reason}")
    return "\n".join(lines)


def best_config(study: optuna.Study, objective: Path | None = None) -> tuple[Config, optuna.trial.FrozenTrial]:
    """The full training config of the best trial: stored with the trial, or rebuilt from its params."""
    best = _best_trial(study)
    if best is None:
        raise StudyError(f"study {study.study_name!r} has no complete trial yet")
    if "config" in best.user_attrs:
        return build_config(best.user_attrs["config"]), best
    path = objective or Path(study.user_attrs.get("objective", ""))
    spec = load_objective(path)
    return build_config(merge(spec.config, params_to_overrides(best.params))), best
