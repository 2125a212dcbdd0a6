"""Training in several processes (torchrun): who this process is, and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m smart_tuner train ...`` (or ``train --nproc N``, which starts torchrun) runs N
ranks. Each takes its share of every batch of the one deterministic bucket sampler, so ``train.batch_size`` is the
global batch. Lock-step: after the backward pass the gradients (and the batch-norm running statistics) are
averaged across ranks (one all-reduce of one flat buffer), and the step's statistics are averaged before any hook
sees them; the hooks themselves run on rank 0 alone and their decisions are broadcast, so every rank applies the
same rate, loss weights, skips and rollbacks at the same step. Rank 0 alone writes files, logs to MLflow, sends
alerts and reports to Optuna.

NCCL on GPUs, gloo on CPU. Every collective waits at most ``train.dist_timeout`` seconds: a rank that hangs or dies
makes the others fail with a :class:`GroupError` instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import UserError

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Seconds torchrun waits, after passing a signal on, before it kills the ranks: room for the step, an evaluation
# and the checkpoint the stop writes (its default, 30 s, can cut a large model's checkpoint short).
SHUTDOWN_TIMEOUT = 300


def torchrun_args(nproc: int, max_restarts: int = 0) -> list[str]:
    """torchrun's options for ``nproc`` ranks of this machine."""
    return ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT}"]


