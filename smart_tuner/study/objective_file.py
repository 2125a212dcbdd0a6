"""Objective files: the base training config, the search space over it, the reported value and the pruner;
and the one list of sampler and pruner names with the functions that make them.

An objective file (``objectives/*.yaml``) describes one objective::

    config:            # the base training config, exactly as `train --config` reads it (preset + overrides)
      preset: demo
      train: {max_steps: 600}
    search_space:      # dotted config keys -> a distribution
      train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      train.grad_clip: {type: float, low: 0.5, high: 5.0, step: 0.5}
      adapters.lr.patience: {type: int, low: 2, high: 12}
      train.batch_size: {type: categorical, choices: [8, 16, 24]}
      model.prenet_dims: {type: categorical, choices: [[64, 64], [96, 96]]}
    score:             # val_postnet + alignment_penalty * (1 - D) + stop_penalty * (1 - free_running_stop_rate)
      alignment_penalty: 1.0
      alignment: worse  # D: teacher_forced (diagonality) | free_running (free_running_diagonality) | worse (lower)
      stop_penalty: 0.5
    pruning:
      pruner: median       # median | hyperband | sha | none (the CLI --pruner overrides it)
      warmup_steps: 150    # no trial is pruned before this training step
      startup_trials: 3    # median only: completed trials before pruning starts

Dimensions: ``float`` and ``int`` need ``low < high`` and take ``log`` (needs ``low > 0``) or ``step`` (> 0, a
divisor of ``high - low``), not both; ``categorical`` needs a non-empty ``choices`` list. A dimension must fit its
config field: an integer field takes ``int`` or ``categorical``, a float field ``float``, ``int`` or
``categorical``, any other field (true/false, text, lists) ``categorical``. Each bound and each choice is checked by
building a config with it, so a value the trainer would refuse is refused here, naming the key. (Two dimensions
that are only wrong together, such as ``adapters.ga.low`` above a sampled ``adapters.ga.high``, can only fail when
a trial builds its config: choose ranges that cannot cross.) An empty search space is allowed: it runs the base
config. Omitted sections take defaults: ``alignment_penalty: 1.0``, ``alignment: worse``, ``stop_penalty: 0.5``
(``teacher_forced`` and 0 give the value from before free-running alignment entered it), ``pruner: median``,
``warmup_steps: 0`` and ``startup_trials: 5`` (Optuna's defaults).

Optuna parameters are named by their dotted key (``train.lr``). Optuna's categorical choices must be None, bool,
int, float or str, so a list choice (``[64, 64]``) goes through Optuna as its JSON text (``"[64, 64]"``) and is
decoded back by :func:`suggest` and :func:`params_to_overrides`; stored trials therefore show list choices as
JSON strings. Report steps are training steps.

Names until 2026-12-08, still read: the section ``score:`` was ``objective:`` (the word now names only the file and
the function Optuna calls), and ``alignment_penalty`` was ``ga_penalty`` (it multiplies 1 - D; it is not the
guided-attention loss).
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..adapters.base import DIAGONALITY_METRICS, worse_diagonality
from ..config import (
    Config,
    ConfigError,
    build_config,
    config_keys,
    current_key,
    merge,
    nest,
    set_dotted,
    with_current_keys,
)
from ..numeric import is_finite_number, is_int
from ..yaml_reader import read_yaml

OBJECTIVE_SECTIONS = ("config", "search_space", "score", "pruning")
OLD_SECTIONS = {"objective": "score"}  # until 2026-12-08
KINDS = ("float", "int", "categorical")
DIMENSION_FIELDS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
SAMPLERS = ("tpe", "random", "gp", "cmaes")  # the names --sampler takes; see make_sampler
PRUNERS = ("median", "hyperband", "sha", "none")  # the names pruning.pruner and --pruner take; see make_pruner
SCORE_FIELDS = ("alignment_penalty", "alignment", "stop_penalty")
OLD_SCORE_FIELDS = {"ga_penalty": "alignment_penalty"}  # until 2026-12-08
ALIGNMENTS = DIAGONALITY_METRICS  # score.alignment: the adapters' words for the same diagonalities


@dataclass(frozen=True)
class Score:
    """The value a trial reports at each evaluation (lower is better)::

        val_<output loss> + alignment_penalty * (1 - D) + stop_penalty * (1 - free_running_stop_rate)

    where D is the validation diagonality that ``alignment`` names: teacher-forced, free-running (the first
    ``data.free_running_sentences`` validation sentences decoded from their text alone, as synthesis does), or the
    worse of the two. A model that aligns teacher-forced but cannot speak free-running (no diagonal attention, no
    stop) then scores as badly as it synthesizes."""

    alignment_penalty: float = 1.0
    alignment: str = "worse"
    stop_penalty: float = 0.5

    def diagonality(self, metrics: dict[str, float]) -> float:
        return worse_diagonality(*(metrics.get(k) for k in ALIGNMENTS[self.alignment]))

    def value(self, output_loss: float, metrics: dict[str, float]) -> float:
        value = output_loss + self.alignment_penalty * (1.0 - self.diagonality(metrics))
        if self.stop_penalty and is_finite_number(metrics.get("free_running_stop_rate")):  # none when not measured
            value += self.stop_penalty * (1.0 - metrics["free_running_stop_rate"])
        return value

    def describe(self, output_loss: str) -> str:
        """The formula as optuna-dashboard names the study's metric."""
        d = {"teacher_forced": "diagonality", "free_running": "free_running_diagonality",
             "worse": "min(diagonality, free_running_diagonality)"}[self.alignment]
        text = f"val_{output_loss} + {self.alignment_penalty:g} * (1 - {d})"
        return text + (f" + {self.stop_penalty:g} * (1 - free_running_stop_rate)" if self.stop_penalty else "")
