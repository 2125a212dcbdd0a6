"""The adapter protocol: a small pure decider behind the trainer's hooks.

An adapter reads :class:`~smart_tuner.hooks.StepStats` after each step and
:class:`~smart_tuner.hooks.EvalStats` after each evaluation and returns
:class:`~smart_tuner.hooks.Decision` objects with reasons. It never touches the model, the optimizer or the
trainer, so it can be tested without a model. Its state is plain data, saved in checkpoints through
``state_dict()``/``load_state_dict()`` like a torch scheduler's. ``priority`` breaks ties when two adapters ask
for the same control in one round (higher wins: an emergency beats a plateau).
"""

from __future__ import annotations

from typing import Any

from ..hooks import EvalStats, Hook
from ..numeric import is_finite_number


def worse_diagonality(*values: Any) -> float:
    """The lowest of ``values`` that are finite numbers, NaN when none is: the ``worse`` diagonality of the adapters
    and of the objective (free-running with ``data.free_running_sentences: 0`` is NaN and left out). Torch-free, so
    the study's objective shares it."""
    found = [v for v in values if is_finite_number(v)]
    return min(found) if found else float("nan")


# Each word of config.DIAGONALITIES (the adapters' metric, the objective's alignment) -> the EvalStats metrics whose
# worse it is.
DIAGONALITY_METRICS = {"teacher_forced": ("diagonality",), "free_running": ("free_running_diagonality",),
                       "worse": ("diagonality", "free_running_diagonality")}


def diagonality_of(stats: EvalStats, metric: str) -> float:
    """The diagonality an adapter reads (``metric``, one of ``config.DIAGONALITIES``): teacher-forced
    (``stats.diagonality``), free-running (``stats.free_running_diagonality``), or the ``worse`` of the two."""
    return worse_diagonality(*(getattr(stats, name) for name in DIAGONALITY_METRICS[metric]))


class Adapter(Hook):
    """Base class: subclasses list the attributes that make up their state in ``state_fields``."""

    name = "adapter"
    priority = 0
    state_fields: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - set(self.state_fields)
        if unknown:
            raise KeyError(f"{self.name} adapter: unexpected state keys {sorted(unknown)}")
        for field, value in state.items():
            setattr(self, field, value)
