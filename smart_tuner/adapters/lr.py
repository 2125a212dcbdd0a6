"""Learning-rate adapter: plateau reduction, emergency cuts, and stepwise recovery, in one writer of the rate.

The rate it asks for is ``clamp(base_lr * scale, min_lr, max_lr)``:
- ``base_lr`` follows torch's ``ReduceLROnPlateau`` (mode "min", threshold_mode "rel") on the validation loss,
  counted in evaluations, never on single batches, and only from the first evaluation whose diagonality reaches
  ``plateau_from_diagonality`` (before attention aligns, a rising validation loss is not a plateau);
- ``scale`` (<= 1) is cut by ``emergency_factor`` on an emergency (a non-finite loss, a loss above
  ``loss_limit`` or a gradient norm before clipping above ``grad_limit``; that update is also skipped) and
  climbs back by ``recovery_factor`` after every ``recovery_steps`` healthy steps, up to 1, i.e. to the rate
  before the emergency. After ``max_emergencies`` consecutive emergencies it asks for a rollback; a rollback
  asked for by another adapter (vanishing gradients) also cuts the scale once.
- before alignment (before ``plateau_from_diagonality``, where a flat validation loss says nothing), the
  weights' relative change per step (``EvalStats.weight_change``) says whether the rate is in range at all: above
  ``weight_change_high`` it is far too large: ``base_lr`` is multiplied by ``emergency_factor`` and the run rolls
  back to its last healthy state (what that rate did to the weights is undone; an alarm); below
  ``weight_change_low`` it is far too small, ``base_lr`` is multiplied by ``raise_factor``, up to ``max_lr``.
  Measured on the demo over 25-step intervals before alignment: 0.08-0.28 per step at 30-100x the default rate,
  0.002-0.005 at the default, 0.00015-0.0005 at 1/30 of it.
One adapter owns every rule, so plateau, emergency and range can never fight over the rate.
"""

from __future__ import annotations

import math

from ..config import LrAdapterConfig
from ..hooks import Decision, EvalStats, Event, StepStats
from .base import Adapter

EPS = 1e-8  # as torch's ReduceLROnPlateau: a reduction smaller than this is ignored


def _lower(new: float, old: float) -> bool:
    """Lower by more than float dust (a rate clamped at min_lr must not be 'cut' again)."""
    return new < old * (1.0 - 1e-9)


