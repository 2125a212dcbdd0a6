"""Running the study: ``optimize``, its worker processes, the progress bar and the study's MLflow run.

``optimize`` opens (or continues) the study, prepares the corpus once, then runs trials in this process or in
worker processes (``--n-jobs``, or ``--trials-per-gpu`` per GPU with ``--gpus``), each a
``python -m smart_tuner worker`` with the options of this one. Workers share the study through its storage and stop when it holds the requested number of
counted trials (see :mod:`smart_tuner.study.storage`); every worker's trials nest under the study's one parent
MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from typing import Any, Callable

import optuna
from tqdm import tqdm

from ..config import build_config, flatten, parse_set_overrides, redact_url
from .objective import Objective, trial_base
from .options import StudyOptions
from .space import ObjectiveSpec, load_objective, make_pruner, make_sampler, reference_params
from .storage import StudyError, open_storage, route_optuna_logging, study_trials

log = logging.getLogger(__name__)


def open_study(options: StudyOptions, spec: ObjectiveSpec) -> optuna.Study:
    """The study to run trials in, created when new, with the reference defaults (the objective file's base config)
    enqueued as its first trial. The sampler and the pruner are made first: an unknown name is an error before any
    database is created."""
    max_steps = build_config(trial_base(spec, options)).train.max_steps
    pruner = make_pruner(spec.pruning, options.pruner, max_steps=max_steps)
    sampler = make_sampler(options.sampler, options.seed, options.startup_trials)
    searched = {d.key for d in spec.space}
    clash = sorted(k for k in flatten(parse_set_overrides(options.sets)) if k in searched)
    if clash:
        log.warning("--set of searched keys %s: each trial's sampled value wins", ", ".join(clash))
    storage = open_storage(options.storage_url, options.heartbeat_interval, options.grace_period)
    study = optuna.create_study(study_name=options.study_name, storage=storage, sampler=sampler, pruner=pruner,
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


def _run_trials(study: optuna.Study, objective: Objective, deadline: float | None,
                after_each: Callable[[], None] = lambda: None) -> None:
    """One trial at a time until the study holds ``objective.target`` counted trials or the deadline passes."""
    while study_trials(study).counted < objective.target and (deadline is None or time.time() < deadline):
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        after_each()


def run_worker(options: StudyOptions) -> None:
    """The ``worker`` command: trials of the shared study until it holds ``options.target`` counted trials (or
    ``options.deadline`` passes)."""
    route_optuna_logging()
    spec = load_objective(options.objective)
    study = open_study(options, spec)
    tracker = study_tracker(options, trial_base(spec, options))
    _run_trials(study, Objective(spec, options, options.target, tracker), options.deadline)


def optimize(options: StudyOptions, progress: bool = True) -> optuna.Study:
    """Run ``options.trials`` more trials of the study, in ``options.workers`` worker processes (one per GPU).
    ``options`` is left as it is: what this run decides (threads, the MLflow parent run) goes into a copy."""
    route_optuna_logging()
    if options.trials_per_gpu < 1 or (options.trials_per_gpu > 1 and not options.gpu_ids):
        raise StudyError(f"--trials-per-gpu {options.trials_per_gpu}: give a count >= 1, together with --gpus")
    spec = load_objective(options.objective)
    study = open_study(options, spec)
    if not options.threads:  # threads x processes <= cores, GPU workers included (several may share a GPU)
        options = dataclasses.replace(options, threads=max(1, (os.cpu_count() or 1) // options.workers))
    base = trial_base(spec, options)
    tracker = study_tracker(options, base)
    if tracker is not None:  # the workers nest their trials under it
        options = dataclasses.replace(options, mlflow_parent=tracker.parent_run_id)
    # The corpus and its features are prepared once, before any worker starts.
    from ..data.dataset import prepare_data

    prepare_data(build_config(base))
    # Waiting trials (the enqueued reference, a re-queued killed trial) are among the trials run now.
    trials = study_trials(study)
    start = trials.counted - len(trials.waiting)
    target = start + options.trials
    deadline = time.time() + options.timeout if options.timeout else None
    log.info("study %s in %s: %d trials so far, running %d more with %d worker(s)", study.study_name,
             redact_url(options.storage_url), start, options.trials, options.workers)
    bar = tqdm(total=options.trials, desc=f"study {study.study_name}", disable=not progress, dynamic_ncols=True)
    try:
        if options.workers == 1:
            _run_trials(study, Objective(spec, options, target, tracker), deadline,
                        lambda: _update_bar(bar, study, start))
        else:
            _run_worker_processes(dataclasses.replace(options, target=target, deadline=deadline), study, bar, start)
    finally:
        _update_bar(bar, study, start)
        bar.close()
        if tracker is not None:
            _finish_tracking(tracker, study)
    return study


# ----------------------------------------------------------------------------------------------- MLflow
def study_tracker(options: StudyOptions, base: dict[str, Any]) -> Any:
    """The study's MLflow tracker (a new parent run, or the one ``options.mlflow_parent`` names), or None when the
    trials' base config turns tracking off."""
    if not build_config(base).tracking.enabled:
        return None
    from ..watch.tracking import StudyTracker, open_tracking

    return StudyTracker(open_tracking(options.tracking_uri), options.study_name, options.storage_url,
                        options.objective, parent_run_id=options.mlflow_parent)


def _finish_tracking(tracker: Any, study: optuna.Study) -> None:
    """Close the study's parent run with its summary; upload the best trial's final checkpoint."""
    try:
        trials = study_trials(study)
        counts = trials.counts()
        summary = {"trials": len(trials.results),
                   **{f"trials_{state}": counts[state] for state in ("complete", "pruned", "fail")}}
        best = trials.best
        if best is not None:
            summary.update(best_value=best.value, best_trial=str(best.number),
                           best_diagonality=best.user_attrs.get("diagonality"), best_params=best.params)
        tracker.finish(summary, best.user_attrs.get("mlflow_run_id") if best else None,
                       best.user_attrs.get("run_dir") if best else None)
    except Exception as exc:  # the study itself is safe in its storage; tracking is best effort
        log.warning("MLflow: closing the study run failed: %s: %s", type(exc).__name__, exc)


# ----------------------------------------------------------------------------------------------- workers
def _update_bar(bar: tqdm, study: optuna.Study, start: int) -> None:
    trials = study_trials(study)
    finished = len(trials.results) - len(trials.running) - len(trials.waiting)
    bar.n = min(bar.total, max(0, finished - start))
    best = trials.best
    bar.set_postfix(best=f"{best.value:.4f}" if best else "-", refresh=False)
    bar.refresh()


def _run_worker_processes(options: StudyOptions, study: optuna.Study, bar: tqdm, start: int) -> None:
    """One ``worker`` process per slot (``--trials-per-gpu`` per GPU, else ``--n-jobs`` on CPU), each running
    trials until the study is full."""
    procs = []
    for index, gpu in enumerate(options.worker_slots):
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        seed = None if options.seed is None else options.seed + index  # distinct streams per worker
        argv = dataclasses.replace(options, seed=seed).worker_argv()
        procs.append(subprocess.Popen([sys.executable, "-m", "smart_tuner", "worker", *argv], env=env))
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
