"""The adapter protocol: a small pure decider behind the trainer's hooks.

An adapter reads :class:`~smart_tuner.hooks.StepStats` after each step and
:class:`~smart_tuner.hooks.EvalStats` after each evaluation and returns
:class:`~smart_tuner.hooks.Decision` objects with reasons. It never touches the model, the optimizer or the
trainer, so it can be tested without a model. Its state is plain data, saved in checkpoints through
``state_dict()``/``load_state_dict()`` like a torch scheduler's. ``priority`` breaks ties when two adapters ask
for the same control in one round (higher wins: an emergency beats a plateau).
"""

from __future__ import annotations

import math
from typing import Any

from ..hooks import EvalStats, Hook


def diagonality_of(stats: EvalStats, metric: str) -> float:
    """The diagonality an adapter reads: teacher-forced (``diagonality``), free-running (``infer_diagonality``), or
    the ``worse`` of the two (one that is not a number, for example free-running with ``data.val_infer: 0``, is
    left out)."""
    if metric != "worse":
        return getattr(stats, metric)
    found = [v for v in (stats.diagonality, stats.infer_diagonality) if math.isfinite(v)]
    return min(found) if found else float("nan")


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
