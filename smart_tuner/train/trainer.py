"""The training loop. Reads top to bottom: set-up, resume, then one loop of

    forward -> loss -> backward -> gradient norm -> hooks decide -> optimizer step (unless skipped)
    every eval_every steps: validation (teacher-forced + free-running) -> hooks decide -> metrics.jsonl
    -> checkpoint (atomic)

The model comes from its family (smart_tuner.tts): the trainer asks it for the network, a training forward
(named losses, their weighted total, alignments) and free-running decoding, and never names a loss or a layer.
The trainer is the only writer of the learning rate and of the family's steerable loss weights; hooks ask with
:class:`~smart_tuner.hooks.Decision` objects and every request becomes an event in ``events.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from .. import interrupts
from ..config import Config, resume_changes, to_yaml
from ..cores import CoreShare
from ..data.dataset import (
    Batch,
    BucketBatchSampler,
    Collate,
    MelStats,
    PreparedData,
    eval_batches,
    length_grid,
    prepare_data,
)
from ..data.text import SymbolTable
from ..errors import UserError
from ..files import DirectoryLock, DirectoryLocked, DiskFullError, append_line, remove_stale_temporaries, write_atomic
from ..hooks import CONTROLS, Decision, EvalStats, Event, Hook, RunInfo, StepStats, TrainResult
from ..tts import build_family, count_parameters
from ..tts import checkpoint as ckpt
from ..tts.alignment import METRICS, alignment_metrics, diagonality
from ..tts.inference import pick_device
from ..tts.warm_start import init_from
from .distributed import Group, GroupError

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """The run cannot go on; the message says why."""


class Trainer:
    def __init__(self, config: Config, run_dir: str | Path, hooks: Sequence[Hook] = (), resume: bool = False,
                 data: PreparedData | None = None, progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        # Several ranks (torchrun): rank 0 alone runs the hooks, writes files and shows progress; see distributed.py.
        self.group = Group.from_env(config.train.dist_timeout)
        self.hooks = list(hooks) if self.group.is_main else []
        self.progress = progress and self.group.is_main
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TrainingError(f"--run-dir {self.run_dir} is a file, not a directory; choose another --run-dir")
        if self.group.restart and not resume:  # torchrun restarted the group after a rank died
            resume = last.is_file()
            log.warning("restart %d of the group: %s", self.group.restart,
                        f"resuming from {last}" if resume else "no checkpoint yet, starting over")
            if not resume and self.group.is_main:  # what the dead group logged belongs to no checkpoint
                for name in ("metrics.jsonl", "events.jsonl"):
                    (self.run_dir / name).unlink(missing_ok=True)
        if resume and not last.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last}")
        if not resume and last.is_file():
            raise TrainingError(f"{self.run_dir} already holds a run (checkpoints/last.pt): pass --resume to "
                                f"continue it, or choose another --run-dir")
        self.core_share: CoreShare | None = None
        try:  # one writer per run directory, until fit() ends (or the process does)
            self.lock: DirectoryLock | None = DirectoryLock(self.run_dir) if self.group.is_main else None
        except DirectoryLocked as exc:
            raise TrainingError(f"run directory {exc}") from None
        try:
            if self.group.is_main:
                for stale in remove_stale_temporaries(self.ckpt_dir):
                    log.info("removed %s, left by a killed process", stale)
            saved = ckpt.load(last) if resume else None
            if saved is not None:  # before the features are computed and the model is built
                self._check_resume_config(saved, last)

            cfg = config.train
            self.device = self.group.device(cfg.device) or pick_device(cfg.device)
            self.group.start(self.device)
            # train.num_threads 0: a fair share of the machine's cores, divided anew as other runs start and end.
            self.core_share = CoreShare().join() if not cfg.num_threads else None
            self._share_cores(announce=False)
            self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                             if self.device.type == "cuda" and cfg.bf16 else nullcontext())
            torch.manual_seed(cfg.seed)

            # Rank 0 builds the corpus's feature cache; the other ranks then read it.
            self.data = data or self.group.after_main(
                lambda: prepare_data(config, self.run_dir if self.group.is_main else None))
            self._check_group_size()
            self.symbols: SymbolTable = self.data.symbols
            self.stats: MelStats = self.data.stats
            self.family = build_family(config)
            self.model = self.family.build(len(self.symbols)).to(self.device)
            if cfg.init_from and saved is None:  # a resumed run already holds the warm-started weights
                self._warm_start()
            self.group.broadcast_parameters(self.model)  # one starting point for every rank
            if self.group.distributed:  # the same weights, but each rank its own dropout stream
                self._seed_rank()
            self.frozen = self._frozen_parameters(cfg.freeze_modules)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                               weight_decay=cfg.weight_decay)
            self.sampler = BucketBatchSampler(self.data.train.frames, cfg.batch_size, cfg.seed)
            self.collate = self._collate(config.data.length_grid)
            # Gradient norms are reported per top-level module (Tacotron 2: encoder, decoder, postnet).
            self.module_params = {name: list(module.parameters()) for name, module in self.model.named_children()}
            self.faults = {"nan_loss": set(config.faults.nan_loss_at), "inf_grad": set(config.faults.inf_grad_at),
                           "hang": set(config.faults.hang_at), "perturb": set(config.faults.perturb_at)}

            # The controls the trainer alone writes, and the loop position.
            self.lr = cfg.lr
            self.loss_weights = self.family.loss_weights()
            self.controls = CONTROLS + tuple(self.loss_weights)
            self.step = 0
            self.epoch = 0
            self.batch_in_epoch = 0
            self.best_val_loss: float | None = None
            self.elapsed = 0.0
            self.rollbacks = 0
            self.stop_reason = ""
            self.peer_stop = False  # some rank received a stop signal during the last step
            self.last_event = ""  # shown next to the progress bar
            self.saved_step: int | None = None  # the step of checkpoints/last.pt on disk
            if saved is not None:
                self._load(saved, last)
            # The last healthy state, in memory: where a rollback returns to. Refreshed at each evaluation that
            # follows a stretch without alarms (emergencies, skipped updates, rollbacks).
            self.healthy = self._snapshot()
            self.alarm_since_snapshot = False
            # The weights at the last evaluation (or the start, or a rollback), for EvalStats.weight_change.
            self.eval_weights, self.eval_weights_step = self._flat_weights(), self.step
        except BaseException:
            self.release()
            raise

    def _collate(self, grid_size: int) -> Collate:
        """The batch maker; with ``data.length_grid`` the padded lengths come from a grid, and the log says what
        that padding costs over an epoch against padding each batch to its own longest item."""
        multiple = self.family.frames_multiple
        if not grid_size:
            return Collate(self.symbols.pad_id, self.stats.pad_value, multiple)
        train = self.data.train
        frame_grid = length_grid(train.frames, grid_size, multiple)
        text_grid = length_grid([len(t) for t in train.encoded], grid_size)
        batches = self.sampler.epoch(0)
        real = sum(train.frames)
        per_batch = sum(len(b) * -(-max(train.frames[i] for i in b) // multiple) * multiple for b in batches)
        on_grid = sum(len(b) * next(e for e in frame_grid if e >= max(train.frames[i] for i in b)) for b in batches)
        log.info("static shapes: frames padded to one of %s, text to one of %s; padded frames over an epoch: "
                 "+%.1f%% (+%.1f%% padding each batch to its longest)", frame_grid, text_grid,
                 100 * (on_grid / real - 1), 100 * (per_batch / real - 1))
        return Collate(self.symbols.pad_id, self.stats.pad_value, multiple, frame_grid, text_grid)

    # ----------------------------------------------------------------------------------------- warm start
    def _warm_start(self) -> None:
        """Model weights from ``train.init_from`` (the family's rules, see tts/warm_start.py), reported in the log
        and in ``init_report.json``."""
        report = init_from(self.model, self.family, self.symbols, self.config)
        if not self.group.is_main:
            return
        write_atomic(self.run_dir / "init_report.json", json.dumps(report.to_dict(), indent=1))
        log.info("%s", report.table())
        for warning in report.warnings:
            log.warning("warm start: %s", warning)

    def _frozen_parameters(self, prefixes: list[str]) -> list[torch.nn.Parameter]:
        """Parameters under the ``train.freeze_modules`` prefixes (a prefix names a module, e.g. ``encoder``)."""
        named = dict(self.model.named_parameters())
        frozen = []
        for prefix in prefixes:
            found = [p for n, p in named.items() if n == prefix or n.startswith(prefix + ".")]
            if not found:
                modules = sorted({n.rsplit(".", 1)[0] for n in named})
                raise TrainingError(f"train.freeze_modules: no module named {prefix!r}; modules with parameters: "
                                    f"{', '.join(modules)}")
            frozen += found
        return frozen

    def _set_frozen(self, frozen: bool) -> None:
        """Frozen parameters get no gradient, so AdamW leaves them (and their weight decay) alone."""
        changed = [p for p in self.frozen if p.requires_grad == frozen]
        for p in changed:
            p.requires_grad_(not frozen)
        if changed and not frozen:
            log.info("step %d: %s trainable again (train.freeze_steps)", self.step,
                     ", ".join(self.config.train.freeze_modules))

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self, collective: bool = True) -> dict:
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "controls": {"lr": self.lr, **self.loss_weights},
            "best_val_loss": self.best_val_loss,
            "elapsed": self.elapsed,
            "rollbacks": self.rollbacks,
            "config": self.config.to_dict(),
            "symbols": self.symbols.to_dict(),
            "mel_stats": self.stats.to_dict(),
            "hooks": {h.name: h.state_dict() for h in self.hooks},
            "rng": ckpt.rng_state(),
            # Every rank's RNG (a collective: every rank builds its state dict at the same step).
            "rng_ranks": self.group.gather(ckpt.rng_state()) if self.group.distributed and collective else None,
            "fingerprints": self._fingerprints() if self.group.distributed and collective else None,
        }

    def _fingerprints(self) -> list[str]:
        """Every rank's hash of its weights. Ranks in lock-step hold the same weights bit for bit; if they do not,
        the run stops here rather than train on with ranks that went apart."""
        digest = hashlib.sha256()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        found = self.group.gather(digest.hexdigest())
        if len(set(found)) > 1:
            raise TrainingError(f"step {self.step}: the ranks' weights differ (hashes {found}); they left "
                                f"lock-step, which is a bug: please report it with the run's events.jsonl")
        return found

    def _check_resume_config(self, state: dict, path: Path) -> None:
        """A resumed run may change what training does next (batch size, rate, steps, adapters), never what the
        checkpoint's model or features are (``model.*``, ``audio.*``, the corpus and its split: fixed settings)."""
        cannot, applied = resume_changes(state["config"], self.config)
        if cannot:
            raise TrainingError(f"--resume: {path} was trained with another model or features; these changes cannot "
                                f"apply to it: {'; '.join(cannot)}. Resume with the run's config "
                                f"({self.run_dir / 'config.yaml'}), or start a new --run-dir")
        for change in applied:
            log.info("resume: applying the changed setting %s", change)

    def _load(self, state: dict, path: Path) -> None:
        if SymbolTable.from_dict(state["symbols"]) != self.symbols:
            raise TrainingError(f"{path}: the corpus's symbol table differs from the checkpoint's; resume with "
                                f"the corpus the run started with")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.saved_step = self.step
        if state["config"]["train"]["batch_size"] != self.config.train.batch_size:
            self.batch_in_epoch = 0  # the epoch's batches are cut anew; start the epoch over
        self._load_rng(state)
        self.lr = state["controls"]["lr"]
        if state["config"]["train"]["lr"] != self.config.train.lr:
            self.lr = self.config.train.lr  # asked for explicitly: the new rate wins over the adapters' last one
        self.loss_weights.update((k, v) for k, v in state["controls"].items() if k in self.loss_weights)
        self.best_val_loss, self.elapsed, self.rollbacks = state["best_val_loss"], state["elapsed"], state["rollbacks"]
        self._set_lr(self.lr)
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.name])
        # Evaluations logged after the checkpoint belong to the lost future; the resumed run writes them again.
        if self.group.is_main:
            self._truncate_jsonl(self.run_dir / "metrics.jsonl")
            self._truncate_jsonl(self.run_dir / "events.jsonl")
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _load_rng(self, state: dict) -> None:
        """Each rank's own RNG state when the number of ranks is the one saved; else new streams, with a warning."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.group.world_size:
            ckpt.set_rng_state(ranks[self.group.rank])
            return
        ckpt.set_rng_state(state["rng"])
        self._seed_rank(self.step)
        if self.group.is_main:
            log.warning("resuming a checkpoint of %d rank(s) with %d: the global batch (train.batch_size), the data "
                        "order and the rate stay; each rank's share of a batch and the dropout streams change, so "
                        "the run does not continue exactly as it would have", len(ranks), self.group.world_size)

    def _seed_rank(self, offset: int = 0) -> None:
        """A dropout stream of this rank's own (ranks hold the same weights but must not draw the same masks)."""
        torch.manual_seed(self.config.train.seed + 1_000_003 * self.group.rank + offset)

    def _truncate_jsonl(self, path: Path) -> None:
        """Keep the records up to the checkpoint's step. A torn last line (the process died while writing it, before
        lines were written whole) is dropped with a warning; a broken line elsewhere is an error."""
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        keep = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    log.warning("%s:%d: dropped a torn last line (the process died while writing it)", path, number)
                    continue
                raise TrainingError(f"{path}:{number}: not a JSON record; repair or remove that line") from None
            if record["step"] <= self.step:
                keep.append(line)
        write_atomic(path, "".join(line + "\n" for line in keep))

    def save_checkpoint(self, name: str = "last.pt", collective: bool = True) -> Path:
        """Rank 0 writes; every rank calls it at the same step (``collective``: the group is still whole)."""
        path = self.ckpt_dir / name
        state = self.state_dict(collective)
        if self.group.is_main:
            ckpt.save_atomic(state, path)
        if name == "last.pt":
            self.saved_step = self.step
        return path

    def _snapshot(self) -> dict:
        """Model and optimizer state copied to CPU memory (the optimizer's learning rate is not part of it)."""
        def to_cpu(value):
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: to_cpu(v) for k, v in value.items()}
            if isinstance(value, list):
                return [to_cpu(v) for v in value]
            return value

        return {"step": self.step, "model": to_cpu(self.model.state_dict()),
                "optimizer": to_cpu(self.optimizer.state_dict())}

    @torch.no_grad()
    def _perturb(self) -> None:
        """``faults.perturb_at``: noise on every weight, the same on every rank (drawn from one seeded generator)."""
        scale = self.config.faults.perturb_scale
        generator = torch.Generator().manual_seed(self.config.train.seed * 1000003 + self.step)
        for parameter in self.model.parameters():
            if parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
                parameter.add_(noise * (scale * parameter.std()))
        log.warning("step %d: faults.perturb_at: noise of %g x each weight's standard deviation added to every "
                    "weight", self.step, scale)

    def _rollback(self, reason: str) -> None:
        if self.rollbacks >= self.config.adapters.max_rollbacks:
            raise TrainingError(f"rollback budget spent ({self.config.adapters.max_rollbacks} rollbacks, "
                                f"adapters.max_rollbacks) and another was needed: {reason}")
        self.rollbacks += 1
        self.model.load_state_dict(self.healthy["model"])
        self.optimizer.load_state_dict(self.healthy["optimizer"])
        self._set_lr(self.lr)  # the snapshot's optimizer state carries an old rate: the adapters' one stands
        self.alarm_since_snapshot = False
        self.eval_weights, self.eval_weights_step = self._flat_weights(), self.step
        log.warning("step %d: rolled back to the healthy state of step %d (%d of %d): %s", self.step + 1,
                    self.healthy["step"], self.rollbacks, self.config.adapters.max_rollbacks, reason)

    # ----------------------------------------------------------------------------------------- controls
    def _set_lr(self, value: float) -> None:
        self.lr = value
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def _apply(self, requests: list[tuple[Hook, Decision]], step: int) -> set[str]:
        """Resolve requests per control by hook priority, apply the winners, record every request."""
        actions: set[str] = set()
        by_control: dict[str, list[tuple[Hook, Decision]]] = {}
        for hook, decision in requests:
            if decision.control not in self.controls:
                raise TrainingError(f"hook {hook.name!r} asked for unknown control {decision.control!r}")
            by_control.setdefault(decision.control, []).append((hook, decision))
        for control, asks in by_control.items():
            winner = max(range(len(asks)), key=lambda i: asks[i][0].priority)  # ties: the first hook
            old = self.lr if control == "lr" else self.loss_weights.get(control)
            for i, (hook, decision) in enumerate(asks):
                applied = i == winner
                if applied:
                    if control == "lr":
                        self._set_lr(float(decision.value))
                    elif control in self.loss_weights:
                        self.loss_weights[control] = float(decision.value)
                    elif control == "rollback":
                        self._rollback(decision.reason)
                        actions.add(control)
                    else:
                        if control == "stop":
                            self.stop_reason = f"{hook.name}: {decision.reason}"
                        actions.add(control)
                self._record(Event(step, hook.name, control, old, decision.value, decision.reason,
                                   decision.trigger, applied, decision.alarm))
        return actions

    def _record(self, event: Event) -> None:
        if self.group.is_main:
            append_line(self.run_dir / "events.jsonl", json.dumps(event.to_dict()))
        if event.is_alarm:
            self.alarm_since_snapshot = True
        if event.applied:
            change = f" {event.old:.3g}>{event.new:.3g}" if event.old is not None and event.new is not None else ""
            self.last_event = f"{event.step}:{event.source} {event.control}{change}"
        for hook in self.hooks:
            hook.on_event(event)

    # ----------------------------------------------------------------------------------------- loop
    def _next_batch(self) -> Batch:
        """This rank's share of the sampler's next (global) batch. With several ranks, a batch smaller than the
        number of ranks (an epoch's remainder) is passed over by all of them."""
        while True:
            batches = self.sampler.epoch(self.epoch)
            if self.batch_in_epoch >= len(batches):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                continue
            indices = batches[self.batch_in_epoch]
            self.batch_in_epoch += 1
            if len(indices) >= self.group.world_size:
                break
        mine = indices[self.group.rank::self.group.world_size]
        return self.collate([self.data.train[i] for i in mine]).to(self.device)

    def _check_group_size(self) -> None:
        """Every rank needs a share of each batch and of the validation set."""
        ranks = self.group.world_size
        problems = [f"{what} ({value}) must be >= the number of ranks ({ranks})" for what, value in (
            ("train.batch_size, the global batch,", self.config.train.batch_size),
            ("the training set", len(self.data.train)), ("the validation set (data.val_size)", len(self.data.val)))
            if value < ranks]
        if problems:
            raise TrainingError("; ".join(problems))

    def train_step(self, batch: Batch) -> tuple[StepStats, bool]:
        """One forward/backward; returns the statistics and whether the update is safe to apply."""
        self.model.train()
        start = time.perf_counter()
        with self.autocast:
            out = self.family.training_forward(self.model, batch, self.loss_weights)
        step = self.step + 1
        here = self.config.faults.rank in (-1, self.group.rank)
        loss = out.total * float("nan") if here and step in self.faults["nan_loss"] else out.total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if here and step in self.faults["inf_grad"]:
            next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        if here and step in self.faults["hang"]:
            log.error("faults.hang_at: rank %d hangs at step %d", self.group.rank, step)
            while interrupts.requested() is None:  # hangs until a signal (torchrun's SIGTERM) ends the process
                time.sleep(0.2)
            os._exit(interrupts.exit_code(interrupts.requested()))
        if self.group.distributed:  # one all-reduce; a non-finite gradient on one rank is non-finite on all
            self.group.average_gradients(list(self.model.parameters()), list(self.model.buffers()))
        module_norms = [torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                        for params in self.module_params.values()]
        grad_norm = torch.nn.utils.get_total_norm(module_norms)
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.train.grad_clip, grad_norm)
        batch_diagonality = (diagonality(out.alignments.detach(), batch.text_lengths, out.alignment_lengths).mean()
                             if out.alignments is not None else loss.new_tensor(float("nan")))
        # What differs between ranks (losses, diagonality; with several ranks also the frames and a stop request)
        # is reduced in one all-reduce before any hook sees it; the gradient norms are already the same on every
        # rank. One host sync per step.
        names = list(out.losses)
        per_rank = torch.stack([loss.detach().float()] + [out.losses[k].detach().float() for k in names]
                               + [batch_diagonality.float()])
        frames = batch.frames
        if self.group.distributed:
            counts = per_rank.new_tensor([float(batch.frames), float(interrupts.requested() is not None)])
            per_rank = self.group.sum_(torch.cat([per_rank, counts]))
            per_rank[:-2] /= self.group.world_size
        values = torch.cat([per_rank, torch.stack([grad_norm.float()] + [n.float() for n in module_norms])]).tolist()
        loss_value, terms, diagonality_value = values[0], values[1:len(names) + 1], values[len(names) + 1]
        rest = values[len(names) + 2:]
        if self.group.distributed:
            frames, self.peer_stop, rest = int(rest[0]), rest[1] > 0, rest[2:]
        grad_value, module_values = rest[0], rest[1:]
        finite = all(math.isfinite(v) for v in [loss_value, *terms, grad_value])
        stats = StepStats(step, self.epoch, loss_value, dict(zip(names, terms)), grad_value, lr=self.lr,
                          loss_weights=dict(self.loss_weights), finite=finite,
                          step_time=time.perf_counter() - start, diagonality=diagonality_value,
                          module_grad_norms=dict(zip(self.module_params, module_values)), frames=frames)
        return stats, finite

    def _stop_signal(self) -> int | None:
        """The signal that stops the run at this step boundary. With several ranks, a signal any rank received in
        the last step (reduced with its statistics), so that all of them stop at the same step."""
        if not self.group.distributed:
            return interrupts.requested()
        return (interrupts.requested() or signal.SIGTERM) if self.peer_stop else None

    def _agree(self, requests: list[tuple[Hook, Decision]]) -> list[tuple[Hook, Decision]]:
        """Rank 0's hook requests, on every rank (the other ranks run no hooks)."""
        if not self.group.distributed:
            return requests
        shared = self.group.share([(h.name, h.priority, d) for h, d in requests])
        return requests if self.group.is_main else [(_Peer(name, priority), d) for name, priority, d in shared]

    def fit(self) -> TrainResult:
        cfg = self.config.train
        if self.group.is_main:
            write_atomic(self.run_dir / "config.yaml", to_yaml(self.config))
        info = RunInfo(self.run_dir, self.config.to_dict(), str(self.device), count_parameters(self.model),
                       len(self.data.train), len(self.data.val), self.step)
        for hook in self.hooks:
            hook.on_train_start(info)
        log.info("training %s parameters on %s: %d train / %d validation utterances, run dir %s",
                 f"{info.parameters:,}", self.device, info.train_size, info.val_size, self.run_dir)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train")
        last_eval: EvalStats | None = None
        status, reason = "completed", f"reached train.max_steps={cfg.max_steps}"
        since_eval = _SinceEval()
        whole = True  # the group of ranks can still do collectives
        try:
            while self.step < cfg.max_steps:
                signum = self._stop_signal()
                if signum is not None:  # a step boundary: last.pt is written at this step below
                    status, reason = "interrupted", f"interrupted by {signal.Signals(signum).name}"
                    break
                started = time.perf_counter()
                self._set_frozen(self.step < cfg.freeze_steps)
                batch = self._next_batch()
                stats, safe = self.train_step(batch)
                requests = self._agree([(h, d) for h in self.hooks for d in h.on_step(stats)])
                if not safe and not any(d.control == "skip_update" for _, d in requests):
                    # The trainer's own guard: non-finite values never reach the weights or the optimizer.
                    requests.append((_TRAINER, Decision("skip_update", None, "non-finite loss or gradient",
                                                        stats.grad_norm, alarm=True)))
                actions = self._apply(requests, stats.step)
                if not actions & {"skip_update", "rollback"}:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.step in self.faults["perturb"]:
                    self._perturb()
                self.elapsed += stats.step_time
                since_eval.add(stats, time.perf_counter() - started)
                bar.update(1)
                if last_eval is None or self.step % 10 == 0:
                    self._postfix(bar, stats, last_eval, since_eval, refresh=False)
                    self._share_cores()
                if "stop" in actions:
                    status, reason = "stopped", self.stop_reason
                    break
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    last_eval = self.evaluate(since_eval.mean_loss(), since_eval.frames_per_second(),
                                              since_eval.steps_per_second())
                    since_eval = _SinceEval()
                    self._write_metrics(last_eval)
                    requests = self._agree([(h, d) for h in self.hooks for d in h.on_eval(last_eval)])
                    actions = self._apply(requests, self.step)
                    if not self.alarm_since_snapshot and math.isfinite(last_eval.val_loss):
                        self.healthy = self._snapshot()
                    self.alarm_since_snapshot = False
                    if self.best_val_loss is None or last_eval.val_loss < self.best_val_loss:
                        self.best_val_loss = last_eval.val_loss
                        self.save_checkpoint("best.pt")
                    every = cfg.checkpoint_every or cfg.eval_every
                    if self.step % every == 0 or self.step == cfg.max_steps:
                        self.save_checkpoint("last.pt")
                    self._postfix(bar, stats, last_eval, since_eval)
                    if "stop" in actions:
                        status, reason = "stopped", self.stop_reason
                        break
                elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint("last.pt")
        except TrainingError as exc:
            status, reason = "failed", str(exc)
        except GroupError as exc:  # the other ranks are gone: no more collectives
            status, reason, whole = "failed", str(exc), False
        except DiskFullError as exc:
            status, reason = "failed", f"{exc.strerror}; {self._intact()}"
        finally:
            bar.close()
        try:
            if status != "completed" and not reason.startswith("no space left"):
                try:
                    self.save_checkpoint("last.pt", collective=whole)
                except DiskFullError as exc:
                    status, reason = "failed", f"{reason}; then {exc.strerror}; {self._intact()}"
            result = TrainResult(status, self.step, reason, self.run_dir, last_eval, self.best_val_loss)
            for hook in self.hooks:
                hook.on_train_end(result)
        finally:
            self.release()
        return result

    def _intact(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the previous checkpoint at step {self.saved_step} ({self.ckpt_dir / 'last.pt'}) is intact"

    def release(self) -> None:
        """Let another process write into the run directory, and leave the share of cores."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.core_share is not None:
            self.core_share.leave()
            self.core_share = None

    def _share_cores(self, announce: bool = True) -> None:
        """torch threads: ``train.num_threads``, or this run's share of the cores (see smart_tuner/cores.py)."""
        threads = self.config.train.num_threads or (self.core_share.threads() if self.core_share else 0)
        if threads and threads != torch.get_num_threads():
            if announce:
                log.info("step %d: %d torch threads (the machine's %d cores shared by %d smart_tuner processes)",
                         self.step, threads, self.core_share.cores, self.core_share.members())
            torch.set_num_threads(threads)

    def _postfix(self, bar: tqdm, stats: StepStats, last_eval: EvalStats | None, since_eval: _SinceEval,
                 refresh: bool = True) -> None:
        throughput = since_eval.frames_per_second() if since_eval.steps else last_eval.frames_per_second
        postfix = {"loss": f"{stats.loss:.3f}", "diag": f"{last_eval.diagonality:.2f}" if last_eval else "-",
                   "lr": f"{self.lr:.2e}", "mel/s": f"{throughput:.0f}"}
        if self.last_event:
            postfix["event"] = self.last_event
        bar.set_postfix(postfix, refresh=refresh)

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, train_loss: float = float("nan"), frames_per_second: float = float("nan"),
                 steps_per_second: float = float("nan")) -> EvalStats:
        """Teacher-forced losses and alignment on the validation set, then free-running alignment on a few
        validation sentences, then the preview payload. Runs under a forked RNG so that evaluating never changes
        the training run."""
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.config.train.seed + self.step)
            losses, teacher_forced, example = self._validate()
            free_running, free_mel = self._free_run()
        mels = {k: self.stats.denormalize(v.float().cpu()) for k, v in {**example["mels"], **free_mel}.items()}
        weights = self._flat_weights()
        steps = max(self.step - self.eval_weights_step, 1)
        weight_change = float((weights - self.eval_weights).norm() / self.eval_weights.norm().clamp_min(1e-12)) / steps
        self.eval_weights, self.eval_weights_step = weights, self.step
        return EvalStats(
            step=self.step, val_loss=sum(losses[k] for k in self.family.reconstruction_losses), val_losses=losses,
            **teacher_forced, **{f"infer_{k}": v for k, v in free_running.items()}, lr=self.lr,
            loss_weights=dict(self.loss_weights), train_loss=train_loss, elapsed=self.elapsed,
            frames_per_second=frames_per_second, steps_per_second=steps_per_second, weight_change=weight_change,
            alignment=example["alignment"], mels=mels)

    def _flat_weights(self) -> torch.Tensor:
        """Every weight in one flat copy on the device (for ``weight_change``; one copy per evaluation)."""
        return torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()])

    def _validate(self) -> tuple[dict[str, float], dict[str, float], dict]:
        """Mean losses and teacher-forced alignment metrics over the validation set, with one host sync; and the
        first sentence's alignment and mels, for previews."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        example: dict = {"alignment": None, "mels": {}}
        for indices in eval_batches(self.data.val, self.config.train.batch_size, self.group.rank,
                                    self.group.world_size):
            batch = self.collate([self.data.val[i] for i in indices]).to(self.device)
            with self.autocast:
                out = self.family.training_forward(self.model, batch, self.loss_weights)
            n = len(batch)
            measured = {k: v.detach().float() * n for k, v in out.losses.items()}
            measured.update({f"tf_{k}": v.sum() for k, v in self._alignment_metrics(
                out.alignments, batch.text_lengths, out.alignment_lengths, n).items()})
            for k, v in measured.items():
                sums[k] = sums.get(k, 0) + v
            count += n
            if not example["mels"]:
                frames = int(batch.mel_lengths[0])
                example["mels"] = {"target": batch.mel[0, :, :frames], "teacher_forced": out.prediction[0, :, :frames]}
                if out.alignments is not None:
                    steps, tokens = int(out.alignment_lengths[0]), int(batch.text_lengths[0])
                    example["alignment"] = out.alignments[0, :steps, :tokens].float().cpu()
        totals = self.group.sum_(torch.stack([*sums.values(), torch.tensor(float(count), device=self.device)]))
        means = dict(zip(sums, (totals[:-1] / totals[-1]).cpu().tolist()))  # one sync
        teacher_forced = {k: means.pop(f"tf_{k}") for k in METRICS}
        return means, teacher_forced, example

    def _free_run(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Free-running alignment metrics and stop rate on the first ``data.val_infer`` validation sentences (with
        several ranks, each decodes its share and the sums are reduced), and the first one's mel (cut at its stop)
        for previews."""
        count = min(self.config.data.val_infer, len(self.data.val))
        names = [*METRICS, "stop_rate"]
        if count == 0:
            return dict.fromkeys(names, 0.0), {}
        # Room for twice the longest true length: an item that never stops is measured over that span.
        multiple = self.family.frames_multiple
        limit = 2 * -(-max(self.data.val.frames[i] for i in range(count)) // multiple) * multiple
        mine = list(range(count))[self.group.rank::self.group.world_size]
        totals = torch.zeros(len(names) + 1, device=self.device)
        mel = {}
        if mine:
            batch = self.collate([self.data.val[i] for i in mine]).to(self.device)
            with self.autocast:
                out = self.family.synthesize(self.model, batch.text, batch.text_lengths, max_frames=limit)
            metrics = self._alignment_metrics(out.alignments, batch.text_lengths, out.alignment_lengths, len(mine))
            totals = torch.stack([v.float().sum() for v in metrics.values()]
                                 + [out.stopped.float().sum(), totals.new_tensor(float(len(mine)))])
            mel = {"free_running": out.mel[0, :, : int(out.mel_lengths[0])]}
        values = self.group.sum_(totals).cpu().tolist()
        return {k: v / values[-1] for k, v in zip(names, values)}, mel

    def _alignment_metrics(self, alignments: torch.Tensor | None, text_lengths: torch.Tensor,
                           steps: torch.Tensor | None, n: int) -> dict[str, torch.Tensor]:
        """Per-item alignment metrics; NaN for a family without attention."""
        if alignments is None:
            return {k: torch.full((n,), float("nan"), device=self.device) for k in METRICS}
        return alignment_metrics(alignments.float(), text_lengths, steps)

    def _write_metrics(self, stats: EvalStats) -> None:
        if self.group.is_main:
            append_line(self.run_dir / "metrics.jsonl", json.dumps(stats.to_dict()))


class _SinceEval:
    """What the steps since the last evaluation add up to: the mean finite training loss and the throughput."""

    def __init__(self) -> None:
        self.steps, self.frames, self.wall = 0, 0, 0.0
        self.losses: list[float] = []

    def add(self, stats: StepStats, wall: float) -> None:
        self.steps += 1
        self.frames += stats.frames
        self.wall += wall
        if stats.finite:
            self.losses.append(stats.loss)

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def frames_per_second(self) -> float:
        return self.frames / self.wall if self.wall > 0 else float("nan")

    def steps_per_second(self) -> float:
        return self.steps / self.wall if self.wall > 0 else float("nan")


class _TrainerSource(Hook):
    """Names the trainer as the source of its own safety decisions; it outranks every hook."""

    name = "trainer"
    priority = 1_000_000


_TRAINER = _TrainerSource()


class _Peer(Hook):
    """On ranks other than 0: the rank-0 hook a broadcast decision came from (its name and priority)."""

    def __init__(self, name: str, priority: int):
        self.name, self.priority = name, priority
