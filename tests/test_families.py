"""The model protocol: a second family, written here in a few lines, trains, evaluates, steers its own loss weight,
checkpoints and loads for inference through the same trainer, runner and watchers as Tacotron 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smart_tuner import tts
from smart_tuner.config import ConfigError, build_config
from smart_tuner.data.dataset import Batch
from smart_tuner.hooks import Decision, Hook
from smart_tuner.run_logs import read_events, read_metrics
from smart_tuner.train.runner import run_training
from smart_tuner.tts.alignment import length_mask
from smart_tuner.tts.base import ModelFamily, Synthesis, TrainingOutput
from smart_tuner.tts.inference import load_for_inference

from .conftest import tiny_config
from .stats import StepLog


class NextFrame(ModelFamily):
    """No attention: each frame is predicted from the previous one and the mean of the text's embeddings.
    Losses: ``mse`` (the reconstruction) and ``energy`` (mean squared prediction), weighted by ``energy_weight``."""

    name = "next_frame"
    reconstruction_losses = ("mse",)
    output_loss = "mse"

    def build(self, n_symbols: int) -> nn.Module:
        n_mels = self.config.audio.n_mels
        return nn.ModuleDict({"embedding": nn.Embedding(n_symbols, 8), "frame": nn.Linear(8 + n_mels, n_mels)})

    def loss_weights(self) -> dict[str, float]:
        return {"energy_weight": 0.5}

    def _predict(self, model: nn.Module, text: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        context = model["embedding"](text).mean(1)  # (B, 8)
        steps = previous.shape[-1]
        features = torch.cat([context[:, :, None].expand(-1, -1, steps), previous], 1)  # (B, 8 + M, T)
        return model["frame"](features.transpose(1, 2)).transpose(1, 2)

    def training_forward(self, model: nn.Module, batch: Batch, weights: dict[str, float]) -> TrainingOutput:
        previous = F.pad(batch.mel, (1, 0))[:, :, :-1]
        prediction = self._predict(model, batch.text, previous)
        mask = length_mask(batch.mel_lengths, batch.mel.shape[-1])[:, None, :]
        mse = (((prediction - batch.mel) ** 2) * mask).sum() / (mask.sum() * batch.mel.shape[1])
        energy = (prediction ** 2).mean()
        losses = {"mse": mse, "energy": energy}
        return TrainingOutput(losses, mse + weights["energy_weight"] * energy, prediction)

    def synthesize(self, model: nn.Module, text: torch.Tensor, text_lengths: torch.Tensor,
                   max_frames: int | None = None) -> Synthesis:
        frames = min(max_frames or 40, 40)
        mel = torch.zeros(text.shape[0], self.config.audio.n_mels, frames, device=text.device)
        for t in range(1, frames):  # a test family: a Python loop over 40 steps is fine here
            mel[:, :, t] = self._predict(model, text, mel[:, :, t - 1: t])[:, :, 0]
        lengths = torch.full((text.shape[0],), frames, dtype=torch.long, device=text.device)
        return Synthesis(mel, lengths, torch.zeros_like(lengths, dtype=torch.bool))


class SetEnergyWeight(Hook):
    name = "energy_setter"

    def on_step(self, stats):
        return [Decision("energy_weight", 0.0, "test", None)] if stats.step == 2 else []


@pytest.fixture
def next_frame_family(monkeypatch):
    monkeypatch.setitem(tts.FAMILIES, NextFrame.name, NextFrame)


def test_a_second_family_trains_through_the_same_trainer(next_frame_family, corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, model={"family": "next_frame"}, train={"max_steps": 6, "eval_every": 3})
    steps = StepLog()
    result = run_training(config, tmp_path / "run", extra_hooks=[SetEnergyWeight(), steps], progress=False)
    assert result.status == "completed" and result.step == 6

    # Its own losses and weight, nothing of Tacotron's.
    assert set(steps.steps[0].losses) == {"mse", "energy"} and steps.steps[0].loss_weights == {"energy_weight": 0.5}
    later = [s for s in steps.steps if s.step > 2]
    assert later and all(s.loss_weights == {"energy_weight": 0.0} for s in later)
    assert all(s.loss == pytest.approx(s.losses["mse"], rel=1e-6) for s in later)  # the weight reached the loss
    events = read_events(tmp_path / "run")
    assert [(e["source"], e["control"], e["old"], e["new"]) for e in events] == [
        ("energy_setter", "energy_weight", 0.5, 0.0)]

    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [3, 6]
    last = metrics[-1]
    assert last["val_loss"] == pytest.approx(last["val_mse"]) and "val_energy" in last and "val_postnet" not in last
    assert last["energy_weight"] == 0.0
    assert last["diagonality"] != last["diagonality"]  # NaN: no attention to measure
    assert last["free_running_stop_rate"] == 0.0

    # The preview writer rendered the mels (no alignment image without attention); the checkpoint stands alone.
    previews = sorted((tmp_path / "run" / "previews").iterdir())
    assert previews and (previews[-1] / "mel.png").is_file() and not (previews[-1] / "alignment.png").exists()
    loaded = load_for_inference(tmp_path / "run" / "checkpoints" / "last.pt")
    assert isinstance(loaded.family, NextFrame)
    ids = torch.tensor([loaded.symbols.encode("a short test.")])
    out = loaded.family.synthesize(loaded.model, ids, torch.tensor([ids.shape[1]]), max_frames=12)
    assert out.mel.shape == (1, config.audio.n_mels, 12) and out.alignments is None


def test_an_unknown_family_is_a_config_error(corpus_en, tmp_path):
    config = build_config({"model": {"family": "wavenet"}})
    with pytest.raises(ConfigError, match="model.family: unknown family 'wavenet'; choose one of tacotron2"):
        tts.build_family(config)