class LearningRateAdapter(Adapter):
    name = "lr"
    priority = 100
    state_fields = ("base_lr", "scale", "best", "num_bad_evals", "cooldown_counter", "consecutive_emergencies",
                    "healthy_steps", "pending_cut", "plateau_started")

    def __init__(self, cfg: LrAdapterConfig, initial_lr: float):
        self.cfg = cfg
        self.max_lr = cfg.max_lr or 2.0 * initial_lr
        self.base_lr = initial_lr
        self.scale = 1.0
        self.best = math.inf
        self.num_bad_evals = 0
        self.cooldown_counter = 0
        self.consecutive_emergencies = 0
        self.healthy_steps = 0
        self.pending_cut = False  # a rollback asked for by someone else: cut at the next step
        self.plateau_started = cfg.plateau_from_diagonality <= 0.0

    @property
    def lr(self) -> float:
        return min(self.max_lr, max(self.cfg.min_lr, self.base_lr * self.scale))

    def _cut(self) -> None:
        floor = self.cfg.min_lr / self.base_lr if self.base_lr > 0 else 0.0
        self.scale = max(self.scale * self.cfg.emergency_factor, floor)
        self.healthy_steps = 0

    def _emergency(self, stats: StepStats) -> tuple[str, float] | None:
        """(reason, trigger value) when this step is an emergency."""
        if not math.isfinite(stats.loss):
            return "emergency: non-finite loss", stats.loss
        if stats.loss > self.cfg.loss_limit:
            return f"emergency: loss {stats.loss:.4g} > loss_limit {self.cfg.loss_limit:g}", stats.loss
        if not math.isfinite(stats.grad_norm):
            return "emergency: non-finite gradient norm", stats.grad_norm
        if stats.grad_norm > self.cfg.grad_limit:
            return (f"emergency: gradient norm {stats.grad_norm:.4g} > grad_limit {self.cfg.grad_limit:g}",
                    stats.grad_norm)
        return None

    def on_step(self, stats: StepStats) -> list[Decision]:
        emergency = self._emergency(stats)
        if emergency:
            reason, trigger = emergency
            self.consecutive_emergencies += 1
            before = self.lr
            self._cut()
            decisions = [Decision("skip_update", None, reason, trigger, alarm=True)]
            if _lower(self.lr, before):
                decisions.append(Decision("lr", self.lr, reason, trigger, alarm=True))
            if self.consecutive_emergencies >= self.cfg.max_emergencies:
                decisions.append(Decision("rollback", None, f"emergency: {self.consecutive_emergencies} "
                                          "consecutive emergencies", trigger, alarm=True))
                self.consecutive_emergencies = 0
            return decisions
        self.consecutive_emergencies = 0
        if self.pending_cut:
            self.pending_cut = False
            before = self.lr
            self._cut()
            if _lower(self.lr, before):
                return [Decision("lr", self.lr, "emergency: rolled back, rate cut before recovery", None,
                                 alarm=True)]
        if self.scale < 1.0:
            self.healthy_steps += 1
            if self.healthy_steps >= self.cfg.recovery_steps:
                self.healthy_steps = 0
                self.scale = min(1.0, self.scale * self.cfg.recovery_factor)
                return [Decision("lr", self.lr, f"recovery: {self.cfg.recovery_steps} healthy steps", None)]
        return []

    def _out_of_range(self, change: float) -> list[Decision]:
        """Before alignment: the rate far too large or far too small for the weights it moves."""
        cfg = self.cfg
        if not math.isfinite(change):
            return []
        before = self.lr
        if change > cfg.weight_change_high:
            # What such a rate did to the weights is undone too: back to the last healthy state.
            self.base_lr = max(self.base_lr * cfg.emergency_factor, cfg.min_lr)
            reason = (f"emergency: the weights changed by {change:.3g} of their norm per step (> weight_change_high "
                      f"{cfg.weight_change_high:g}): rate far too large")
            decisions = [Decision("rollback", None, reason, change, alarm=True)]
            if _lower(self.lr, before):
                decisions.append(Decision("lr", self.lr, f"{reason}, cut x{cfg.emergency_factor:g}", change,
                                          alarm=True))
            return decisions
        if change < cfg.weight_change_low and self.scale >= 1.0:
            self.base_lr = min(self.base_lr * cfg.raise_factor, self.max_lr)
            if self.lr > before * (1.0 + 1e-9):
                return [Decision("lr", self.lr, f"the weights changed by {change:.3g} of their norm per step "
                                 f"(< weight_change_low {cfg.weight_change_low:g}) before alignment: rate too small, "
                                 f"raised x{cfg.raise_factor:g} (max_lr {self.max_lr:g})", change)]
        return []

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        if not self.plateau_started:
            if not stats.diagonality >= self.cfg.plateau_from_diagonality:
                return self._out_of_range(stats.weight_change)
            self.plateau_started = True
        current = stats.val_loss
        # torch's rule: NaN never counts as an improvement.
        if current < self.best * (1.0 - self.cfg.threshold):
            self.best = current
            self.num_bad_evals = 0
        else:
            self.num_bad_evals += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_evals = 0
        if self.num_bad_evals > self.cfg.patience:
            self.cooldown_counter = self.cfg.cooldown
            self.num_bad_evals = 0
            new_base = max(self.base_lr * self.cfg.factor, self.cfg.min_lr)
            if self.base_lr - new_base > EPS:
                before = self.lr
                self.base_lr = new_base
                if self.lr != before:
                    return [Decision("lr", self.lr, f"plateau: no relative improvement above "
                                     f"{self.cfg.threshold:g} for {self.cfg.patience + 1} evaluations "
                                     f"(best {self.best:.4f})", current)]
        return []

    def on_event(self, event: Event) -> None:
        if event.control == "rollback" and event.applied and event.source != self.name:
            self.pending_cut = True
