"""Running the study: ``optimize``, its worker processes, the progress bar and the study's MLflow run.

``optimize`` opens (or continues) the study, prepares the corpus once, then runs trials in this process or in
worker processes (``--workers``, or ``--trials-per-gpu`` per GPU with ``--gpus``), each a
``python -m smart_tuner worker`` with the options of this one. ``--trials N`` is Optuna's ``n_trials`` for this
command, shared by its workers; ``--study-trials M`` stops every worker once the study holds M trials
(:class:`~smart_tuner.study.storage.BudgetedStudy`); every worker's trials nest under the study's one parent MLflow
run. SIGINT or SIGTERM ends the running trials as failed ("interrupted") and re-queues them: a later run resumes
them from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from tqdm import tqdm

from .. import interrupts
from ..config import Config, build_config, flatten, parse_set_overrides
from ..numeric import is_finite_number
from ..redact import redact_text, redact_url
from ..seeds import derived_seed
from ..train.distributed import Group, GroupLost, torchrun_command, torchrun_env
from ..train.runner import run_training
from ..tts import build_family
from .objective import Objective, trial_base
from .objective_file import ObjectiveSpec, load_objective, make_pruner, make_sampler, reference_params
from .options import StudyOptions
from .storage import (
    BudgetedStudy,
    StudyError,
    StudyFull,
    StudyTrials,
    allow_experimental,
    open_storage,
    route_optuna_logging,
    study_trials,
    summary,
)

log = logging.getLogger(__name__)


def open_study(options: StudyOptions, spec: ObjectiveSpec) -> BudgetedStudy:
    """The study to run trials in, created when new, with the reference defaults (the objective file's base config)
    enqueued as its first trial. The sampler and the pruner are made first: an unknown name is an error before any
    database is created. A storage that cannot be written (read-only) is one clear error."""
    base = build_config(trial_base(spec, options))
    pruner = make_pruner(spec.pruning, options.pruner, max_steps=base.train.max_steps)
    sampler = make_sampler(options.sampler, options.seed, options.sampler_startup_trials)
    searched = {d.key for d in spec.space}
    clash = sorted(k for k in flatten(parse_set_overrides(options.sets)) if k in searched)
    if clash:
        log.warning("--set of searched keys %s: each trial's sampled value wins", ", ".join(clash))
    storage = open_storage(options.storage_url, options.heartbeat_interval, options.grace_period)
    try:
        study = optuna.create_study(study_name=options.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize", load_if_exists=True)
        held = len(study.get_trials(deepcopy=False))
        if options.seed is not None and held:
            # A seeded sampler opened again on a study that holds trials (a second `optimize --seed S`, a script
            # that runs one trial per call) would replay its first suggestions: it goes on from a seed of its own.
            study.sampler = make_sampler(options.sampler, derived_seed(held, options.seed) % 2**32,
                                         options.sampler_startup_trials)
        if not study.metric_names:
            with allow_experimental():
                study.set_metric_names([objective_name(spec, base)])
        if not study.user_attrs.get("objective"):
            study.set_user_attr("objective", str(options.objective))
        if options.enqueue_reference and not study.user_attrs.get("reference_enqueued"):
            study.set_user_attr("reference_enqueued", True)
            params, left_out = reference_params(spec)
            study.enqueue_trial(params, user_attrs={"reference": True}, skip_if_exists=True)
            if left_out:
                log.warning("reference defaults outside the search space (sampled instead): %s", ", ".join(left_out))
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        root: BaseException = exc
        while root.__cause__ or root.__context__:  # the database's own words, under Optuna's and SQLAlchemy's
            root = root.__cause__ or root.__context__
        first = (str(root).splitlines() or [type(root).__name__])[0]
        url = options.storage_url
        raise StudyError(f"storage {redact_url(url)}: cannot write to it ({redact_text(first, url)[:200]});"
                         " a study needs a writable storage (check the file's permissions or the database user's "
                         "rights)") from None
    return BudgetedStudy(study, storage, options.study_trials)


def objective_name(spec: ObjectiveSpec, base: Config) -> str:
    """The study's metric name, as optuna-dashboard shows it: what a trial reports."""
    return spec.score.describe(build_family(base).output_loss)


def _run_trials(study: BudgetedStudy, objective: Objective, trials: int | None, deadline: float | None,
                after_each: Callable[[], None] = lambda: None) -> None:
    """``trials`` trials one at a time (None: no limit), until the study holds ``--study-trials``, the deadline
    passes or a signal asks to stop."""
    done = 0
    while (trials is None or done < trials) and (deadline is None or time.time() < deadline):
        if interrupts.requested():
            break
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        except StudyFull as full:
            log.info("%s: this worker stops", full)
            break
        done += 1
        after_each()


def optimize_command(options: StudyOptions, progress: bool = True) -> int:
    """``optimize``: run the study until its budget is spent or a signal stops it; print what it holds."""
    with interrupts.handle_signals():
        study = optimize(options, progress=progress)
    print(summary(study))
    signum = interrupts.requested()
    if signum is not None:
        print("interrupted: the running trial was failed as interrupted and re-queued; run the same command again "
              "to continue the study (the re-queued trial resumes from its last checkpoint)", flush=True)
        return interrupts.exit_code(signum)
    return 0


def worker_command(options: StudyOptions) -> int:
    """The hidden ``worker`` command that ``optimize`` starts: run trials; a signal ends it with its exit code."""
    with interrupts.handle_signals():
        run_worker(options)
    signum = interrupts.requested()
    return 0 if signum is None else interrupts.exit_code(signum)


def run_worker(options: StudyOptions) -> None:
    """The ``worker`` command: ``options.trials`` trials of the shared study (or until it holds
    ``options.study_trials``, or ``options.deadline`` passes)."""
    route_optuna_logging()
    spec = load_objective(options.objective)
    group = Group.from_env()
    if group.distributed:  # a trial on several GPUs (--gpus-per-trial): rank 0 runs the study, the others follow
        base = build_config(trial_base(spec, options))
        group = Group.from_env(base.train.dist_timeout)
        group.start(group.device(base.train.device))
        if not group.is_main:
            logging.getLogger().setLevel(logging.ERROR)
            follow_trials(group)
            group.stop()
            return
    try:
        study = open_study(options, spec)
        tracker = study_tracker(options, trial_base(spec, options))
        _run_trials(study, Objective(spec, options, tracker, group=group), options.trials, options.deadline)
    except GroupLost as lost:
        log.error("this worker's ranks lost lock-step (%s); it stops, the other workers go on", lost)
        raise SystemExit(1) from None
    finally:
        if group.distributed:
            if not group.broken:
                group.announce(None)  # the study is done here: the other ranks stop following
            group.stop()


def follow_trials(group: Group) -> None:
    """Ranks other than 0 of a multi-GPU trial: train each trial rank 0 announces, until it announces none."""
    while True:
        trial = group.announce(None)
        if trial is None:
            return
        config, run_dir, resume = trial
        try:
            result = run_training(build_config(config), run_dir, resume=resume, progress=False)
        except Exception as exc:  # rank 0 fails the trial (it ran into the same error or a GroupError)
            log.error("rank %d: the trial in %s failed: %s: %s", group.rank, run_dir, type(exc).__name__, exc)
            return  # as rank 0 does after a failed trial: this group trains no other
        if result.status == "failed" or group.broken:
            return


def shares(total: int | None, workers: int) -> list[int | None]:
    """``total`` trials split over ``workers`` processes as evenly as possible (Optuna's n_trials shared by its
    jobs); None (no limit) for each when there is no total."""
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def optimize(options: StudyOptions, progress: bool = True) -> optuna.Study:
    """Run ``options.trials`` trials of the study in this command (split over ``options.worker_count`` worker
    processes, one per GPU), stopping early once the study holds ``options.study_trials``. ``options`` is left as it
    is: what this run decides (threads, the MLflow parent run) goes into a copy."""
    route_optuna_logging()
    if options.trials_per_gpu < 1 or (options.trials_per_gpu > 1 and not options.gpu_ids):
        raise StudyError(f"--trials-per-gpu {options.trials_per_gpu}: give a count >= 1, together with --gpus")
    if options.gpus_per_trial > 1:
        gpus = len(options.gpu_ids or [])
        if gpus == 0 or gpus % options.gpus_per_trial or options.trials_per_gpu > 1:
            raise StudyError(f"--gpus-per-trial {options.gpus_per_trial}: give --gpus with a multiple of that many "
                             f"ids (got {gpus}), without --trials-per-gpu")
    spec = load_objective(options.objective)
    study = open_study(options, spec)
    base = trial_base(spec, options)
    tracker = study_tracker(options, base)
    if tracker is not None:  # the workers nest their trials under it
        options = dataclasses.replace(options, mlflow_parent=tracker.parent_run_id)
    # The corpus and its features are prepared once, before any worker starts.
    from ..data.dataset import prepare_data

    prepare_data(build_config(base))
    trials = study_trials(study)
    budget = options.trial_budget
    start = len(trials.results) - len(trials.running) - len(trials.waiting)  # finished before this command
    deadline = time.time() + options.timeout if options.timeout else None
    log.info("study %s in %s: %d trials so far; running %s with %d worker(s)%s", study.study_name,
             redact_url(options.storage_url), start, f"{budget} trials" if budget else "trials", options.worker_count,
             f", until the study holds {options.study_trials}" if options.study_trials else "")
    total = budget if budget is not None else max(0, (options.study_trials or 0) - start) or None
    bar = tqdm(total=total, desc=f"study {study.study_name}", disable=not progress, dynamic_ncols=True)
    progress_line = ProgressLine(bar)
    try:
        if options.worker_count == 1 and options.gpus_per_trial == 1:
            objective = Objective(spec, options, tracker, on_progress=progress_line.show)
            _run_trials(study, objective, budget, deadline, lambda: _update_bar(bar, study, start))
        else:
            _run_worker_processes(dataclasses.replace(options, trials=budget, deadline=deadline), study, bar,
                                  start, progress_line)
    finally:
        _update_bar(bar, study, start)
        progress_line.close()
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
                   **{f"trials_{state}": counts[state] for state in ("completed", "pruned", "failed")}}
        best = trials.best
        if best is not None:
            summary.update(best_value=best.value, best_trial=str(best.number),
                           best_diagonality=best.user_attrs.get("diagonality"), best_params=best.params)
        tracker.finish(summary, best.user_attrs.get("mlflow_run_id") if best else None,
                       best.user_attrs.get("run_dir") if best else None)
    except Exception as exc:  # the study itself is safe in its storage; tracking is best effort
        log.warning("MLflow: closing the study run failed: %s: %s", type(exc).__name__, exc)


