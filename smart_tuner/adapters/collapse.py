"""Attention-collapse adapter: a run whose attention had aligned and then fell apart goes back to its last healthy
state.

    once diagonality >= high at an evaluation, the run counts as aligned;
    an aligned run whose diagonality falls below low: rollback (an alarm), and it counts as not aligned until it
    reaches high again.
The rollback returns to the trainer's last healthy state (taken at the last evaluation without alarms, i.e. before
the fall when it happened within one evaluation interval); the learning-rate adapter cuts the rate when it sees
the rollback and climbs back by its recovery rule. The trainer's ``adapters.max_rollbacks`` ends a run that keeps
collapsing.
"""

from __future__ import annotations

import math

from ..config import CollapseAdapterConfig
from ..hooks import Decision, EvalStats
from .base import Adapter, diagonality_of


class AttentionCollapseAdapter(Adapter):
    name = "collapse"
    priority = 80
    state_fields = ("aligned",)

    def __init__(self, cfg: CollapseAdapterConfig):
        self.cfg = cfg
        self.aligned = False

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        diagonality = diagonality_of(stats, self.cfg.metric)
        if not math.isfinite(diagonality):
            return []
        if diagonality >= self.cfg.high:
            self.aligned = True
            return []
        if self.aligned and diagonality < self.cfg.low:
            self.aligned = False
            return [Decision("rollback", None, f"emergency: attention collapsed (diagonality {diagonality:.3f} < "
                             f"{self.cfg.low:g} after it had reached {self.cfg.high:g})", diagonality, alarm=True)]
        return []