PRUNING_FIELDS = ("pruner", "warmup_steps", "startup_trials")


class SearchSpaceError(ConfigError):
    """An objective file is wrong; the message starts with the file and names the key."""


@dataclass
class Dimension:
    key: str  # dotted config key, also the Optuna parameter name
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None  # as written in the file (lists stay lists)


@dataclass
class PruningSpec:
    pruner: str = "median"
    warmup_steps: int = 0
    startup_trials: int = 5


@dataclass
class ObjectiveSpec:
    path: str
    config: dict[str, Any]  # the base overrides (the file's `config:` part)
    space: list[Dimension] = field(default_factory=list)
    score: Score = field(default_factory=Score)
    pruning: PruningSpec = field(default_factory=PruningSpec)


# --------------------------------------------------------------------------------------------- helpers
def _field_hint(key: str) -> Any:
    """The type of a dotted config key with ``X | None`` reduced to ``X`` (keys are checked before)."""
    hint: Any = Config
    for part in key.split("."):
        hint = typing.get_type_hints(hint)[part]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _is_list_field(key: str) -> bool:
    return typing.get_origin(_field_hint(key)) is list


def _config_value(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _encode(choice: Any) -> Any:
    """A choice as Optuna holds it: lists become their JSON text."""
    return json.dumps(choice) if isinstance(choice, list) else choice


def _decode(key: str, value: Any) -> Any:
    """Inverse of :func:`_encode`, by the type of the config field (a list field never takes a string)."""
    if isinstance(value, str) and _is_list_field(key):
        return json.loads(value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that tells ``True`` from ``1``."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _on_grid(value: float, low: float, step: float | None) -> bool:
    if step is None:
        return True
    k = (value - low) / step
    return abs(k - round(k)) < 1e-9


# --------------------------------------------------------------------------------------------- loading
class _Reader:
    """Checks one file; every error it raises starts with the file path."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def fail(self, where: str, message: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")

    def unknown_fields(self, where: str, spec: dict[str, Any], known: tuple[str, ...]) -> None:
        for name in spec:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(where, f"unknown field {name!r}{hint}; known fields: {', '.join(known)}")

    def mapping(self, where: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {value!r} ({type(value).__name__})")
        return value

    # -- sections
    def base_config(self, data: Any) -> dict[str, Any]:
        base = self.mapping("config", data)
        try:
            build_config(base)
            return with_current_keys(base)  # so that a dimension's key (its name now) meets the same key
        except ConfigError as exc:
            raise self.fail("config", str(exc)) from None

    def current_names(self, where: str, spec: dict[str, Any], old_names: dict[str, str]) -> dict[str, Any]:
        """``spec`` with old names of its keys replaced by their names now; both names of one key is an error."""
        current = {}
        for name, value in spec.items():
            new = old_names.get(name, name)
            if new in current or (new != name and new in spec):
                raise self.fail(where, f"{name!r} is the old name of {new!r}: give only {new!r}")
            current[new] = value
        return current

    def score(self, data: Any) -> Score:
        spec = self.current_names("score", self.mapping("score", data), OLD_SCORE_FIELDS)
        self.unknown_fields("score", spec, SCORE_FIELDS)
        default = Score()
        penalties = {}
        for key in ("alignment_penalty", "stop_penalty"):
            value = spec.get(key, getattr(default, key))
            if not is_finite_number(value) or value < 0:
                raise self.fail(f"score.{key}", f"expected a number >= 0, got {value!r}")
            penalties[key] = float(value)
        alignment = spec.get("alignment", default.alignment)
        if alignment not in ALIGNMENTS:
            raise self.fail("score.alignment", f"{alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        return Score(alignment=alignment, **penalties)

    def pruning(self, data: Any) -> PruningSpec:
        spec = self.mapping("pruning", data)
        self.unknown_fields("pruning", spec, PRUNING_FIELDS)
        default = PruningSpec()
        pruner = spec.get("pruner", default.pruner)
        if pruner not in PRUNERS:
            raise self.fail("pruning.pruner", f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
        counts = {}
        for name in ("warmup_steps", "startup_trials"):
            value = spec.get(name, getattr(default, name))
            if not is_int(value) or value < 0:
                raise self.fail(f"pruning.{name}", f"expected an integer >= 0, got {value!r}")
            counts[name] = value
        return PruningSpec(pruner=pruner, **counts)

    def space(self, data: Any, base: dict[str, Any]) -> list[Dimension]:
        space = self.mapping("search_space", data)
        known = config_keys()
        dims = []
        for key, spec in space.items():
            where, key = f"search_space.{key}", current_key(str(key))  # an old key is searched as its name now
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=3)
                hint = f"; close matches: {', '.join(close)}" if close else "; see docs/config.md"
                raise self.fail(where, f"unknown config key{hint}")
            dim = self.dimension(where, key, spec)
            self.fits_field(where, dim)
            self.builds(where, dim, base)
            dims.append(dim)
        return dims

    # -- one dimension
    def dimension(self, where: str, key: str, spec: Any) -> Dimension:
        if not isinstance(spec, dict):
            raise self.fail(where, f"expected a mapping like {{type: float, low: 0.1, high: 1.0}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in KINDS:
            raise self.fail(where, f"unknown type {kind!r}; choose one of {', '.join(KINDS)}")
        self.unknown_fields(where, spec, DIMENSION_FIELDS[kind])
        if kind == "categorical":
            return Dimension(key, kind, choices=self.choices(where, spec.get("choices")))
        return self.numeric(where, key, kind, spec)

    def numeric(self, where: str, key: str, kind: str, spec: dict[str, Any]) -> Dimension:
        is_ok = is_int if kind == "int" else is_finite_number
        what = "an integer" if kind == "int" else "a number"
        for name in ("low", "high"):
            if name not in spec:
                raise self.fail(where, f"type {kind} needs low and high; {name} is missing")
            if not is_ok(spec[name]):
                raise self.fail(where, f"{name} must be {what}, got {spec[name]!r}")
        low, high = spec["low"], spec["high"]
        if low >= high:
            raise self.fail(where, f"low ({low}) must be < high ({high})")
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise self.fail(where, f"log must be true or false, got {log!r}")
        if log and low <= 0:
            raise self.fail(where, f"log: true needs low > 0, got low ({low})")
        if step is not None:
            if log:
                raise self.fail(where, "step and log: true cannot be combined (Optuna allows one of them)")
            if not is_ok(step) or step <= 0:
                raise self.fail(where, f"step must be {what} > 0, got {step!r}")
            if not _on_grid(high, low, step):
                raise self.fail(where, f"high - low ({high} - {low}) must be a multiple of step ({step})")
        if kind == "float":
            low, high = float(low), float(high)
            step = float(step) if step is not None else None
        return Dimension(key, kind, low=low, high=high, log=log, step=step)

    def choices(self, where: str, choices: Any) -> list[Any]:
        if choices is None:
            raise self.fail(where, "type categorical needs a choices list, e.g. choices: [8, 16, 32]")
        if not isinstance(choices, list) or not choices:
            raise self.fail(where, f"choices must be a non-empty list, got {choices!r}")
        seen: list[Any] = []
        for choice in choices:
            if isinstance(choice, dict):
                raise self.fail(where, f"choice {choice!r}: a mapping is not a config value")
            if any(_same(choice, other) for other in seen):
                raise self.fail(where, f"choice {choice!r} is listed twice")
            seen.append(choice)
        return list(choices)

    def fits_field(self, where: str, dim: Dimension) -> None:
        """A numeric dimension must fit the field's type; categorical choices are checked by building."""
        if dim.kind == "categorical":
            return
        hint = _field_hint(dim.key)
        if hint is float:
            return
        if hint is int:
            if dim.kind == "int":
                return
            raise self.fail(where, f"type {dim.kind} does not fit an integer field: use type int or categorical")
        kind = {bool: "a true/false", str: "a text"}.get(hint, "a list")
        raise self.fail(where, f"type {dim.kind} does not fit {kind} field: use type categorical with choices")

    def builds(self, where: str, dim: Dimension, base: dict[str, Any]) -> None:
        """Each bound and each choice, put into the base config, must make a config the trainer accepts."""
        if dim.kind == "categorical":
            values = [(f"choice {choice!r}", choice) for choice in dim.choices or []]
        else:
            values = [(f"low ({dim.low})", dim.low), (f"high ({dim.high})", dim.high)]
        for label, value in values:
            try:
                build_config(merge(base, nest(dim.key, value)))
            except ConfigError as exc:
                raise self.fail(where, f"{label} does not make a valid config: {exc}") from None


def load_objective(path: str | Path) -> ObjectiveSpec:
    """Read and check an objective file; raises :class:`SearchSpaceError` naming the file and the key."""
    reader = _Reader(path)
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise SearchSpaceError(str(exc)) from None
    if data is None:
        raise reader.fail("", f"empty objective file; expected the sections {', '.join(OBJECTIVE_SECTIONS)}")
    if not isinstance(data, dict):
        raise reader.fail("", f"expected a mapping at the top level, got {type(data).__name__}")
    data = reader.current_names("", data, OLD_SECTIONS)
    for section in data:
        if section not in OBJECTIVE_SECTIONS:
            close = difflib.get_close_matches(str(section), OBJECTIVE_SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise reader.fail("", f"unknown top-level section {section!r}{hint}; known sections: "
                              f"{', '.join(OBJECTIVE_SECTIONS)} (training keys go under config:)")
    base = reader.base_config(data.get("config"))
    score = reader.score(data.get("score"))
    if score.alignment == "free_running" and build_config(base).data.free_running_sentences == 0:
        raise reader.fail("score.alignment", "free_running reads the free-running diagonality, which "
                          "config data.free_running_sentences: 0 does not measure: decode some validation sentences "
                          "(data.free_running_sentences >= 1) or choose teacher_forced or worse")
    return ObjectiveSpec(
        path=str(path),
        config=base,
        space=reader.space(data.get("search_space"), base),
        score=score,
        pruning=reader.pruning(data.get("pruning")),
    )


# ---------------------------------------------------------------------------------------- Optuna glue
def suggest(trial: optuna.Trial, space: list[Dimension]) -> dict[str, Any]:
    """Ask ``trial`` for every dimension; nested config overrides ready for :func:`~smart_tuner.config.merge`."""
    overrides: dict[str, Any] = {}
    for dim in space:
        if dim.kind == "float":
            value: Any = trial.suggest_float(dim.key, dim.low, dim.high, log=dim.log, step=dim.step)
        elif dim.kind == "int":
            value = trial.suggest_int(dim.key, dim.low, dim.high, log=dim.log, step=dim.step or 1)
        else:
            encoded = [_encode(choice) for choice in dim.choices or []]
            value = _decode(dim.key, trial.suggest_categorical(dim.key, encoded))
        set_dotted(overrides, dim.key, value)
    return overrides


_LEFT_OUT = object()


def _reference_param(dim: Dimension, value: Any) -> Any:
    """The Optuna parameter that gives ``value``, or ``_LEFT_OUT`` when the dimension cannot produce it."""
    if dim.kind == "categorical":
        if isinstance(value, list):
            value = list(value)
        for choice in dim.choices or []:
            if _same(choice, value):
                return _encode(choice)
        return _LEFT_OUT
    if not (dim.low <= value <= dim.high) or not _on_grid(value, dim.low, dim.step):
        return _LEFT_OUT
    if dim.kind == "int":  # an int dimension may sit on a float field: its default must be a whole number
        return int(value) if float(value).is_integer() else _LEFT_OUT
    return float(value)


def reference_params(spec: ObjectiveSpec) -> tuple[dict[str, Any], list[str]]:
    """Parameters (Optuna naming and encoding) that reproduce the base config, for ``study.enqueue_trial``.

    Returns ``(params, left_out)``: a base value outside its dimension's range, grid or choices is left out
    (Optuna samples it instead) and its key is listed in ``left_out`` so the caller can say so.
    """
    config = build_config(spec.config)
    params: dict[str, Any] = {}
    left_out: list[str] = []
    for dim in spec.space:
        param = _reference_param(dim, _config_value(config, dim.key))
        if param is _LEFT_OUT:
            left_out.append(dim.key)
        else:
            params[dim.key] = param
    return params, left_out


def params_to_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A stored trial's ``params`` back to nested config overrides (list choices decoded from JSON)."""
    known = set(config_keys())
    overrides: dict[str, Any] = {}
    for key, value in params.items():
        key = current_key(key)  # a trial of a study searched before a key was renamed
        if key not in known:
            raise SearchSpaceError(f"trial parameter {key!r} is not a config key")
        set_dotted(overrides, key, _decode(key, value))
    return overrides


def make_pruner(spec: PruningSpec, name_override: str | None = None,
                max_steps: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner of an objective (``name_override``: the CLI's ``--pruner``); steps are training steps.

    No pruner prunes a trial before ``spec.warmup_steps``: the median pruner through ``n_warmup_steps``, the
    successive-halving ones through ``min_resource``: their first rung ends at ``min_resource`` and later rungs
    at ``min_resource * reduction_factor**k``, so no promotion test (the only place they prune) happens earlier.
    They are not wrapped, because Optuna recognizes ``HyperbandPruner`` by its class to split trials into
    brackets. ``max_steps`` (a trial's training budget) sets Hyperband's ``max_resource``; without it Hyperband
    waits for the first completed trial to learn it. ``startup_trials`` applies to the median pruner only.
    """
    name = name_override if name_override is not None else spec.pruner
    if name not in PRUNERS:
        raise SearchSpaceError(f"--pruner: unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    min_resource = max(1, spec.warmup_steps)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource,
                                              max_resource=max_steps if max_steps else "auto")
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource)
    return optuna.pruners.NopPruner()


def make_sampler(name: str, seed: int | None, startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """The sampler named by ``--sampler``. ``startup_trials`` random trials come before the model-based samplers
    take over: Optuna's default of 10 would make a short study (the demo's 6 trials) a random search."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)  # multivariate in Optuna 5
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials)
    raise SearchSpaceError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


__all__ = [
    "PRUNERS", "SAMPLERS", "Dimension", "ObjectiveSpec", "PruningSpec", "SearchSpaceError", "load_objective",
    "make_pruner", "make_sampler", "params_to_overrides", "reference_params", "suggest",
]
