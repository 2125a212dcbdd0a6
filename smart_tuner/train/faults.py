"""Deliberate faults (``config.faults``), to test the adapters, the lock-step of several ranks and a set-up.

The trainer calls its :class:`FaultPlan` at three named points of a step and never tests for a fault itself:
:meth:`~FaultPlan.after_loss` (a NaN loss), :meth:`~FaultPlan.after_gradients` (an infinite gradient, or a rank
that hangs until a signal ends it), :meth:`~FaultPlan.after_step` (noise on every weight after the update). Each
point is a look-up in a set of steps, empty unless the config schedules a fault there.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from .. import interrupts
from ..config import FaultsConfig
from ..seeds import derived_seed

log = logging.getLogger(__name__)


class FaultPlan:
    """The faults of one rank: ``faults.rank`` names the rank of the NaN losses, infinite gradients and hangs (-1:
    every rank); the weight noise reaches every rank alike, so that the ranks stay in lock-step."""

    def __init__(self, faults: FaultsConfig, rank: int, seed: int):
        here = faults.rank in (-1, rank)
        self.nan_loss = set(faults.nan_loss_at) if here else set()
        self.inf_grad = set(faults.inf_grad_at) if here else set()
        self.hang = set(faults.hang_at) if here else set()
        self.perturb = set(faults.perturb_at)
        self.perturb_scale, self.rank, self.seed = faults.perturb_scale, rank, seed

    def after_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate at 1-based ``step``: NaN at ``faults.nan_loss_at``."""
        return loss * float("nan") if step in self.nan_loss else loss

    def after_gradients(self, step: int, model: torch.nn.Module) -> None:
        """Before the gradients are averaged and clipped: one infinite gradient at ``faults.inf_grad_at``; at
        ``faults.hang_at`` this rank hangs until a signal (torchrun's SIGTERM) ends the process."""
        if step in self.inf_grad:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        if step in self.hang:
            log.error("faults.hang_at: rank %d hangs at step %d", self.rank, step)
            while interrupts.requested() is None:
                time.sleep(0.2)
            os._exit(interrupts.exit_code(interrupts.requested()))

    def after_step(self, step: int, model: torch.nn.Module) -> None:
        """After update ``step``: at ``faults.perturb_at``, noise on every weight, the same on every rank (drawn
        from one generator seeded by the run's seed and the step)."""
        if step in self.perturb:
            self._perturb(step, model)

    @torch.no_grad()
    def _perturb(self, step: int, model: torch.nn.Module) -> None:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, step))
        for parameter in model.parameters():
            if parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
                parameter.add_(noise * (self.perturb_scale * parameter.std()))
        log.warning("step %d: faults.perturb_at: noise of %g x each weight's standard deviation added to every "
                    "weight", step, self.perturb_scale)
