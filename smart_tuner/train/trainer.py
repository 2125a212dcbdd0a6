"""The training loop. Reads top to bottom: set-up, resume, then one loop of

    forward -> loss -> backward -> gradient norm -> hooks decide -> optimizer step (unless skipped)
    every eval_every steps: validation (teacher-forced + free-running) -> hooks decide -> metrics.jsonl
    -> checkpoint (atomic)

The model comes from its family (smart_tuner.tts): the trainer asks it for the network, a training forward
(named losses, their weighted total, alignments) and free-running decoding, and never names a loss or a layer.
The trainer's :class:`~smart_tuner.train.controls.Controls` are the only writer of the learning rate and of the
family's steerable loss weights; hooks ask with :class:`~smart_tuner.hooks.Decision` objects and every request
becomes an event in ``events.jsonl``. The other rooms of training: the run directory (run_dir.py: lock, logs,
checkpoints, resume), deliberate faults (faults.py), the lock-step of several ranks (lockstep.py, distributed.py).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import Config
from ..cores import CoreShare
from ..data.dataset import Batch, BucketBatchSampler, Collate, PreparedData, length_grid, padded_length, prepare_data
from ..data.text import SymbolTable
from ..files import FULL, DiskFullError
from ..hooks import Decision, EvalStats, Hook, RunInfo, StepStats, TrainResult
from ..tts import build_family, count_parameters
from ..tts import checkpoint as ckpt
from ..tts.alignment import diagonality
from ..tts.inference import pick_device
from .controls import Controls
from .distributed import Group, GroupError
from .errors import TrainingError
from .faults import FaultPlan
from .finetune import Freezer, load_init_from
from .lockstep import LockStep
from .progress import Progress
from .run_dir import RunDir
from .since_eval import SinceEval
from .validation import Validation, WeightChange

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, config: Config, run_dir: str | Path, hooks: Sequence[Hook] = (), resume: bool = False,
                 data: PreparedData | None = None, progress: bool = True):
        self.config, cfg = config, config.train
        # Several ranks (torchrun): rank 0 alone runs the hooks, writes files and shows progress; see distributed.py.
        self.group = Group.from_env(cfg.dist_timeout)
        self.hooks = list(hooks) if self.group.is_main else []
        self.lockstep = LockStep(self.group)
        self.progress = progress and self.group.is_main
        self.run = RunDir(run_dir, self.group)
        self.run_dir = self.run.path
        self.core_share: CoreShare | None = None
        saved = self.run.open(resume, config)  # the checkpoint to resume from, checked against the config
        try:
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
            self.lockstep.check_shares(cfg.batch_size, len(self.data.train), len(self.data.val))
            self.symbols, self.stats = self.data.symbols, self.data.stats
            self.family = build_family(config)
            # A resumed run already holds the warm-started weights.
            self.model = self._build_model(warm=bool(cfg.init_from) and saved is None)
            self.freezer = Freezer(self.model, cfg.freeze_modules, cfg.freeze_steps)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                               weight_decay=cfg.weight_decay)
            self.sampler = BucketBatchSampler(self.data.train.frames, cfg.batch_size, cfg.seed)
            self.collate = self._collate(config.data.length_grid)
            self.validation = Validation(self.family, self.data.val, self.collate, self.device, self.autocast,
                                         self.group, cfg.batch_size, config.data.free_running_sentences)
            # Gradient norms are reported per top-level module (Tacotron 2: encoder, decoder, postnet).
            self.module_params = {name: list(module.parameters()) for name, module in self.model.named_children()}
            self.faults = FaultPlan(config.faults, self.group.rank, cfg.seed)
            self.controls = Controls(self.model, self.optimizer, cfg.lr, self.family.loss_weights(), self.hooks,
                                     self.run, config.adapters.max_rollbacks)
            # The loop position.
            self.step = self.epoch = self.batch_in_epoch = 0
            self.best_val_loss: float | None = None
            self.elapsed = 0.0
            if saved is not None:
                self._load(saved)
            self.controls.snapshot(self.step)  # where a rollback returns to, until the next healthy evaluation
            self.weight_change = WeightChange(self.model, self.step)
        except BaseException:
            self.release()
            raise

    # ----------------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        """Train up to ``train.max_steps``; a hook's stop, a signal or a failure ends the run earlier. However it
        ends, ``last.pt`` holds where it ended (unless the disk is full) and every hook hears the result."""
        cfg = self.config.train
        self.run.write_config(self.config)
        info = RunInfo(self.run_dir, self.config.to_dict(), str(self.device), count_parameters(self.model),
                       len(self.data.train), len(self.data.val), self.step)
        for hook in self.hooks:
            hook.on_train_start(info)
        log.info("training %s parameters on %s: %d train / %d validation utterances, run dir %s",
                 f"{info.parameters:,}", self.device, info.train_size, info.val_size, self.run_dir)
        self.since_eval = SinceEval()  # the steps since the last evaluation: its train_loss and throughput
        self.bar = Progress(cfg.max_steps, self.step, self.progress)
        self.last_eval: EvalStats | None = None
        status, reason = "completed", f"reached train.max_steps={cfg.max_steps}"
        failure: Exception | None = None  # what ended the run early, for _end to decide on last.pt
        try:
            while self.step < cfg.max_steps:
                signum = self.lockstep.stop_signal()
                if signum is not None:  # a step boundary: last.pt is written at this step below
                    status, reason = "interrupted", f"interrupted by {signal.Signals(signum).name}"
                    break
                if self._advance():
                    status, reason = "stopped", self.controls.stop_reason
                    break
        except (TrainingError, GroupError, DiskFullError) as exc:
            status, reason, failure = "failed", str(exc), exc
        finally:
            self.bar.close()
        return self._end(status, reason, failure)

    def _advance(self) -> bool:
        """One step, then the evaluation and checkpoint due after it; True when a hook stopped the run."""
        cfg = self.config.train
        started = time.perf_counter()
        self.freezer.before(self.step)
        stats = self.train_step(self._next_batch())
        requests = self.lockstep.agree([(h, d) for h in self.hooks for d in h.on_step(stats)])
        actions = self._apply(self.controls.guard(requests, stats), stats.step)
        if not actions & {"skip_update", "rollback"}:
            self.optimizer.step()
        # The one zeroing of a step: after the update is applied, skipped or rolled back, so that no gradient of this
        # step reaches the next one (and none is held through an evaluation).
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.faults.after_step(self.step, self.model)
        self.elapsed += stats.step_time
        self.since_eval.add(stats, time.perf_counter() - started)
        self.bar.update()
        if self.last_eval is None or self.step % 10 == 0:
            self.bar.show(stats, self.last_eval, self.controls.lr, self.controls.last_event, self.since_eval,
                          refresh=False)
            self._share_cores()
        if "stop" in actions:
            return True
        if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
            return self._evaluate_and_save(stats)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint("last.pt")
        return False

    def _evaluate_and_save(self, stats: StepStats) -> bool:
        """The evaluation, the hooks' decisions on it, the healthy snapshot and the checkpoints due; True when a
        hook stopped the run."""
        cfg, since, self.since_eval = self.config.train, self.since_eval, SinceEval()
        self.last_eval = self.evaluate(since.mean_loss(), since.frames_per_second(), since.steps_per_second())
        self.run.append_metrics(self.last_eval)
        actions = self._apply(self.lockstep.agree([(h, d) for h in self.hooks for d in h.on_eval(self.last_eval)]),
                              self.step)
        self.controls.after_eval(self.last_eval.val_loss, self.step)
        if self.best_val_loss is None or self.last_eval.val_loss < self.best_val_loss:
            self.best_val_loss = self.last_eval.val_loss
            self.save_checkpoint("best.pt")
        every = cfg.checkpoint_every or cfg.eval_every
        if self.step % every == 0 or self.step == cfg.max_steps:
            self.save_checkpoint("last.pt")
        self.bar.show(stats, self.last_eval, self.controls.lr, self.controls.last_event, self.since_eval)
        return "stop" in actions

    def _apply(self, requests: list[tuple[Hook, Decision]], step: int) -> set[str]:
        """The controls apply the requests; after a rollback, weight_change is measured from the restored weights."""
        actions = self.controls.apply(requests, step)
        if "rollback" in actions:
            self.weight_change.mark(self.step)
        return actions

    def _end(self, status: str, reason: str, failure: Exception | None) -> TrainResult:
        """``last.pt`` where the run ended (a completed run wrote it at its last evaluation), the hooks told, the
        directory and the cores left."""
        try:
            if isinstance(failure, GroupError):  # the other ranks are gone: no more collectives
                # A rank is gone: this rank's state lacks the others' (their RNG streams), so last.pt stays the last
                # checkpoint every rank wrote, and a restarted or resumed group continues exactly from there.
                reason = f"{reason}; {self.run.intact()}, the last one every rank wrote"
            elif isinstance(failure, OSError) and failure.errno in FULL:  # a second save would fail the same way
                reason = f"{reason}; {self.run.intact()}"
            elif status != "completed":
                try:
                    self.save_checkpoint("last.pt")
                except DiskFullError as exc:
                    status, reason = "failed", f"{reason}; then {exc.strerror}; {self.run.intact()}"
            result = TrainResult(status, self.step, reason, self.run_dir, self.last_eval, self.best_val_loss)
            for hook in self.hooks:
                hook.on_train_end(result)
        finally:
            self.release()
        return result

    def train_step(self, batch: Batch) -> StepStats:
        """One forward/backward into zeroed gradients (the caller applies or discards them, then zeroes them); the
        step's statistics, ``finite`` among them."""
        self.model.train()
        start = time.perf_counter()
        with self.autocast:
            out = self.family.training_forward(self.model, batch, self.controls.loss_weights)
        step = self.step + 1
        loss = self.faults.after_loss(step, out.total)
        loss.backward()
        self.faults.after_gradients(step, self.model)
        if self.group.distributed:  # one all-reduce; a non-finite gradient on one rank is non-finite on all
            self.group.average_gradients(list(self.model.parameters()), list(self.model.buffers()))
        module_norms = [torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                        for params in self.module_params.values()]
        grad_norm = torch.nn.utils.get_total_norm(module_norms)
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.train.grad_clip, grad_norm)
        batch_diagonality = (diagonality(out.alignments.detach(), batch.text_lengths, out.alignment_lengths).mean()
                             if out.alignments is not None else loss.new_tensor(float("nan")))
        values = self.lockstep.reduce_step(loss, out.losses, batch_diagonality, batch.frames, grad_norm, module_norms)
        stats = StepStats(step, self.epoch, values.loss, values.losses, values.grad_norm, lr=self.controls.lr,
                          loss_weights=dict(self.controls.loss_weights), finite=values.finite,
                          step_time=time.perf_counter() - start, diagonality=values.diagonality,
                          module_grad_norms=dict(zip(self.module_params, values.module_norms)), frames=values.frames)
        return stats

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
            losses, teacher_forced, example = self.validation.teacher_forced(self.model, self.controls.loss_weights)
            free_running, free_mel = self.validation.free_running(self.model)
        mels = {k: self.stats.denormalize(v.float().cpu()) for k, v in {**example["mels"], **free_mel}.items()}
        return EvalStats(
            step=self.step, val_loss=sum(losses[k] for k in self.family.reconstruction_losses), val_losses=losses,
            **teacher_forced, **{f"free_running_{k}": v for k, v in free_running.items()}, lr=self.controls.lr,
            loss_weights=dict(self.controls.loss_weights), train_loss=train_loss, elapsed=self.elapsed,
            frames_per_second=frames_per_second, steps_per_second=steps_per_second,
            weight_change=self.weight_change.measure(self.step),
            alignment=example["alignment"], mels=mels)

    # ----------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """What ``last.pt`` and ``best.pt`` hold (with several ranks a collective: every rank's RNG state)."""
        return {
            "format": ckpt.FORMAT, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "controls": self.controls.values(), "best_val_loss": self.best_val_loss, "elapsed": self.elapsed,
            "rollbacks": self.controls.rollbacks, "config": self.config.to_dict(), "symbols": self.symbols.to_dict(),
            "mel_stats": self.stats.to_dict(), "hooks": {h.name: h.state_dict() for h in self.hooks},
            "rng": ckpt.rng_state(), "rng_ranks": self.lockstep.rng_states(),
            "fingerprints": (self.lockstep.fingerprints(self.model, self.step)
                             if self.group.distributed else None),
        }

    def save_checkpoint(self, name: str = "last.pt") -> Path:
        """Rank 0 writes; every rank calls it at the same step."""
        return self.run.save_checkpoint(name, self.state_dict())

    def _load(self, state: dict) -> None:
        if SymbolTable.from_dict(state["symbols"]) != self.symbols:
            raise TrainingError(f"{self.run.last}: the corpus's symbol table differs from the checkpoint's; resume "
                                f"with the corpus the run started with")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if state["config"]["train"]["batch_size"] != self.config.train.batch_size:
            self.batch_in_epoch = 0  # the epoch's batches are cut anew; start the epoch over
        self.lockstep.restore_rng(state, self.config.train.seed, self.step)
        # A rate asked for explicitly wins over the adapters' last one.
        changed_lr = state["config"]["train"]["lr"] != self.config.train.lr
        self.controls.load(state["controls"], state["rollbacks"], self.config.train.lr if changed_lr else None)
        self.best_val_loss, self.elapsed = state["best_val_loss"], state["elapsed"]
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.name])
        self.run.resumed(self.step)

    def release(self) -> None:
        """Let another process write into the run directory, and leave the share of cores."""
        self.run.release()
        if self.core_share is not None:
            self.core_share.leave()
            self.core_share = None

    # ----------------------------------------------------------------------------------------- set-up
    def _build_model(self, warm: bool) -> torch.nn.Module:
        """The family's network on the device, warm-started from ``train.init_from`` (see tts/warm_start.py, and
        ``init_report.json``), with rank 0's weights on every rank but each rank its own dropout stream."""
        model = self.family.build(len(self.symbols)).to(self.device)
        if warm:
            load_init_from(model, self.family, self.symbols, self.config, self.run_dir if self.group.is_main else None)
        self.group.broadcast_parameters(model)
        if self.group.distributed:
            self.lockstep.seed_rank(self.config.train.seed)
        return model

    def _collate(self, grid_size: int) -> Collate:
        """The batch maker; with ``data.length_grid`` the padded lengths come from a grid, and the log says what
        that padding costs over an epoch against padding each batch to its own longest item."""
        multiple = self.family.frames_multiple
        if not grid_size:
            return Collate(self.symbols.pad_id, self.stats.pad_value, multiple)
        train = self.data.train
        frame_grid = length_grid(train.frames, grid_size, multiple)
        text_grid = length_grid([len(t) for t in train.encoded], grid_size)
        batches = [(len(b), max(train.frames[i] for i in b)) for b in self.sampler.epoch(0)]  # (items, longest)
        real = sum(train.frames)
        on_grid, per_batch = (sum(n * padded_length(longest, grid, multiple) for n, longest in batches)
                              for grid in (frame_grid, None))  # what Collate pads to, with the grid and without
        log.info("static shapes: frames padded to one of %s, text to one of %s; padded frames over an epoch: "
                 "+%.1f%% (+%.1f%% padding each batch to its longest)", frame_grid, text_grid,
                 100 * (on_grid / real - 1), 100 * (per_batch / real - 1))
        return Collate(self.symbols.pad_id, self.stats.pad_value, multiple, frame_grid, text_grid)

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
        return self.collate([self.data.train.item(i, self.epoch) for i in mine]).to(self.device)

    def _share_cores(self, announce: bool = True) -> None:
        """torch threads: ``train.num_threads``, or this run's share of the cores (see smart_tuner/cores.py)."""
        threads = self.config.train.num_threads or (self.core_share.threads() if self.core_share else 0)
        if threads and threads != torch.get_num_threads():
            if announce:
                log.info("step %d: %d torch threads (the machine's %d cores shared by %d smart_tuner processes)",
                         self.step, threads, self.core_share.cores, self.core_share.members())
            torch.set_num_threads(threads)
