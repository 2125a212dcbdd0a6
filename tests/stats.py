"""Statistics for tests: objects with Tacotron 2's loss terms and weight, and a hook that collects the steps."""

from __future__ import annotations

import math

from smart_tuner.hooks import EvalStats, Hook, StepStats


def step_stats(step: int = 1, *, loss: float = 1.0, grad_norm: float = 1.0, ga_weight: float = 2.0,
               mel: float = 0.4, postnet: float = 0.4, gate: float = 0.1, ga: float = 0.05, **fields) -> StepStats:
    values = dict(step=step, epoch=0, loss=loss, losses={"mel": mel, "postnet": postnet, "gate": gate, "ga": ga},
                  grad_norm=grad_norm, lr=1e-3, loss_weights={"ga_weight": ga_weight},
                  finite=math.isfinite(loss) and math.isfinite(grad_norm), step_time=0.1)
    values.update(fields)
    return StepStats(**values)


def eval_stats(step: int = 1, *, val_loss: float = 1.0, ga_weight: float = 2.0, val_mel: float = 0.4,
               val_postnet: float = 0.4, val_gate: float = 0.2, val_ga: float = 0.1, **fields) -> EvalStats:
    values = dict(step=step, val_loss=val_loss,
                  val_losses={"mel": val_mel, "postnet": val_postnet, "gate": val_gate, "ga": val_ga},
                  diagonality=0.5, focus=0.3, monotonicity=0.9, coverage=0.9, free_running_diagonality=0.5,
                  free_running_focus=0.3, free_running_monotonicity=0.9, free_running_coverage=0.9,
                  free_running_stop_rate=1.0, lr=1e-3,
                  loss_weights={"ga_weight": ga_weight}, train_loss=1.0, elapsed=1.0)
    values.update(fields)
    return EvalStats(**values)


class StepLog(Hook):
    """Keeps every step's statistics, in order."""

    name = "step_log"

    def __init__(self):
        self.steps: list[StepStats] = []

    def on_step(self, stats):
        self.steps.append(stats)
        return []
