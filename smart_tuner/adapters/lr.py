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
- range: the weights' relative change per step since the last evaluation (``EvalStats.weight_change``) says whether
  the rate is in range at all. Above ``weight_change_high``, at any time, it is far too large: ``base_lr`` is
  multiplied by ``emergency_factor``, becomes the new ``max_lr`` (no rule raises it back toward a rate known to be
  far too large), and the run rolls back to its last healthy state (what that rate did to the weights is undone;
  an alarm). Below ``weight_change_low`` before alignment (before ``plateau_from_diagonality``, where a flat
  validation loss says nothing; after it small changes are what a converging run makes) it is far too small:
  ``base_lr`` is multiplied by ``raise_factor``, up to ``max_lr``. Measured on the demo over 25-step intervals
  before alignment: 0.08-0.28 per step at 30-100x the default rate, 0.002-0.005 at the default, 0.00015-0.0005 at
  1/30 of it;
- free-running lag: teacher-forced diagonality above free-running by ``lag_gap`` or more for ``lag_patience``
  evaluations in a row (attention formed, but the decoder cannot yet run on its own outputs): ``base_lr`` is
  multiplied by ``raise_factor``, up to ``max_lr``, and the count starts over.
One adapter owns every rule, so plateau, emergency, range and lag can never fight over the rate.
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
    state_fields = ("base_lr", "max_lr", "scale", "best", "num_bad_evals", "cooldown_counter",
                    "consecutive_emergencies", "healthy_steps", "pending_cut", "plateau_started", "lagging_evals")

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
        self.lagging_evals = 0  # consecutive evaluations with free-running alignment lagging teacher-forced

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

    def _too_large(self, change: float) -> list[Decision]:
        """At any time: the weights moved far more per step than training ever should."""
        cfg = self.cfg
        if not change > cfg.weight_change_high:  # NaN (no measurement) included
            return []
        before = self.lr
        # What such a rate did to the weights is undone too: back to the last healthy state. And no rule raises
        # the rate again above what it is cut to (a raise back toward a rate known to be far too large).
        self.base_lr = max(self.base_lr * cfg.emergency_factor, cfg.min_lr)
        self.max_lr = max(min(self.max_lr, self.base_lr), cfg.min_lr)
        reason = (f"emergency: the weights changed by {change:.3g} of their norm per step (> weight_change_high "
                  f"{cfg.weight_change_high:g}): rate far too large")
        decisions = [Decision("rollback", None, reason, change, alarm=True)]
        if _lower(self.lr, before):
            decisions.append(Decision("lr", self.lr, f"{reason}, cut x{cfg.emergency_factor:g}", change, alarm=True))
        return decisions

    def _too_small(self, change: float) -> list[Decision]:
        """Before alignment (after it, small changes are what a converging run makes): the weights hardly move."""
        cfg = self.cfg
        if not change < cfg.weight_change_low or self.scale < 1.0:  # slow while recovering: it was cut on purpose
            return []
        return self._raise(f"the weights changed by {change:.3g} of their norm per step (< weight_change_low "
                           f"{cfg.weight_change_low:g}) before alignment: rate too small", change)

    def _raise(self, reason: str, trigger: float) -> list[Decision]:
        """``base_lr`` x ``raise_factor``, up to ``max_lr``; a decision when the rate did rise."""
        before = self.lr
        self.base_lr = min(self.base_lr * self.cfg.raise_factor, self.max_lr)
        if self.lr > before * (1.0 + 1e-9):
            return [Decision("lr", self.lr, f"{reason}, raised x{self.cfg.raise_factor:g} (max_lr {self.max_lr:g})",
                             trigger)]
        return []

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        too_large = self._too_large(stats.weight_change)
        if too_large:
            return too_large
        if not self.plateau_started:
            if not stats.diagonality >= self.cfg.plateau_from_diagonality:
                return self._too_small(stats.weight_change)
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
                    self.lagging_evals = 0
                    return [Decision("lr", self.lr, f"plateau: no relative improvement above "
                                     f"{self.cfg.threshold:g} for {self.cfg.patience + 1} evaluations "
                                     f"(best {self.best:.4f})", current)]
        return self._free_running_lags(stats)

    def _free_running_lags(self, stats: EvalStats) -> list[Decision]:
        """Teacher-forced alignment formed, free-running not: the decoder must first predict frames well enough to
        feed itself, and a faster rate gets it there sooner (measured on 15-30-word utterances: free-running
        alignment at step 500 at the demo's rate 1e-3, at 250 at 3e-3)."""
        cfg = self.cfg
        gap = stats.diagonality - stats.free_running_diagonality
        self.lagging_evals = self.lagging_evals + 1 if cfg.lag_gap > 0 and gap >= cfg.lag_gap else 0
        if self.lagging_evals < cfg.lag_patience or self.scale < 1.0:
            return []
        self.lagging_evals = 0
        return self._raise(f"free-running diagonality {stats.free_running_diagonality:.3f} lags teacher-forced "
                           f"{stats.diagonality:.3f} by >= lag_gap {cfg.lag_gap:g} for {cfg.lag_patience} evaluations",
                           gap)

    def on_event(self, event: Event) -> None:
        if event.control == "rollback" and event.applied and event.source != self.name:
            self.pending_cut = True
