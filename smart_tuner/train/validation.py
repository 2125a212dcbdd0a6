"""Measurements on the validation set: teacher-forced losses and alignment over all of it, free-running
alignment and stop rate on its first ``data.free_running_sentences`` sentences, and the first sentence's mels and
alignment for previews. With several ranks each measures its share and the sums are reduced, one all-reduce each."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from ..data.dataset import Collate, MelTextDataset, eval_batches
from ..tts.alignment import METRICS, alignment_metrics
from ..tts.base import ModelFamily
from .distributed import Group


class Validation:
    def __init__(self, family: ModelFamily, val: MelTextDataset, collate: Collate, device: torch.device,
                 autocast: AbstractContextManager, group: Group, batch_size: int, free_running_sentences: int):
        self.family, self.val, self.collate, self.device, self.autocast = family, val, collate, device, autocast
        self.group, self.batch_size, self.free_running_sentences = group, batch_size, free_running_sentences

    def teacher_forced(self, model: torch.nn.Module, loss_weights: dict[str, float]
                       ) -> tuple[dict[str, float], dict[str, float], dict]:
        """Mean losses and teacher-forced alignment metrics over the validation set, with one host sync; and the
        first sentence's alignment and mels, for previews."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        example: dict = {"alignment": None, "mels": {}}
        for indices in eval_batches(self.val, self.batch_size, self.group.rank, self.group.world_size):
            batch = self.collate([self.val[i] for i in indices]).to(self.device)
            with self.autocast:
                out = self.family.training_forward(model, batch, loss_weights)
            n = len(batch)
            measured = {k: v.detach().float() * n for k, v in out.losses.items()}
            measured.update({f"teacher_forced_{k}": v.sum() for k, v in self._alignment_metrics(
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
        teacher_forced = {k: means.pop(f"teacher_forced_{k}") for k in METRICS}
        return means, teacher_forced, example

    def free_running(self, model: torch.nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Free-running alignment metrics and stop rate on the first ``data.free_running_sentences`` validation
        sentences (with several ranks, each decodes its share and the sums are reduced), and the first one's mel (cut
        at its stop) for previews."""
        count = min(self.free_running_sentences, len(self.val))
        names = [*METRICS, "stop_rate"]
        if count == 0:  # not measured: NaN, which every reader (adapters, objective, trackers) leaves out
            return dict.fromkeys(names, float("nan")), {}
        # Room for twice the longest true length: an item that never stops is measured over that span.
        multiple = self.family.frames_multiple
        limit = 2 * -(-max(self.val.frames[i] for i in range(count)) // multiple) * multiple
        mine = list(range(count))[self.group.rank::self.group.world_size]
        totals = torch.zeros(len(names) + 1, device=self.device)
        mel = {}
        if mine:
            batch = self.collate([self.val[i] for i in mine]).to(self.device)
            with self.autocast:
                out = self.family.synthesize(model, batch.text, batch.text_lengths, max_frames=limit)
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


class WeightChange:
    """``EvalStats.weight_change``: ||w - w_prev|| / ||w_prev|| over every weight, divided by the steps in between,
    ``w_prev`` as of the previous evaluation (or the start, or a rollback). One flat copy on the device each time."""

    def __init__(self, model: torch.nn.Module, step: int):
        self.model = model
        self.mark(step)

    def mark(self, step: int) -> None:
        """Measure from the weights as they are now."""
        self.weights, self.step = self._flat(), step

    def measure(self, step: int) -> float:
        weights = self._flat()
        steps = max(step - self.step, 1)
        change = float((weights - self.weights).norm() / self.weights.norm().clamp_min(1e-12)) / steps
        self.weights, self.step = weights, step
        return change

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()])
