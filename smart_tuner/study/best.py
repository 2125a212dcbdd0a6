"""``best``: what a study's best trial gives to the commands after it. Its full training config, stored with the
trial or rebuilt from its params (:func:`best_config`), written for ``best`` (:func:`write_best_config`), taken by
``train --from-study`` (:func:`production_config`); and its checkpoint, for ``synthesize --from-study``
(:func:`best_checkpoint`). The best trial itself is :attr:`StudyTrials.best
<smart_tuner.study.storage.StudyTrials.best>`, the completed one with the lowest finite value. No torch."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from ..config import Config, build_config, merge, parse_set_overrides, to_yaml
from ..files import check_output_file, write_atomic
from ..run_logs import BEST, CHECKPOINTS, LAST
from .objective_file import load_objective, params_to_overrides
from .storage import StudyError, open_study_readonly, study_trials

log = logging.getLogger(__name__)


def best_config(study: optuna.Study, objective: Path | None = None) -> tuple[Config, FrozenTrial]:
    """The full training config of the best trial: stored with the trial, or rebuilt from its params."""
    best = study_trials(study).best
    if best is None:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet")
    if "config" in best.user_attrs:
        return build_config(best.user_attrs["config"]), best
    path = objective or Path(study.user_attrs.get("objective", ""))
    spec = load_objective(path)
    return build_config(merge(spec.config, params_to_overrides(best.params))), best


def write_best_config(name: str, storage: str | None, out: str | Path) -> int:
    """``best``: the full training config of the study's best trial, written to ``out`` with a header that says how
    to train it."""
    check_output_file(out, replace=True)  # regenerated: an earlier best.yaml is replaced, a device never
    study = open_study_readonly(name, storage)
    config, trial = best_config(study)
    config.tracking.source_study, config.tracking.source_trial = study.study_name, trial.number
    header = (f"# best trial {trial.number} of study {study.study_name}: value {trial.value:.6g}, diagonality "
              f"{trial.user_attrs.get('diagonality', float('nan')):.3f}\n"
              f"# train it: python -m smart_tuner train --config {out} --max-steps 100000\n")
    path = write_atomic(out, header + to_yaml(config))
    print(f"wrote the config of trial {trial.number} (value {trial.value:.4f}) to {path}")
    return 0


def production_config(name: str, storage: str | None, sets: list[str]) -> Config:
    """``train --from-study``: the best trial's config with its origin in ``tracking`` and ``sets`` over it."""
    study = open_study_readonly(name, storage)
    best, trial = best_config(study)
    origin = {"tracking": {"source_study": study.study_name, "source_trial": trial.number}}
    config = build_config(merge(merge(best.to_dict(), origin), parse_set_overrides(sets)))
    log.info("production run from study %s, trial %d (value %.4f)", study.study_name, trial.number, trial.value)
    return config


def best_checkpoint(name: str, storage: str | None) -> Path:
    """The checkpoint of study ``name``'s best trial (``synthesize --from-study``): ``best.pt`` of its run directory,
    else ``last.pt``."""
    study = open_study_readonly(name, storage)
    best = study_trials(study).best
    if best is None:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet")
    run_dir = best.user_attrs.get("run_dir")
    if not run_dir:
        raise StudyError(f"study {study.study_name!r}: trial {best.number} recorded no run directory")
    for name in (BEST, LAST):
        path = Path(run_dir) / CHECKPOINTS / name
        if path.is_file():
            return path
    raise StudyError(f"study {study.study_name!r}: trial {best.number} left no checkpoint under {run_dir}/checkpoints")