def torchrun_command(nproc: int, max_restarts: int = 0) -> list[str]:
    """The start of a command line that runs ``-m ...`` as ``nproc`` ranks of this machine under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args(nproc, max_restarts)]


def torchrun_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for torchrun's ranks. torchrun would set OMP_NUM_THREADS=1 with a banner; the ranks divide the cores
    themselves (smart_tuner.cores). A rank that dies of a fatal signal prints its Python stack (faulthandler): the
    one clue to what happened."""
    return {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"), "PYTHONFAULTHANDLER": "1"}


class GroupError(UserError, RuntimeError):
    """A collective failed or timed out: another rank died or hangs."""


class GroupLost(BaseException):
    """Raised past a study's trial loop (not an ``Exception``, which Optuna would catch) when the group of ranks of
    a multi-GPU trial broke: the worker ends, its running trial fails, and the other workers go on."""


_broken: list[str] = []  # set once a collective of this process failed: the group cannot be used again
_store: list[Any] = []  # the group's key-value store (torchrun's), for waits longer than a collective's timeout
_waits = [0]  # how many times the ranks waited for rank 0: the same sequence on every rank names the keys


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks (one process alone: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart: int = 0  # how often torchrun restarted the group (its --max-restarts)
    timeout: float = 600.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, timeout: float = 600.0) -> Group:
        """The group torchrun describes in the environment; rank 0 of 1 outside torchrun."""
        if "WORLD_SIZE" not in os.environ:
            return cls(timeout=timeout)
        try:
            rank, world, local = (int(os.environ.get(name, "0")) for name in ENV)
            restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        except ValueError as exc:
            raise GroupError(f"torchrun's environment is not readable ({exc}); start with torchrun or "
                             f"train --nproc") from None
        return cls(rank, world, local, restart, timeout)

    # ------------------------------------------------------------------------------------- set-up
    def device(self, name: str) -> torch.device | None:
        """The device of this rank for ``train.device``: with CUDA, GPU ``local_rank`` (None: decide as usual)."""
        if not self.distributed:
            return None
        wants_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
        return torch.device("cuda", self.local_rank) if wants_cuda else torch.device("cpu")

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL for CUDA, gloo for CPU); nothing for one process alone."""
        if not self.distributed or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
            # NCCL returns before a collective completes; blocking waits make a dead or hung rank an error here,
            # within train.dist_timeout, instead of a watchdog abort (the host syncs every step anyway).
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=self.timeout)
        # torchrun's store outlives a restart of the group: keys of this attempt under a prefix of their own, so
        # that a restarted rank never reads the address a dead rank published (and waits on it).
        store, rank, world = next(dist.rendezvous("env://", self.rank, self.world_size, timeout=timeout))
        store = dist.PrefixStore(f"smart_tuner/restart_{self.restart}", store)
        _store[:] = [store]
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
        _store.clear()  # a store left for interpreter exit aborts the process (its threads are still joinable)

    # ------------------------------------------------------------------------------------- collectives
    @property
    def broken(self) -> bool:
        return bool(_broken)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if _broken:
            raise GroupError(f"rank {self.rank}: the group of ranks broke earlier ({_broken[0]})")
        try:
            return fn()
        except (RuntimeError, dist.DistBackendError) as exc:
            _broken.append(what)
            raise GroupError(f"rank {self.rank} of {self.world_size}: {what} failed, or found no answer within "
                             f"train.dist_timeout={self.timeout:g} s (another rank died or hangs): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def mark_broken(self, why: str) -> None:
        """This process's group can no longer be trusted to call the same collectives on every rank."""
        _broken.append(why)

    def _from_main(self, obj: Any, hours: float, late: str) -> Any:
        """Rank 0 posts ``obj`` under the next key of the store; the other ranks wait for it (up to ``hours``, not a
        collective's timeout) and read it. ``late`` says what a rank that waited in vain did not get."""
        _waits[0] += 1  # the same sequence on every rank names the keys
        key = f"from_main/{_waits[0]}"
        if self.is_main:
            _store[0].set(key, pickle.dumps(obj))
            return obj
        try:
            _store[0].wait([key], datetime.timedelta(hours=hours))
        except RuntimeError as exc:
            raise GroupError(f"rank {self.rank}: {late} within {hours:g} h: {exc}") from None
        return pickle.loads(_store[0].get(key))

    def announce(self, obj: Any, hours: float = 24.0) -> Any:
        """Rank 0's ``obj`` on every rank through the store: for waits with no bound known in advance (a study's
        next trial comes after rank 0's tracking uploads and sampling), which a collective would time out."""
        return self._from_main(obj, hours, "no word from rank 0") if self.distributed else obj

    def after_main(self, work: Callable[[], T], hours: float = 24.0) -> T:
        """``work()`` on rank 0 first, then on the other ranks (building the feature cache once: that may take
        longer than a collective may wait, so the others wait on the store, up to ``hours``)."""
        if not self.distributed:
            return work()
        result = work() if self.is_main else None
        self._from_main(None, hours, "rank 0 did not finish preparing")
        return result if self.is_main else work()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            self._call("summing statistics", lambda: dist.all_reduce(tensor))
        return tensor

    def average_gradients(self, params: list[torch.nn.Parameter], buffers: list[torch.Tensor] = ()) -> None:
        """Every rank's gradients replaced by their mean over ranks, and the floating buffers (batch-norm running
        statistics, updated by each rank's own batch) averaged in place: one all-reduce of one flat buffer."""
        if not self.distributed:
            return
        # A parameter without a gradient has none on every rank (the same graph): it stays out, as in one process.
        trainable = [p for p in params if p.requires_grad and p.grad is not None]
        floating = [b for b in buffers if b.is_floating_point()]
        parts = [p.grad for p in trainable] + floating
        if not parts:
            return
        flat = torch.cat([t.reshape(-1).float() for t in parts])
        self._call("averaging gradients", lambda: dist.all_reduce(flat))
        flat.div_(self.world_size)
        averaged = [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in parts]), parts)]
        torch._foreach_copy_(parts, averaged)  # grads and buffers in place, cast back to their dtypes

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights on every rank."""
        if self.distributed:
            for tensor in module.state_dict().values():
                self._call("broadcasting the weights", lambda t=tensor: dist.broadcast(t, src=0))

    def share(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable values: decisions, a run directory)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        self._call("receiving rank 0's decisions", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        found: list[Any] = [None] * self.world_size
        self._call("gathering every rank's state", lambda: dist.all_gather_object(found, obj))
        return found
