"""Gradient health: vanishing gradients trigger a rollback.

Non-finite gradients never reach the weights (the trainer skips such an update; the learning-rate adapter
treats it as an emergency). Exploding gradients are clipped by the trainer (train.grad_clip), and the
learning-rate adapter reads the same pre-clipping norm from StepStats, so nothing is reported twice. What only
this adapter watches is a gradient norm below ``vanish_eps`` for ``vanish_patience`` consecutive steps: the
model has stopped learning, and the fix is the last healthy state plus a lower rate (the learning-rate adapter
cuts it when it sees the rollback event). Never a second backward pass.
"""

from __future__ import annotations

import math

from ..config import GradAdapterConfig
from ..hooks import Decision, StepStats
from .base import Adapter


class GradientHealthAdapter(Adapter):
    name = "grad"
    priority = 90
    state_fields = ("vanished_steps",)

    def __init__(self, cfg: GradAdapterConfig):
        self.cfg = cfg
        self.vanished_steps = 0

    def on_step(self, stats: StepStats) -> list[Decision]:
        if math.isfinite(stats.grad_norm) and stats.grad_norm < self.cfg.vanish_eps:
            self.vanished_steps += 1
        else:
            self.vanished_steps = 0
        if self.vanished_steps >= self.cfg.vanish_patience:
            self.vanished_steps = 0
            return [Decision("rollback", None, f"emergency: gradient norm below {self.cfg.vanish_eps:g} for "
                             f"{self.cfg.vanish_patience} steps (vanishing gradients)", stats.grad_norm,
                             alarm=True)]
        return []
