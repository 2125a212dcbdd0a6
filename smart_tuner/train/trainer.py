"""The training loop. Reads top to bottom: set-up, resume, then one loop of

    forward -> loss -> backward -> gradient norm -> hooks decide -> optimizer step (unless skipped)
    every eval_every steps: validation (teacher-forced + free-running) -> hooks decide -> metrics.jsonl
    -> checkpoint (atomic)

The trainer is the only writer of the learning rate and the guided-attention weight; hooks ask with
:class:`~smart_tuner.hooks.Decision` objects and every request becomes an event in ``events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from ..tts.alignment import alignment_metrics, diagonality
from ..config import Config, from_dict, to_yaml
from ..data.dataset import Batch, BucketBatchSampler, Collate, MelStats, PreparedData, eval_batches, prepare_data
from ..data.text import SymbolTable
from ..hooks import CONTROLS, Decision, EvalStats, Event, Hook, RunInfo, StepStats, TrainResult
from ..tts.tacotron2 import Tacotron2, Tacotron2Loss, count_parameters, decoder_steps

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name!r} but CUDA is not available here; use auto or cpu")
    return device


class Trainer:
    def __init__(self, config: Config, run_dir: str | Path, hooks: Sequence[Hook] = (), resume: bool = False,
                 data: PreparedData | None = None, progress: bool = True):
        self.config, self.run_dir, self.hooks, self.progress = config, Path(run_dir), list(hooks), progress
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last}")
        if not resume and last.is_file():
            raise TrainingError(f"{self.run_dir} already holds a run (checkpoints/last.pt): pass --resume to "
                                f"continue it, or choose another --run-dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)

        cfg = config.train
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" and cfg.bf16 else nullcontext())
        torch.manual_seed(cfg.seed)

        self.data = data or prepare_data(config, self.run_dir)
        self.symbols: SymbolTable = self.data.symbols
        self.stats: MelStats = self.data.stats
        self.model = Tacotron2(len(self.symbols), config.audio.n_mels, config.model).to(self.device)
        self.criterion = Tacotron2Loss(config.loss, config.model.r).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           weight_decay=cfg.weight_decay)
        self.collate = Collate(self.symbols.pad_id, self.stats.pad_value, config.model.r)
        self.sampler = BucketBatchSampler(self.data.train.frames, cfg.batch_size, cfg.seed)
        # Gradient norms are reported per top-level module (encoder, decoder, postnet).
        self.module_params = {name: list(module.parameters()) for name, module in self.model.named_children()}
        self.faults = {"nan_loss": set(config.faults.nan_loss_at), "inf_grad": set(config.faults.inf_grad_at)}

        # The controls the trainer alone writes, and the loop position.
        self.lr = cfg.lr
        self.ga_weight = config.loss.ga_weight
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val_loss: float | None = None
        self.elapsed = 0.0
        self.rollbacks = 0
        self.stop_reason = ""
        self.last_event = ""  # shown next to the progress bar
        if resume:
            self._load(last)
        # The last healthy state, in memory: where a rollback returns to. Refreshed at each evaluation that
        # follows a stretch without alarms (emergencies, skipped updates, rollbacks).
        self.healthy = self._snapshot()
        self.alarm_since_snapshot = False

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "controls": {"lr": self.lr, "ga_weight": self.ga_weight},
            "best_val_loss": self.best_val_loss,
            "elapsed": self.elapsed,
            "rollbacks": self.rollbacks,
            "config": self.config.to_dict(),
            "symbols": self.symbols.to_dict(),
            "mel_stats": self.stats.to_dict(),
            "hooks": {h.name: h.state_dict() for h in self.hooks},
            "rng": ckpt.rng_state(),
        }

    def _load(self, path: Path) -> None:
        state = ckpt.load(path, map_location=self.device)
        if state["symbols"] != self.symbols.to_dict():
            raise TrainingError(f"{path}: the corpus's symbol table differs from the checkpoint's; resume with "
                                f"the corpus the run started with")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.lr, self.ga_weight = state["controls"]["lr"], state["controls"]["ga_weight"]
        self.best_val_loss, self.elapsed, self.rollbacks = state["best_val_loss"], state["elapsed"], state["rollbacks"]
        self._set_lr(self.lr)
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.name])
        ckpt.set_rng_state(state["rng"])
        # Evaluations logged after the checkpoint belong to the lost future; the resumed run writes them again.
        self._truncate_jsonl(self.run_dir / "metrics.jsonl")
        self._truncate_jsonl(self.run_dir / "events.jsonl")
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _truncate_jsonl(self, path: Path) -> None:
        if path.is_file():
            keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def save_checkpoint(self, name: str = "last.pt") -> Path:
        path = self.ckpt_dir / name
        ckpt.save_atomic(self.state_dict(), path)
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

    def _rollback(self, reason: str) -> None:
        if self.rollbacks >= self.config.adapters.max_rollbacks:
            raise TrainingError(f"rollback budget spent ({self.config.adapters.max_rollbacks} rollbacks, "
                                f"adapters.max_rollbacks) and another was needed: {reason}")
        self.rollbacks += 1
        self.model.load_state_dict(self.healthy["model"])
        self.optimizer.load_state_dict(self.healthy["optimizer"])
        self._set_lr(self.lr)  # the snapshot's optimizer state carries an old rate: the adapters' one stands
        self.alarm_since_snapshot = False
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
            if decision.control not in CONTROLS:
                raise TrainingError(f"hook {hook.name!r} asked for unknown control {decision.control!r}")
            by_control.setdefault(decision.control, []).append((hook, decision))
        for control, asks in by_control.items():
            winner = max(range(len(asks)), key=lambda i: asks[i][0].priority)  # ties: the first hook
            old = {"lr": self.lr, "ga_weight": self.ga_weight}.get(control)
            for i, (hook, decision) in enumerate(asks):
                applied = i == winner
                if applied:
                    if control == "lr":
                        self._set_lr(float(decision.value))
                    elif control == "ga_weight":
                        self.ga_weight = float(decision.value)
                    elif control == "rollback":
                        self._rollback(decision.reason)
                        actions.add(control)
                    else:
                        if control == "stop":
                            self.stop_reason = f"{hook.name}: {decision.reason}"
                        actions.add(control)
                self._record(Event(step, hook.name, control, old, decision.value, decision.reason,
                                   decision.trigger, applied))
        return actions

    def _record(self, event: Event) -> None:
        with open(self.run_dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")
        if event.is_alarm:
            self.alarm_since_snapshot = True
        if event.applied:
            change = f" {event.old:.3g}>{event.new:.3g}" if event.old is not None and event.new is not None else ""
            self.last_event = f"{event.step}:{event.source} {event.control}{change}"
        for hook in self.hooks:
            hook.on_event(event)

    # ----------------------------------------------------------------------------------------- loop
    def _next_batch(self) -> Batch:
        batches = self.sampler.epoch(self.epoch)
        if self.batch_in_epoch >= len(batches):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            batches = self.sampler.epoch(self.epoch)
        indices = batches[self.batch_in_epoch]
        self.batch_in_epoch += 1
        return self.collate([self.data.train[i] for i in indices]).to(self.device)

    def train_step(self, batch: Batch) -> tuple[StepStats, bool]:
        """One forward/backward; returns the statistics and whether the update is safe to apply."""
        self.model.train()
        start = time.perf_counter()
        with self.autocast:
            out = self.model(batch.text, batch.text_lengths, batch.mel)
        losses = self.criterion(out, batch.mel, batch.mel_lengths, batch.gate, batch.text_lengths, self.ga_weight)
        step = self.step + 1
        loss = losses["loss"] * float("nan") if step in self.faults["nan_loss"] else losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step in self.faults["inf_grad"]:
            next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        module_norms = [torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                        for params in self.module_params.values()]
        grad_norm = torch.nn.utils.get_total_norm(module_norms)
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.train.grad_clip, grad_norm)
        batch_diagonality = diagonality(out.alignments.detach(), batch.text_lengths,
                                        decoder_steps(batch.mel_lengths, self.config.model.r)).mean()
        # One host sync per step for all statistics together.
        values = torch.stack([loss.detach().float()]
                             + [losses[k].detach().float() for k in ("mel", "postnet", "gate", "ga")]
                             + [grad_norm.float(), batch_diagonality] + [n.float() for n in module_norms]).tolist()
        finite = all(math.isfinite(v) for v in values[:6])
        stats = StepStats(step, self.epoch, *values[:6], lr=self.lr, ga_weight=self.ga_weight, finite=finite,
                          step_time=time.perf_counter() - start, diagonality=values[6],
                          module_grad_norms=dict(zip(self.module_params, values[7:])))
        return stats, finite

    def fit(self) -> TrainResult:
        cfg = self.config.train
        (self.run_dir / "config.yaml").write_text(to_yaml(self.config), encoding="utf-8")
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
        losses_since_eval: list[float] = []
        try:
            while self.step < cfg.max_steps:
                batch = self._next_batch()
                stats, safe = self.train_step(batch)
                requests = [(h, d) for h in self.hooks for d in h.on_step(stats)]
                if not safe and not any(d.control == "skip_update" for _, d in requests):
                    # The trainer's own guard: non-finite values never reach the weights or the optimizer.
                    requests.append((_TRAINER, Decision("skip_update", None, "non-finite loss or gradient",
                                                        stats.grad_norm)))
                actions = self._apply(requests, stats.step)
                if not actions & {"skip_update", "rollback"}:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.elapsed += stats.step_time
                if stats.finite:
                    losses_since_eval.append(stats.loss)
                bar.update(1)
                if last_eval is None or self.step % 10 == 0:
                    self._postfix(bar, stats, last_eval, refresh=False)
                if "stop" in actions:
                    status, reason = "stopped", self.stop_reason
                    break
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    last_eval = self.evaluate(sum(losses_since_eval) / max(len(losses_since_eval), 1))
                    losses_since_eval = []
                    self._write_metrics(last_eval)
                    requests = [(h, d) for h in self.hooks for d in h.on_eval(last_eval)]
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
                    self._postfix(bar, stats, last_eval)
                    if "stop" in actions:
                        status, reason = "stopped", self.stop_reason
                        break
                elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint("last.pt")
        except TrainingError as exc:
            status, reason = "failed", str(exc)
        finally:
            bar.close()
        if status != "completed":
            self.save_checkpoint("last.pt")
        result = TrainResult(status, self.step, reason, self.run_dir, last_eval, self.best_val_loss)
        for hook in self.hooks:
            hook.on_train_end(result)
        return result

    def _postfix(self, bar: tqdm, stats: StepStats, last_eval: EvalStats | None, refresh: bool = True) -> None:
        postfix = {"loss": f"{stats.loss:.3f}", "diag": f"{last_eval.diagonality:.2f}" if last_eval else "-",
                   "lr": f"{self.lr:.2e}"}
        if self.last_event:
            postfix["event"] = self.last_event
        bar.set_postfix(postfix, refresh=refresh)

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, train_loss: float = float("nan")) -> EvalStats:
        """Teacher-forced losses and alignment on the validation set, then free-running alignment on a few
        validation sentences. Runs under a forked RNG so that evaluating never changes the training run."""
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.config.train.seed + self.step)
            totals: dict[str, torch.Tensor] = {}
            metric_sums: dict[str, torch.Tensor] = {}
            count = 0
            example = None
            mels: dict[str, torch.Tensor] = {}
            for indices in eval_batches(self.data.val, self.config.train.batch_size):
                batch = self.collate([self.data.val[i] for i in indices]).to(self.device)
                with self.autocast:
                    out = self.model(batch.text, batch.text_lengths, batch.mel)
                losses = self.criterion(out, batch.mel, batch.mel_lengths, batch.gate, batch.text_lengths,
                                        self.ga_weight)
                n = len(batch)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0) + v.detach().float() * n
                dec_len = decoder_steps(batch.mel_lengths, self.config.model.r)
                for k, v in alignment_metrics(out.alignments.float(), batch.text_lengths, dec_len).items():
                    metric_sums[k] = metric_sums.get(k, 0) + v.sum()
                count += n
                if example is None:
                    example = out.alignments[0, : int(dec_len[0]), : int(batch.text_lengths[0])].float().cpu()
                    frames = int(batch.mel_lengths[0])
                    mels = {"target": batch.mel[0, :, :frames], "teacher_forced": out.mel_postnet[0, :, :frames]}
            infer = self._infer_metrics(mels)
            mels = {k: self.stats.denormalize(v.float().cpu()) for k, v in mels.items()}
        keys = list(totals) + list(metric_sums)
        means = (torch.stack([*totals.values(), *metric_sums.values()]) / count).cpu().tolist()  # one sync
        val = dict(zip(keys[: len(totals)], means[: len(totals)]))
        metrics = dict(zip(keys[len(totals):], means[len(totals):]))
        return EvalStats(
            step=self.step, val_loss=val["mel"] + val["postnet"] + val["gate"], val_mel=val["mel"],
            val_postnet=val["postnet"], val_gate=val["gate"], val_ga=val["ga"], **metrics,
            **{f"infer_{k}": v for k, v in infer.items()}, lr=self.lr, ga_weight=self.ga_weight,
            train_loss=train_loss, elapsed=self.elapsed, alignment=example, mels=mels)

    def _infer_metrics(self, mels: dict[str, torch.Tensor]) -> dict[str, float]:
        """Free-running alignment metrics; adds the first sentence's mel to ``mels`` (for previews)."""
        count = min(self.config.data.val_infer, len(self.data.val))
        if count == 0:
            return {"diagonality": 0.0, "focus": 0.0, "monotonicity": 0.0, "coverage": 0.0, "stop_rate": 0.0}
        batch = self.collate([self.data.val[i] for i in range(count)]).to(self.device)
        # Enough steps for twice the true length: an item that never stops is measured over that span.
        max_steps = min(self.config.model.max_decoder_steps,
                        int(decoder_steps(batch.mel_lengths.max(), self.config.model.r)) * 2)
        with self.autocast:
            out = self.model.infer(batch.text, batch.text_lengths, max_steps=max_steps)
        stopped = out.dec_lengths < max_steps
        mels["free_running"] = out.mel_postnet[0, :, : int(out.dec_lengths[0]) * self.config.model.r]
        metrics = alignment_metrics(out.alignments.float(), batch.text_lengths, out.dec_lengths)
        values = torch.stack([v.mean() for v in metrics.values()] + [stopped.float().mean()]).cpu().tolist()
        return dict(zip(list(metrics) + ["stop_rate"], values))

    def _write_metrics(self, stats: EvalStats) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(stats.to_dict()) + "\n")


class _TrainerSource(Hook):
    """Names the trainer as the source of its own safety decisions; it outranks every hook."""

    name = "trainer"
    priority = 1_000_000


_TRAINER = _TrainerSource()


def load_for_inference(path: str | Path, device: str = "cpu") -> tuple[Tacotron2, SymbolTable, MelStats, Config]:
    """A trained model from a checkpoint alone: no corpus needed (symbols and mel statistics are inside)."""
    state = ckpt.load(path, map_location=device)
    config = from_dict(state["config"])
    symbols = SymbolTable.from_dict(state["symbols"])
    model = Tacotron2(len(symbols), config.audio.n_mels, config.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, symbols, MelStats.from_dict(state["mel_stats"]), config
