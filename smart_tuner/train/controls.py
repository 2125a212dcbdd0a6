"""The trainer's side of the contract in smart_tuner/hooks.py: the one writer of every control.

Hooks return :class:`~smart_tuner.hooks.Decision` objects; :meth:`Controls.apply` resolves the requests for one
control by the hooks' ``priority`` (higher wins; a tie goes to the first hook), applies the winner and records
every request, the losers too, as an :class:`~smart_tuner.hooks.Event` in ``events.jsonl`` and in each hook's
``on_event``. The controls are the learning rate (written into the optimizer here and nowhere else), the model
family's steerable loss weights, and the actions ``skip_update``, ``rollback`` and ``stop`` (which the trainer
carries out from the returned set). A rollback restores the healthy snapshot: the model and optimizer state of
the last evaluation after a stretch without alarms, kept in memory, and spends one of ``adapters.max_rollbacks``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from ..hooks import CONTROLS, Decision, Event, Hook, StepStats
from .errors import TrainingError
from .run_dir import RunDir

log = logging.getLogger(__name__)


class Controls:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                 loss_weights: dict[str, float], hooks: Sequence[Hook], run: RunDir, max_rollbacks: int):
        self.model, self.optimizer, self.hooks, self.run = model, optimizer, hooks, run
        self.lr, self.loss_weights = lr, loss_weights
        self.names = CONTROLS + tuple(loss_weights)
        self.max_rollbacks, self.rollbacks = max_rollbacks, 0
        self.stop_reason = ""
        self.last_event = ""  # shown next to the progress bar
        self.healthy: dict = {}  # where a rollback returns to (see snapshot)
        self.alarm_since_snapshot = False

    def values(self) -> dict[str, float]:
        """The rate and the loss weights in force (a checkpoint's ``controls``)."""
        return {"lr": self.lr, **self.loss_weights}

    def load(self, values: dict[str, float], rollbacks: int, lr: float | None = None) -> None:
        """The controls of a checkpoint (after the optimizer state was loaded); ``lr``: a rate asked for anew."""
        self.loss_weights.update((k, v) for k, v in values.items() if k in self.loss_weights)
        self.rollbacks = rollbacks
        self.set_lr(values["lr"] if lr is None else lr)

    def set_lr(self, value: float) -> None:
        self.lr = value
        for group in self.optimizer.param_groups:
            group["lr"] = value

    # ------------------------------------------------------------------------------------- decisions
    def guard(self, requests: list[tuple[Hook, Decision]], stats: StepStats) -> list[tuple[Hook, Decision]]:
        """The trainer's own safety decision: non-finite values never reach the weights or the optimizer."""
        if not stats.finite and not any(d.control == "skip_update" for _, d in requests):
            requests.append((TRAINER, Decision("skip_update", None, "non-finite loss or gradient", stats.grad_norm,
                                               alarm=True)))
        return requests

    def apply(self, requests: list[tuple[Hook, Decision]], step: int) -> set[str]:
        """Resolve requests per control by hook priority, apply the winners, record every request; returns the
        actions (``skip_update``, ``rollback``, ``stop``) that won."""
        actions: set[str] = set()
        by_control: dict[str, list[tuple[Hook, Decision]]] = {}
        for hook, decision in requests:
            if decision.control not in self.names:
                raise TrainingError(f"hook {hook.name!r} asked for unknown control {decision.control!r}")
            by_control.setdefault(decision.control, []).append((hook, decision))
        for control, asks in by_control.items():
            winner = max(range(len(asks)), key=lambda i: asks[i][0].priority)  # ties: the first hook
            old = self.lr if control == "lr" else self.loss_weights.get(control)
            for i, (hook, decision) in enumerate(asks):
                if i == winner:
                    self._carry_out(hook, decision, step, actions)
                self._record(Event(step, hook.name, control, old, decision.value, decision.reason,
                                   decision.trigger, i == winner, decision.alarm))
        return actions

    def _carry_out(self, hook: Hook, decision: Decision, step: int, actions: set[str]) -> None:
        control = decision.control
        if control == "lr":
            self.set_lr(float(decision.value))
        elif control in self.loss_weights:
            self.loss_weights[control] = float(decision.value)
        else:
            if control == "rollback":
                self.rollback(decision.reason, step)
            elif control == "stop":
                self.stop_reason = f"{hook.name}: {decision.reason}"
            actions.add(control)

    def _record(self, event: Event) -> None:
        self.run.append_event(event)
        if event.is_alarm:
            self.alarm_since_snapshot = True
        if event.applied:
            change = f" {event.old:.3g}>{event.new:.3g}" if event.old is not None and event.new is not None else ""
            self.last_event = f"{event.step}:{event.source} {event.control}{change}"
        for hook in self.hooks:
            hook.on_event(event)

    # ------------------------------------------------------------------------------------- healthy state
    def snapshot(self, step: int) -> None:
        """Model and optimizer state copied to CPU memory (the optimizer's learning rate is not part of it)."""
        self.healthy = {"step": step, "model": _to_cpu(self.model.state_dict()),
                        "optimizer": _to_cpu(self.optimizer.state_dict())}

    def after_eval(self, val_loss: float, step: int) -> None:
        """An evaluation that follows a stretch without alarms (emergencies, skipped updates, rollbacks) and
        measured a finite loss refreshes the snapshot."""
        if not self.alarm_since_snapshot and math.isfinite(val_loss):
            self.snapshot(step)
        self.alarm_since_snapshot = False

    def rollback(self, reason: str, step: int) -> None:
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingError(f"rollback budget spent ({self.max_rollbacks} rollbacks, adapters.max_rollbacks) "
                                f"and another was needed: {reason}")
        self.rollbacks += 1
        self.model.load_state_dict(self.healthy["model"])
        self.optimizer.load_state_dict(self.healthy["optimizer"])
        self.set_lr(self.lr)  # the snapshot's optimizer state carries an old rate: the adapters' one stands
        self.alarm_since_snapshot = False
        log.warning("step %d: rolled back to the healthy state of step %d (%d of %d): %s", step,
                    self.healthy["step"], self.rollbacks, self.max_rollbacks, reason)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


class _TrainerSource(Hook):
    """Names the trainer as the source of its own safety decisions; it outranks every hook."""

    name = "trainer"
    priority = 1_000_000


TRAINER = _TrainerSource()
