"""A study in its storage, without torch: opening storages, and what the study's trials add up to.

Nothing here trains, so ``best`` (study/best.py), ``report``, ``dashboard`` and the workers' budget check share it
without importing torch. :class:`StudyTrials` is the one place that sorts a study's trials by outcome: the
completed, pruned, failed, running and waiting trials; a failed trial that was re-queued (its worker died, or it was
interrupted) stays a failed result, but its retry takes its place in the budget. :class:`BudgetedStudy` refuses to
create a trial beyond ``--study-trials`` under a lock shared by every worker (:func:`study_lock`), so a study never
holds a trial it did not run. The best trial (:attr:`StudyTrials.best`) is the completed one with the lowest finite
value. Storages are RDB storages with heartbeats (SQLite by default; PostgreSQL or any SQLAlchemy URL for several
machines), so that a killed worker's trial is failed and re-queued by ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..numeric import is_finite_number
from ..paths import STUDIES_DIR, make_sqlite_dir, sqlite_file
from ..redact import redact_text, redact_url

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial without a heartbeat for this long is failed (and re-queued)
MAX_RETRIES = 2  # re-queues of one killed trial

log = logging.getLogger(__name__)


class StudyError(UserError, ValueError):
    """A study cannot be run or read as asked; the message says what to do."""


@contextlib.contextmanager
def allow_experimental() -> Iterator[None]:
    """Optuna marks heartbeats, the retry callback and artifact uploads as experimental; several workers rely on
    them, so their ExperimentalWarning is silenced where they are used, never for the whole process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class TrialFailed(RuntimeError):
    """The trial's training run ended as failed (for example its rollback budget was spent)."""


class _NoTracebackForEndedRuns(logging.Filter):
    """Optuna logs a failed trial with its exception's traceback. A run that ended as failed (the reason is the
    message) or was interrupted by Ctrl-C is no program error: one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (TrialFailed, KeyboardInterrupt)):
            record.exc_info, record.exc_text = None, None
        return True


def route_optuna_logging() -> None:
    """Optuna's own stderr handler would garble progress bars; its records go through ours instead."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoTracebackForEndedRuns) for f in trials_log.filters):
        trials_log.addFilter(_NoTracebackForEndedRuns())


# ----------------------------------------------------------------------------------------------- storage
def storage_url(name: str, url: str | None) -> str:
    """``url`` as given, else the default storage of study ``name``. Creates nothing: :func:`open_storage` makes
    the directory of a SQLite file when it creates the database."""
    return url or f"sqlite:///{STUDIES_DIR}/{name}.db"


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so that a killed worker's trial is failed and re-queued. Its tables are
    created when missing, and with them the directory of a SQLite database file."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes wait for the lock
    for attempt in range(5):
        try:
            make_sqlite_dir(url)
            with allow_experimental():
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
                             f"{redact_text(text.splitlines()[0] if text else '', url)[:200]})") from None
    raise AssertionError("unreachable")