# ----------------------------------------------------------------------------------------------- workers
def _update_bar(bar: tqdm, study: optuna.Study, start: int) -> StudyTrials:
    trials = study_trials(study)
    finished = len(trials.results) - len(trials.running) - len(trials.waiting)
    bar.n = max(0, finished - start) if bar.total is None else min(bar.total, max(0, finished - start))
    best = trials.best
    bar.set_postfix(best=f"{best.value:.4f}" if best else "-", refresh=False)
    bar.refresh()
    return trials


class ProgressLine:
    """A second line under the study's bar: the running trials' step, loss and diagonality, so that a person sees
    a trial move during its minutes (the trial bar only moves when a trial ends)."""

    def __init__(self, bar: tqdm):
        self.bar = bar
        self.line = tqdm(total=0, bar_format="{desc}", position=1, leave=False, disable=bar.disable)

    def show(self, progress: dict[str, Any]) -> None:
        self.show_all([progress])

    def show_all(self, running: list[dict[str, Any]]) -> None:
        self.line.set_description_str("; ".join(describe_progress(p) for p in running) or "no trial running")

    def close(self) -> None:
        self.line.close()


def describe_progress(progress: dict[str, Any]) -> str:
    """``trial 3: step 120/600, loss 1.234, diagonality 0.45``."""
    def number(key: str, digits: int) -> str:
        value = progress.get(key)
        return f"{value:.{digits}f}" if is_finite_number(value) else "-"

    return (f"trial {progress.get('trial', '?')}: step {progress.get('step', 0)}/{progress.get('max_steps', '?')}, "
            f"loss {number('loss', 3)}, diagonality {number('diagonality', 2)}")


