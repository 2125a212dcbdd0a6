"""What keeps several ranks in lock-step, seen from the trainer (the collectives themselves: distributed.py).

At each step :meth:`LockStep.reduce_step` turns the step's tensors into plain numbers, reduced across ranks in
one all-reduce (a stop signal any rank received travels with them), and :meth:`LockStep.agree` gives every rank
the decisions of rank 0's hooks; at each checkpoint :meth:`LockStep.fingerprints` checks that the ranks' weights
are still the same bit for bit. The ranks share weights but not dropout masks: each draws from a stream of its own
(:meth:`LockStep.seed_rank`). With one process alone each of these is a plain pass-through.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
from dataclasses import dataclass

import torch

from .. import interrupts
from ..hooks import Decision, Hook
from ..seeds import derived_seed
from ..tts import checkpoint as ckpt
from .distributed import Group
from .errors import TrainingError

log = logging.getLogger(__name__)


@dataclass
class StepValues:
    """A step's statistics as plain numbers, the same on every rank (losses and diagonality averaged over ranks,
    frames summed)."""

    loss: float
    losses: dict[str, float]
    diagonality: float
    frames: int
    grad_norm: float
    module_norms: list[float]

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in [self.loss, *self.losses.values(), self.grad_norm])


class LockStep:
    def __init__(self, group: Group):
        self.group = group
        self.peer_stop = False  # some rank received a stop signal during the last step

    def reduce_step(self, loss: torch.Tensor, losses: dict[str, torch.Tensor], diagonality: torch.Tensor,
                    frames: int, grad_norm: torch.Tensor, module_norms: list[torch.Tensor]) -> StepValues:
        """What differs between ranks (losses, diagonality; with several ranks also the frames and a stop request)
        is reduced in one all-reduce; the gradient norms are already the same on every rank (the gradients were
        averaged). One host sync per step."""
        names = list(losses)
        per_rank = torch.stack([loss.detach().float()] + [losses[k].detach().float() for k in names]
                               + [diagonality.float()])
        if self.group.distributed:
            counts = per_rank.new_tensor([float(frames), float(interrupts.requested() is not None)])
            per_rank = self.group.sum_(torch.cat([per_rank, counts]))
            per_rank[:-2] /= self.group.world_size
        values = torch.cat([per_rank, torch.stack([grad_norm.float()] + [n.float() for n in module_norms])]).tolist()
        rest = values[len(names) + 2:]
        if self.group.distributed:
            frames, self.peer_stop, rest = int(rest[0]), rest[1] > 0, rest[2:]
        return StepValues(values[0], dict(zip(names, values[1:len(names) + 1])), values[len(names) + 1], frames,
                          rest[0], rest[1:])

    def stop_signal(self) -> int | None:
        """The signal that stops the run at this step boundary. With several ranks, a signal any rank received in
        the last step (reduced with its statistics), so that all of them stop at the same step."""
        if not self.group.distributed:
            return interrupts.requested()
        return (interrupts.requested() or signal.SIGTERM) if self.peer_stop else None

    def agree(self, requests: list[tuple[Hook, Decision]]) -> list[tuple[Hook, Decision]]:
        """Rank 0's hook requests, on every rank (the other ranks run no hooks)."""
        if not self.group.distributed:
            return requests
        shared = self.group.share([(h.name, h.priority, d) for h, d in requests])
        return requests if self.group.is_main else [(_Peer(name, priority), d) for name, priority, d in shared]

    def check_shares(self, batch_size: int, train_size: int, val_size: int) -> None:
        """Every rank needs a share of each batch and of the validation set."""
        ranks = self.group.world_size
        problems = [f"{what} ({value}) must be >= the number of ranks ({ranks})" for what, value in (
            ("train.batch_size, the global batch,", batch_size), ("the training set", train_size),
            ("the validation set (data.val_size)", val_size)) if value < ranks]
        if problems:
            raise TrainingError("; ".join(problems))

    def seed_rank(self, seed: int, offset: int = 0) -> None:
        """A dropout stream of this rank's own (ranks hold the same weights but must not draw the same masks);
        rank 0's is the run's seed (plus ``offset``)."""
        torch.manual_seed(derived_seed(self.group.rank, seed + offset))

    def restore_rng(self, state: dict, seed: int, step: int) -> None:
        """Each rank's own RNG state of a checkpoint when the number of ranks is the one saved; else new streams,
        with a warning."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.group.world_size:
            ckpt.set_rng_state(ranks[self.group.rank])
            return
        ckpt.set_rng_state(state["rng"])
        self.seed_rank(seed, step)
        if self.group.is_main:
            log.warning("resuming a checkpoint of %d rank(s) with %d: the global batch (train.batch_size), the data "
                        "order and the rate stay; each rank's share of a batch and the dropout streams change, so "
                        "the run does not continue exactly as it would have", len(ranks), self.group.world_size)

    def rng_states(self) -> list[dict] | None:
        """Every rank's RNG state (a collective: every rank builds its checkpoint at the same step)."""
        return self.group.gather(ckpt.rng_state()) if self.group.distributed else None

    def fingerprints(self, model: torch.nn.Module, step: int) -> list[str]:
        """Every rank's hash of its weights. Ranks in lock-step hold the same weights bit for bit; if they do not,
        the run stops here rather than train on with ranks that went apart."""
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        found = self.group.gather(digest.hexdigest())
        if len(set(found)) > 1:
            raise TrainingError(f"step {step}: the ranks' weights differ (hashes {found}); they left "
                                f"lock-step, which is a bug: please report it with the run's events.jsonl")
        return found


class _Peer(Hook):
    """On ranks other than 0: the rank-0 hook a broadcast decision came from (its name and priority)."""

    def __init__(self, name: str, priority: int):
        self.name, self.priority = name, priority