def unreadable(url: str, exc: BaseException) -> StudyError:
    """The one-line error for a storage whose studies cannot be read (the driver's first line, passwords out)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return StudyError(f"storage {redact_url(url)}: cannot read studies from it ({type(exc).__name__}: "
                      f"{redact_text(first, url)[:200]})")


def existing_sqlite_file(url: str, study: str | None = None) -> Path | None:
    """The database file of a ``sqlite:`` URL, which must exist: opening a missing file would create an empty
    database. None for other URLs; an unparsable URL or an in-memory database (nothing to read) is an error."""
    if not url.startswith("sqlite"):
        return None
    try:
        database = sqlite_file(url)
    except Exception as exc:
        raise StudyError(f"storage {redact_url(url)}: not a valid URL ({redact_text(str(exc), url)})") from None
    if database is None:
        raise StudyError(f"storage {redact_url(url)}: an in-memory database holds no study; name a database file, "
                         "e.g. sqlite:///studies/NAME.db")
    if not database.is_file():
        where = "" if database.is_absolute() else f" (under {Path.cwd()})"
        run = "optimize" + (f" --study {study}" if study else "")
        raise StudyError(f"no study storage at {database}{where}; run `python -m smart_tuner {run}` first, or name "
                         "the study's file with --storage")
    return database


def open_existing_storage(url: str, study: str | None = None, read_only: bool = True) -> optuna.storages.RDBStorage:
    """The RDB storage of an existing study, never creating tables (in a file that is no Optuna study, say an MLflow
    database) nor a SQLite file. ``read_only`` opens a SQLite file read-only, so that a reader (``best``,
    ``report``) cannot change it; the dashboard opens it writable (optuna-dashboard saves notes)."""
    database = existing_sqlite_file(url, study)
    engine_url = url
    if database is not None and read_only:
        engine_url = f"sqlite:///file:{quote(str(database.resolve()))}?mode=ro&uri=true"
    storage = None
    try:
        engine = sqlalchemy.create_engine(engine_url)
        try:
            is_study = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
        if is_study:
            storage = optuna.storages.RDBStorage(engine_url, skip_compatibility_check=True, skip_table_creation=True)
            storage.get_all_studies()
    except Exception as exc:
        raise unreadable(url, exc) from None
    if storage is None:
        raise StudyError(f"storage {redact_url(url)}: not an Optuna study storage (it has no studies table); name "
                         "the study's storage with --storage")
    return storage


def _sqlite_file_or_none(url: str) -> Path | None:
    try:
        return sqlite_file(url)
    except Exception:
        return None


def open_study_readonly(name: str, storage: str | None = None) -> optuna.Study:
    """An existing study, for reading its results (``best``, ``report``, ``train --from-study``), through a
    read-only storage: a SQLite file that is not there is an error, never a new empty database."""
    route_optuna_logging()
    url = storage_url(name, storage)
    try:
        return optuna.load_study(study_name=name, storage=open_existing_storage(url, name))
    except KeyError:
        raise StudyError(f"no study {name!r} in {redact_url(url)}") from None


class StudyFull(Exception):
    """The study holds ``--study-trials`` trials: no worker starts another."""


@contextlib.contextmanager
def study_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Held by one process at a time, on every machine sharing the storage: the budget check and the creation (or
    taking) of a trial happen under it, so that concurrent workers never overshoot ``--study-trials`` nor take the
    same waiting trial. SQLite: ``flock`` on the
    database file (independent of SQLite's own locks; every process of a SQLite study is on one machine);
    PostgreSQL: a session advisory lock; another database: no lock (the budget may be overshot by a worker)."""
    database = _sqlite_file_or_none(str(storage.engine.url))
    if database is not None:
        with open(database, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if storage.engine.dialect.name != "postgresql":
        yield
        return
    key = zlib.crc32(f"smart_tuner study {study_name}".encode())
    with storage.engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


class BudgetedStudy(optuna.Study):
    """A study whose ``ask`` (the one ``optimize`` calls for each trial) refuses to create a trial beyond
    ``study_trials`` counted trials: it raises :class:`StudyFull` instead, before any trial exists, so a study never
    holds an over-budget trial. A waiting trial (the enqueued reference, a re-queued one) is already counted and is
    always run."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, study_trials: int | None):
        super().__init__(study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner)
        self.rdb, self.study_trials = storage, study_trials

    def ask(self, fixed_distributions: Any = None) -> optuna.Trial:
        # Always under the study's lock: Optuna takes a waiting trial with a read and then a write, which two
        # processes on one SQLite file can both win (seen: two workers started together both ran the enqueued
        # reference trial 0).
        with study_lock(self.rdb, self.study_name):
            if self.study_trials is not None:
                trials = study_trials(self)
                if not trials.waiting and trials.counted >= self.study_trials:
                    raise StudyFull(f"the study holds {trials.counted} of --study-trials {self.study_trials} trials")
            return super().ask(fixed_distributions)


# ----------------------------------------------------------------------------------------------- results
def retried_number(trial: FrozenTrial) -> int | None:
    """The number of the failed trial that ``trial`` runs again (re-queued after its worker died), else None."""
    with allow_experimental():  # called for every trial of every count
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


# How a trial ended, in the words of this project (run statuses, summaries, MLflow tags and the report say these):
# Optuna's state names (COMPLETE, FAIL) read differently, and "interrupted" is a failed trial that was re-queued.
OUTCOMES = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
            TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def outcome_of(trial: FrozenTrial) -> str:
    """The trial's state in :data:`OUTCOMES` words."""
    return OUTCOMES[trial.state]


@dataclass
class StudyTrials:
    """A study's trials by outcome. Every result is in exactly one of ``completed``, ``pruned``, ``failed``,
    ``running`` and ``waiting``; lists are in trial-number order."""

    results: list[FrozenTrial]  # every trial of the study
    completed: list[FrozenTrial] = field(init=False)
    pruned: list[FrozenTrial] = field(init=False)
    failed: list[FrozenTrial] = field(init=False)
    running: list[FrozenTrial] = field(init=False)
    waiting: list[FrozenTrial] = field(init=False)
    retried: list[FrozenTrial] = field(init=False)  # failed results whose re-queued copy counts in their place

    def __post_init__(self) -> None:
        def having(state: TrialState) -> list[FrozenTrial]:
            return [t for t in self.results if t.state == state]

        self.completed = having(TrialState.COMPLETE)
        self.pruned = having(TrialState.PRUNED)
        self.failed = having(TrialState.FAIL)
        self.running = having(TrialState.RUNNING)
        self.waiting = having(TrialState.WAITING)
        rerun = {retried_number(t) for t in self.results} - {None}
        self.retried = [t for t in self.failed if t.number in rerun]

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> StudyTrials:
        ordered = sorted(trials, key=lambda t: t.number)
        return cls(results=ordered)

    @property
    def counted(self) -> int:
        """Trials that use the study's trial budget: the results, less failed ones whose retry counts instead."""
        return len(self.results) - len(self.retried)

    @property
    def best(self) -> FrozenTrial | None:
        """The completed trial with the lowest finite value (the study minimizes)."""
        scored = [t for t in self.completed if is_finite_number(t.value)]
        return min(scored, key=lambda t: t.value) if scored else None

    def counts(self) -> dict[str, int]:
        """Results per outcome (:data:`OUTCOMES` words)."""
        return {"completed": len(self.completed), "pruned": len(self.pruned), "failed": len(self.failed),
                "running": len(self.running), "waiting": len(self.waiting)}


def study_trials(study: optuna.Study) -> StudyTrials:
    return StudyTrials.of(study.get_trials(deepcopy=False))


def summary(study: optuna.Study) -> str:
    """What ``optimize`` prints at its end: the counts, the best trial with its params, why trials failed."""
    trials = study_trials(study)
    lines = [f"study {study.study_name}: {len(trials.results)} trials: "
             + ", ".join(f"{n} {state}" for state, n in trials.counts().items() if n)]
    best = trials.best
    if best is None:
        lines.append("no completed trial yet")
    else:
        lines.append(f"best trial {best.number}: value {best.value:.4f}, diagonality "
                     f"{best.user_attrs.get('diagonality', float('nan')):.3f}, "
                     f"run dir {best.user_attrs.get('run_dir')}")
        lines += [f"  {key} = {value}" for key, value in sorted(best.params.items())]
    for t in trials.failed:
        if t.user_attrs.get("failure") or t.user_attrs.get("traceback"):
            reason = t.user_attrs.get("failure") or t.user_attrs["traceback"].strip().splitlines()[-1]
            lines.append(f"trial {t.number} failed: {reason}")
    return "\n".join(lines)
