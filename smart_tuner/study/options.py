"""The study's options, in one place: :class:`StudyOptions` and the command lines derived from it.

Each field carries its command-line flag in its metadata (:func:`option`): the flag's help, choices, and which
commands take it. The flags of ``optimize``, of the hidden ``worker`` command, of ``best``, ``report`` and
``dashboard``, the ``--tracking-uri`` of ``train`` and ``mlflow-ui``, and ``--from-study`` of ``train`` and
``synthesize`` are added from there (:func:`add_arguments`), parsed back with :meth:`StudyOptions.from_args`, and
the command line of a worker process is written from the same fields
(:meth:`StudyOptions.worker_argv`), so that a new option is one new field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import study_artifact_dir
from ..seeds import MAX_SEED
from .objective_file import PRUNERS, SAMPLERS
from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, StudyError, storage_url

RUN = ("optimize", "worker")  # the commands that run trials
DEFAULT_TRIALS = 10
FLAG = "flag"  # the metadata key of a field's Flag
DEFAULT_STORAGE = "default sqlite:///studies/<study>.db"
DEFAULT_ARTIFACTS = "default: artifacts/ next to a SQLite study file, else studies/artifacts"


@dataclass(frozen=True)
class Flag:
    """How an option appears on the command line of the commands that take it."""

    commands: tuple[str, ...]
    name: str = ""  # empty: --<the field name with dashes>
    help: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    required: bool = False
    minimum: int | None = None  # the smallest value allowed
    maximum: int | None = None  # the largest value allowed
    old_names: tuple[str, ...] = ()  # flags this one was called before, still read (and left out of --help)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # per command: what differs there

    def on(self, command: str, field_name: str) -> Flag:
        """This flag as ``command`` takes it, with its name filled in."""
        flag = dataclasses.replace(self, **self.variants.get(command, {}))
        return dataclasses.replace(flag, name=flag.name or "--" + field_name.replace("_", "-"))


def option(default: Any, *commands: str, factory: Any = None, variants: dict[str, dict[str, Any]] | None = None,
           **flag: Any) -> Any:
    """A field of :class:`StudyOptions` with its flag; ``variants`` names further commands that take it, each with
    what differs there (a name, a help text, being required)."""
    metadata = {FLAG: Flag(commands=(*commands, *(variants or {})), variants=variants or {}, **flag)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StudyOptions:
    """What a study run is asked to do. Frozen: what a run decides for itself (its threads, its MLflow parent run,
    its workers' budget) goes into a copy made with :func:`dataclasses.replace`."""

    objective: Path = option(Path("objectives/demo.yaml"), *RUN, help="objective file (config + search space)")
    study: str | None = option(None, *RUN, help="study name (default: the objective file's name)", variants={
        "best": {"required": True, "help": None}, "report": {"required": True, "help": None},
        "train": {"name": "--from-study", "metavar": "NAME",
                  "help": "train the best config of this study (instead of --config)"},
        "synthesize": {"name": "--from-study", "metavar": "NAME",
                       "help": "speak with the best trial's checkpoint of this study (instead of --checkpoint)"},
        "dashboard": {"help": "study name: its default storage sqlite:///studies/<study>.db"}})
    storage: str | None = option(None, *RUN, help=f"Optuna storage URL ({DEFAULT_STORAGE})", variants={
        "best": {"help": DEFAULT_STORAGE}, "report": {"help": DEFAULT_STORAGE},
        "train": {"help": f"the study's storage URL ({DEFAULT_STORAGE})"},
        "synthesize": {"help": f"the study's storage URL ({DEFAULT_STORAGE})"},
        "dashboard": {"help": "Optuna storage URL (instead of --study)"}})
    sampler: str = option("tpe", *RUN, choices=SAMPLERS)
    sampler_startup_trials: int = option(
        5, *RUN, old_names=("--startup-trials",),  # until 2026-12-08; pruning.startup_trials is the pruner's
        help="random trials before TPE/GP/CMA-ES take over (Optuna's default of 10 is long here)")
    pruner: str | None = option(None, *RUN, choices=PRUNERS, help="default: the objective file's pruning.pruner")
    seed: int | None = option(None, *RUN, minimum=0, maximum=MAX_SEED, help="sampler seed")
    corpus: str | None = option(None, *RUN, help="LJSpeech-format corpus directory (default: the demo corpus)")
    sets: list[str] = option(None, *RUN, factory=list, name="--set", metavar="KEY=VALUE",
                             help="override the base config of every trial, e.g. train.max_steps=100")
    runs_dir: Path = option(Path("runs"), *RUN, help="trial run directories go to RUNS_DIR/<study>/")
    heartbeat_interval: int = option(HEARTBEAT_INTERVAL, *RUN,
                                     help="seconds between a running trial's heartbeats in the storage")
    grace_period: int = option(GRACE_PERIOD, *RUN,
                               help="a trial without a heartbeat for this long is failed and re-queued")
    tracking_uri: str | None = option(
        None, *RUN, "train", "mlflow-ui", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db)")
    artifact_dir: Path | None = option(
        None, *RUN, help=f"Optuna artifact store of the trials' preview images and audio ({DEFAULT_ARTIFACTS})",
        variants={"dashboard": {"help": f"the study's artifact store, where its trials uploaded their images "
                                        f"({DEFAULT_ARTIFACTS})"}})
    trials: int | None = option(
        None, *RUN, minimum=1, help=f"trials to run in this command, shared by its workers (Optuna's n_trials; "
                                    f"default {DEFAULT_TRIALS} unless --study-trials is given)")
    study_trials: int | None = option(
        None, *RUN, minimum=1, help="stop every worker, on any machine, once the study holds this many finished "
                                    "trials (running and waiting ones count as they will finish)")
    timeout: float | None = option(None, "optimize", help="stop starting trials after this many seconds")
    workers: int = option(1, "optimize", minimum=1, old_names=("--n-jobs",),  # until 2026-12-08 (Optuna's n_jobs
                          help="worker processes on this machine")           # is threads; these are processes)
    gpus: str | None = option(None, "optimize",
                              help="comma-separated GPU ids: --trials-per-gpu worker processes per GPU")
    trials_per_gpu: int = option(1, "optimize", minimum=1,
                                 help="with --gpus: worker processes (trials at once) per GPU")
    gpus_per_trial: int = option(1, "optimize", minimum=1,
                                 help="with --gpus: each trial trains on this many GPUs as one group of ranks")
    threads: int = option(0, *RUN, minimum=0, help="torch threads per worker (default: see train.num_threads)")
    # Set by `optimize` for its worker processes (the `worker` command is hidden).
    deadline: float | None = option(None, "worker")  # time.time() after which no trial starts
    mlflow_parent: str | None = option(None, "worker", help="the study's parent MLflow run")
    enqueue_reference: bool = option(True, "worker")  # a new study's first trial is the objective's base config

    def __post_init__(self) -> None:
        """The bounds of the flags, for callers that build options without the command line."""
        for f, flag in _flags(None):
            value = getattr(self, f.name)
            if flag.minimum is not None and value is not None and value < flag.minimum:
                raise StudyError(f"--{f.name.replace('_', '-')} {value}: must be >= {flag.minimum}")

    @property
    def trial_budget(self) -> int | None:
        """Trials this command runs (None: until --study-trials or --timeout stops it)."""
        if self.trials is None and self.study_trials is None and self.timeout is None:
            return DEFAULT_TRIALS
        return self.trials

    @property
    def study_name(self) -> str:
        return self.study or self.objective.stem

    @property
    def storage_url(self) -> str:
        return storage_url(self.study_name, self.storage)

    @property
    def gpu_ids(self) -> list[str] | None:
        return [g.strip() for g in self.gpus.split(",") if g.strip()] if self.gpus else None

    @property
    def worker_slots(self) -> list[str | None]:
        """The GPUs of each worker (``CUDA_VISIBLE_DEVICES``): ``trials_per_gpu`` workers per GPU id, or one per
        group of ``gpus_per_trial`` ids; else ``workers`` workers without one (None)."""
        if self.gpu_ids and self.gpus_per_trial > 1:
            k = self.gpus_per_trial
            return [",".join(self.gpu_ids[i:i + k]) for i in range(0, len(self.gpu_ids), k)]
        if self.gpu_ids:
            return [gpu for gpu in self.gpu_ids for _ in range(max(1, self.trials_per_gpu))]
        return [None] * max(1, self.workers)

    @property
    def worker_count(self) -> int:
        """The worker processes this command runs: ``--workers``, or the GPU slots with ``--gpus``."""
        return len(self.worker_slots)

    @property
    def artifact_store_dir(self) -> Path:
        """The study's Optuna artifact store: ``artifact_dir``, else the default next to its storage."""
        return self.artifact_dir or study_artifact_dir(self.storage_url)

    def config_sets(self) -> list[str]:
        """The ``--set`` items of every trial's base config: ``sets``, then ``corpus`` and ``threads``."""
        sets = list(self.sets)
        if self.corpus:
            sets.append(f"data.corpus={self.corpus}")
        if self.threads:
            sets.append(f"train.num_threads={self.threads}")
        return sets

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str) -> StudyOptions:
        """The options of a command line parsed with :func:`add_arguments`; a flag not given keeps its default."""
        values = {f.name: getattr(args, f.name) for f, _ in _flags(command)}
        return cls(**{name: value for name, value in values.items() if value is not None})

    def worker_argv(self) -> list[str]:
        """The arguments of a ``worker`` command that runs these options. The study and its storage are resolved
        here, so every worker opens the study this process opened."""
        resolved = dataclasses.replace(self, study=self.study_name, storage=self.storage_url)
        argv: list[str] = []
        for f, flag in _flags("worker"):
            value = getattr(resolved, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                argv.append(flag.name if value else "--no-" + flag.name[2:])
            elif isinstance(value, list):
                argv += [item for v in value for item in (flag.name, str(v))]
            else:
                argv += [flag.name, os.fspath(value) if isinstance(value, Path) else str(value)]
        return argv


def _flags(command: str | None) -> Iterator[tuple[dataclasses.Field, Flag]]:
    """The fields ``command`` (None: any) takes as flags, in field order, each with its flag as that command
    takes it."""
    for f in dataclasses.fields(StudyOptions):
        flag = f.metadata.get(FLAG)
        if flag is not None and (command is None or command in flag.commands):
            yield f, flag.on(command or flag.commands[0], f.name)


def at_least(minimum: int, kind: Any, maximum: int | None = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused below ``minimum`` (or above ``maximum``)."""
    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum of {maximum}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _value_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` -> ``list``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of ``command`` that set study options (read them back with :meth:`StudyOptions.from_args`)."""
    hints = typing.get_type_hints(StudyOptions)
    for f, flag in _flags(command):
        kind = _value_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag.name, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=flag.help)
        elif kind is list:  # repeated; None until given, so from_args keeps the field's default
            parser.add_argument(flag.name, dest=f.name, action="append", metavar=flag.metavar, help=flag.help)
        else:
            kind = kind if flag.minimum is None else at_least(flag.minimum, kind, flag.maximum)
            parser.add_argument(flag.name, dest=f.name, type=kind, default=f.default, choices=flag.choices,
                                metavar=flag.metavar, required=flag.required, help=flag.help)
            for old in flag.old_names:  # the same option under its old name; SUPPRESS keeps the default above
                parser.add_argument(old, dest=f.name, type=kind, default=argparse.SUPPRESS, choices=flag.choices,
                                    help=argparse.SUPPRESS)
