"""Real training runs on small real corpora: loss goes down, resume is exact, hooks steer the controls, a full disk
ends a run once."""

from __future__ import annotations

import errno
import math
import shutil
import subprocess

import pytest
import torch

from smart_tuner.files import DiskFullError
from smart_tuner.hooks import Decision, Hook
from smart_tuner.run_logs import read_events, read_metrics
from smart_tuner.train.trainer import Trainer, TrainingError
from smart_tuner.tts.checkpoint import load as load_checkpoint
from smart_tuner.tts.inference import load_for_inference

from .conftest import require, tiny_config


class Recorder(Hook):
    name = "recorder"

    def __init__(self):
        self.steps = []
        self.evals = []
        self.events = []

    def on_step(self, stats):
        self.steps.append(stats)
        return []

    def on_eval(self, stats):
        self.evals.append(stats)
        return []

    def on_event(self, event):
        self.events.append(event)


@pytest.mark.slow
def test_short_training_lowers_the_loss(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, preset="demo",
                         model={"embedding_dim": 32, "encoder_channels": 32, "encoder_lstm_dim": 16,
                                "attention_rnn_dim": 64, "decoder_rnn_dim": 64, "attention_dim": 32},
                         train={"max_steps": 60, "eval_every": 10, "lr": 2e-3})
    recorder = Recorder()
    trainer = Trainer(config, tmp_path / "run", hooks=[recorder], progress=False)
    result = trainer.fit()
    assert result.status == "completed" and result.step == 60
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [10, 20, 30, 40, 50, 60]
    def window_mean(key, steps):
        return sum(s.scalars()[key] for s in steps) / len(steps)

    # Training loss falls; mel loss itself falls only once attention aligns (see benchmarks/align_demo.py).
    assert window_mean("loss", recorder.steps[-10:]) < 0.8 * window_mean("loss", recorder.steps[:10])
    assert window_mean("gate", recorder.steps[-10:]) < 0.5 * window_mean("gate", recorder.steps[:10])
    assert metrics[-1]["val_gate"] < metrics[0]["val_gate"]
    for key in ("diagonality", "focus", "monotonicity", "coverage", "free_running_diagonality", "lr", "val_mel",
                "frames_per_second", "steps_per_second"):
        assert all(0 <= m[key] < math.inf for m in metrics), key
    # Throughput counts real (unpadded) frames: the first step's are those of the first batch's utterances.
    first_batch = trainer.sampler.epoch(0)[0]
    assert recorder.steps[0].frames == sum(trainer.data.train.frames[i] for i in first_batch)
    assert all(m["frames_per_second"] > 0 for m in metrics)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_continues_exactly(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 12, "eval_every": 4})
    full = Recorder()
    Trainer(config, tmp_path / "full", hooks=[full], progress=False).fit()

    first_part = tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4})
    Trainer(first_part, tmp_path / "split", progress=False).fit()
    resumed = Recorder()
    result = Trainer(config, tmp_path / "split", hooks=[resumed], resume=True, progress=False).fit()

    assert result.step == 12
    assert [s.step for s in resumed.steps] == [9, 10, 11, 12]
    assert [s.loss for s in resumed.steps] == [s.loss for s in full.steps[8:]]
    assert [s.grad_norm for s in resumed.steps] == [s.grad_norm for s in full.steps[8:]]
    split_metrics = read_metrics(tmp_path / "split")
    full_metrics = read_metrics(tmp_path / "full")
    assert [m["step"] for m in split_metrics] == [4, 8, 12]
    assert split_metrics[-1]["val_loss"] == full_metrics[-1]["val_loss"]


def test_refuses_to_overwrite_or_resume_nothing(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 4})
    Trainer(config, tmp_path / "run", progress=False).fit()
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(config, tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(config, tmp_path / "empty", resume=True, progress=False)


class AskLr(Hook):
    def __init__(self, name, priority, value, at_step):
        self.name, self.priority, self.value, self.at_step = name, priority, value, at_step

    def on_step(self, stats):
        return [Decision("lr", self.value, f"{self.name} wants it", stats.loss)] if stats.step == self.at_step else []


class AskGaWeight(Hook):
    name = "ga"

    def on_eval(self, stats):
        return [Decision("ga_weight", 7.5, "test", stats.diagonality)] if stats.step == 4 else []


def test_hooks_steer_controls_by_priority_and_every_request_is_an_event(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4})
    recorder = Recorder()
    low, high = AskLr("plateau", 10, 5e-4, 3), AskLr("emergency", 100, 1e-4, 3)
    trainer = Trainer(config, tmp_path / "run", hooks=[low, high, AskGaWeight(), recorder], progress=False)
    trainer.fit()
    assert trainer.controls.lr == 1e-4
    assert all(g["lr"] == 1e-4 for g in trainer.optimizer.param_groups)
    events = read_events(tmp_path / "run")
    lr_events = [e for e in events if e["control"] == "lr"]
    assert {(e["source"], e["applied"]) for e in lr_events} == {("plateau", False), ("emergency", True)}
    assert all(e["step"] == 3 and e["old"] == config.train.lr for e in lr_events)
    assert [s.lr for s in recorder.steps[:4]] == [config.train.lr] * 3 + [1e-4]
    # The new guided-attention weight reaches the loss of the following steps.
    after = [s for s in recorder.steps if s.step > 4]
    assert after and all(s.loss_weights == {"ga_weight": 7.5} for s in after)
    for s in after:
        terms = s.losses
        assert s.loss == pytest.approx(terms["mel"] + terms["postnet"] + terms["gate"] + 7.5 * terms["ga"], rel=1e-5)
    assert len(recorder.events) == len(events)
    # Each evaluation's train_loss is the mean of the steps since the one before.
    losses = [s.loss for s in recorder.steps]
    assert [e.train_loss for e in recorder.evals] == pytest.approx([sum(losses[:4]) / 4, sum(losses[4:]) / 4])