def _run_worker_processes(options: StudyOptions, study: optuna.Study, bar: tqdm, start: int,
                          progress_line: ProgressLine) -> None:
    """One ``worker`` process per slot (``--trials-per-gpu`` per GPU, else ``--workers`` on CPU), sharing
    ``options.trials``. Each worker
    is in a session of its own, so that a terminal's Ctrl-C reaches this process only; it passes every signal on,
    so the first one stops the workers at their next step boundary and a second one ends them at once."""
    procs = []
    slots = options.worker_slots
    for index, (gpu, trials) in enumerate(zip(slots, shares(options.trials, len(slots)))):
        if trials == 0:
            continue
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        seed = None if options.seed is None else options.seed + index  # distinct streams per worker
        argv = dataclasses.replace(options, seed=seed, trials=trials).worker_argv()
        launcher = [sys.executable]
        if options.gpus_per_trial > 1:  # a group of ranks, one per GPU of the slot (rank 0 talks to Optuna)
            launcher, env = torchrun_command(options.gpus_per_trial), torchrun_env(env)
        procs.append(subprocess.Popen([*launcher, "-m", "smart_tuner", "worker", *argv], env=env,
                                      start_new_session=True))

    def forward(signum: int) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    try:
        with interrupts.forwarding(forward):
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                trials = _update_bar(bar, study, start)
                progress_line.show_all([t.user_attrs["progress"] for t in trials.running
                                        if isinstance(t.user_attrs.get("progress"), dict)])
    except KeyboardInterrupt:  # a second signal: the workers got it too and end at once
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    stopped = interrupts.requested()
    failed = [p.returncode for p in procs
              if p.returncode and not (stopped and p.returncode == interrupts.exit_code(stopped))]
    if failed:
        log.warning("%d worker process(es) exited with an error: %s", len(failed), failed)
