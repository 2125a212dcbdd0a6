"""Batches with static shapes: a small grid of padded lengths, and padding that changes no loss."""

from __future__ import annotations

import logging

import pytest
import torch

from smart_tuner.config import build_config
from smart_tuner.data.dataset import Collate, length_grid
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts import build_family

from .conftest import TINY_MODEL, tiny_config


def test_grid_edges_are_quantiles_rounded_up_and_end_at_the_longest():
    assert length_grid(list(range(1, 101)), 4) == [25, 50, 75, 100]
    assert length_grid(list(range(1, 101)), 4, multiple=8) == [32, 56, 80, 104]
    assert length_grid([7, 7, 7, 9], 3) == [7, 9]  # repeated quantiles collapse
    assert length_grid([5], 8) == [5]


def items(lengths_text, lengths_mel, n_mels=80):
    torch.manual_seed(0)
    return [(torch.randint(1, 20, (n,)), torch.randn(n_mels, t)) for n, t in zip(lengths_text, lengths_mel)]


def test_collate_pads_to_the_smallest_grid_length_that_holds_the_batch():
    plain = Collate(0, torch.full((80,), -4.0), r=4)
    grid = Collate(0, torch.full((80,), -4.0), r=4, frame_grid=[40, 80, 120], text_grid=[10, 20, 30])
    batch = items([7, 12], [33, 50])
    assert plain(batch).mel.shape[-1] == 52 and plain(batch).text.shape[-1] == 12
    padded = grid(batch)
    assert padded.mel.shape[-1] == 80 and padded.text.shape[-1] == 20
    assert padded.frames == plain(batch).frames == 83  # real frames do not change
    assert grid(items([31], [130])).mel.shape[-1] == 132  # beyond the grid: its own length (rounded to r)


def test_grid_padding_changes_no_loss():
    """Every loss is masked by the true lengths, the decoder is causal and the attention masks padded tokens: in
    eval mode (no dropout, batch-norm running statistics) a batch padded to the grid gives the same losses."""
    config = build_config({"model": {**TINY_MODEL, "prenet_dropout": 0.0}})
    family = build_family(config)
    torch.manual_seed(0)
    model = family.build(20).eval()
    batch = items([7, 12, 9], [33, 50, 41])
    plain = Collate(0, torch.full((80,), -4.0), r=4)(batch)
    padded = Collate(0, torch.full((80,), -4.0), r=4, frame_grid=[96], text_grid=[32])(batch)
    assert padded.mel.shape[-1] == 96 and padded.text.shape[-1] == 32
    with torch.no_grad():
        a = family.training_forward(model, plain, {"ga_weight": 2.0})
        b = family.training_forward(model, padded, {"ga_weight": 2.0})
    for name, value in a.losses.items():
        torch.testing.assert_close(b.losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(b.total, a.total, rtol=1e-5, atol=1e-6)


def test_a_run_on_the_grid_logs_its_padding(corpus_en, tmp_path, caplog):
    config = tiny_config(corpus_en, tmp_path, data={"length_grid": 3}, train={"max_steps": 2, "eval_every": 2})
    with caplog.at_level(logging.INFO, logger="smart_tuner.train.trainer"):
        trainer = Trainer(config, tmp_path / "run", progress=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("static shapes"))
    assert "padded frames over an epoch: +" in line and "padding each batch to its longest" in line
    assert len(trainer.collate.frame_grid) <= 3 and trainer.collate.frame_grid[-1] >= max(trainer.data.train.frames)
    assert all(edge % config.model.r == 0 for edge in trainer.collate.frame_grid)
    batch = trainer._next_batch()
    assert batch.mel.shape[-1] in trainer.collate.frame_grid and batch.text.shape[-1] in trainer.collate.text_grid
    assert trainer.fit().status == "completed"


def test_a_negative_grid_is_a_config_error():
    with pytest.raises(Exception, match="data.length_grid: -1 must be >= 0"):
        build_config({"data": {"length_grid": -1}})