def test_cyrillic_corpus_trains_and_the_checkpoint_stands_alone(corpus_ru, tmp_path):
    corpus = tmp_path / "ru"
    shutil.copytree(corpus_ru, corpus)
    config = tiny_config(corpus, tmp_path, train={"max_steps": 4, "eval_every": 4})
    result = Trainer(config, tmp_path / "run", progress=False).fit()
    assert result.status == "completed"
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # weights_only=True inside
    assert any("\u0400" <= c <= "\u04ff" for c in state["symbols"]["symbols"])
    shutil.rmtree(corpus)
    loaded = load_for_inference(tmp_path / "run" / "checkpoints" / "last.pt")
    ids = torch.tensor([loaded.symbols.encode("привет, мир.")])
    assert loaded.symbols.decode(ids[0].tolist()) == "привет, мир."
    out = loaded.family.synthesize(loaded.model, ids, torch.tensor([ids.shape[1]]), max_frames=5 * config.model.r)
    assert out.mel.shape[-1] <= 5 * config.model.r and out.alignments.shape[1] <= 5
    assert torch.isfinite(loaded.stats.denormalize(out.mel[0])).all()
    assert loaded.config.model.r == config.model.r


def test_a_checkpoint_of_another_format_is_refused_naming_the_format(tmp_path):
    from smart_tuner.tts.checkpoint import FORMAT, CheckpointError, save_atomic

    path = tmp_path / "old.pt"
    save_atomic({"format": FORMAT + 1, "model": {}}, path)
    with pytest.raises(CheckpointError, match=f"{path}: not a smart_tuner checkpoint of format {FORMAT}"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, path)  # not ours at all (NVIDIA's layout, say)
    with pytest.raises(CheckpointError, match="not a smart_tuner checkpoint"):
        load_for_inference(path)


def recorded_saves(trainer, monkeypatch, save=None) -> list[str]:
    """The names of the checkpoints the trainer asks its run directory to save, in order; ``save`` replaces the
    real save."""
    names: list[str] = []
    real = save or trainer.run.save_checkpoint

    def recording(name, state):
        names.append(name)
        return real(name, state)

    monkeypatch.setattr(trainer.run, "save_checkpoint", recording)
    return names


def test_a_full_disk_ends_the_run_and_last_pt_is_not_tried_again(corpus_en, tmp_path, monkeypatch):
    """The first checkpoint meets a real full filesystem (a 64 KiB tmpfs: ENOSPC); the run ends there, and its end
    does not try last.pt on the same full disk."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(checkpoints)],
                             capture_output=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        trainer = Trainer(tiny_config(corpus_en, tmp_path, train={"max_steps": 4, "eval_every": 2}), tmp_path / "run",
                          progress=False)
        saves = recorded_saves(trainer, monkeypatch)
        result = trainer.fit()
        left = sorted(p.name for p in checkpoints.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(checkpoints)], check=False)
    assert result.status == "failed" and result.step == 2
    assert result.reason == (f"no space left on the device of {checkpoints} while writing {checkpoints / 'best.pt'}; "
                             "no checkpoint was written yet")
    assert saves == ["best.pt"] and left == []


def test_an_exceeded_quota_ends_the_run_and_last_pt_is_not_tried_again(corpus_en, tmp_path, monkeypatch):
    """EDQUOT is a full disk too, whatever its message says."""
    trainer = Trainer(tiny_config(corpus_en, tmp_path, train={"max_steps": 4, "eval_every": 2}), tmp_path / "run",
                      progress=False)

    def over_quota(name, state):
        raise DiskFullError(errno.EDQUOT, f"disk quota exceeded while writing {name}", name)

    saves = recorded_saves(trainer, monkeypatch, over_quota)
    result = trainer.fit()
    assert result.status == "failed" and result.step == 2
    assert result.reason == "disk quota exceeded while writing best.pt; no checkpoint was written yet"
    assert saves == ["best.pt"]
