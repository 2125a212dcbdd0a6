"""Tacotron 2 shapes, inference bounds, and the guided-attention term."""

from __future__ import annotations

import pytest
import torch

from smart_tuner.tts.alignment import ideal_diagonal
from smart_tuner.config import build_config
from smart_tuner.tts.tacotron2 import Output, Tacotron2, Tacotron2Loss, guided_attention_penalty

from .conftest import TINY_MODEL


def make_model(r: int = 4) -> tuple[Tacotron2, object]:
    config = build_config({"model": {**TINY_MODEL, "r": r}})
    torch.manual_seed(0)
    return Tacotron2(n_symbols=30, n_mels=80, cfg=config.model), config


def batch(r: int):
    text_lengths = torch.tensor([9, 6])
    text = torch.randint(3, 30, (2, 9))
    text[1, 6:] = 0
    frames = 5 * r
    mel = torch.randn(2, 80, frames)
    mel_lengths = torch.tensor([frames, frames - r - 1])
    gate = (torch.arange(frames)[None] >= (mel_lengths[:, None] - 1)).float()
    return text, text_lengths, mel, mel_lengths, gate


@pytest.mark.parametrize("r", [1, 4])
def test_forward_shapes_and_backward(r):
    model, config = make_model(r)
    text, text_lengths, mel, mel_lengths, gate = batch(r)
    out = model(text, text_lengths, mel)
    assert out.mel.shape == mel.shape and out.mel_postnet.shape == mel.shape
    assert out.gate.shape == (2, mel.shape[2])
    assert out.alignments.shape == (2, mel.shape[2] // r, 9)
    # Attention never lands on padding tokens.
    assert out.alignments[1, :, 6:].abs().max() < 1e-6
    torch.testing.assert_close(out.alignments.sum(-1), torch.ones(2, mel.shape[2] // r))
    losses = Tacotron2Loss(config.loss, r)(out, mel, mel_lengths, gate, text_lengths, ga_weight=2.0)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_inference_is_bounded_and_prenet_dropout_stays_on():
    model, _ = make_model(4)
    model.eval()
    text, text_lengths, *_ = batch(4)
    out = model.infer(text, text_lengths, max_steps=7)
    assert out.alignments.shape[1] <= 7
    assert out.mel.shape[2] == out.alignments.shape[1] * 4
    assert ((out.dec_lengths >= 1) & (out.dec_lengths <= 7)).all()
    again = model.infer(text, text_lengths, max_steps=7)
    # Dropout in the prenet is on at inference (Tacotron 2), so two decodes differ.
    assert not torch.allclose(out.mel, again.mel)


def test_guided_attention_penalty_scale_and_masking():
    d, n = 30, 20
    diagonal = ideal_diagonal(d, n)[None]
    uniform = torch.full((1, d, n), 1.0 / n)
    lengths_n, lengths_d = torch.tensor([n]), torch.tensor([d])
    diag_pen = guided_attention_penalty(diagonal, lengths_n, lengths_d, sigma=0.2)
    uni_pen = guided_attention_penalty(uniform, lengths_n, lengths_d, sigma=0.2)
    assert diag_pen < 0.02
    # Normalized per decoder step (sum over text, mean over steps): order 0.5, not 1/N of it.
    assert 0.3 < uni_pen < 0.8
    # Padding changes nothing, whatever it holds.
    padded = torch.full((1, d + 7, n + 5), 3.0)
    padded[:, :d, :n] = uniform
    torch.testing.assert_close(guided_attention_penalty(padded, lengths_n, lengths_d, 0.2), uni_pen)


def test_ga_weight_reaches_the_loss_and_its_gradient():
    model, config = make_model(4)
    text, text_lengths, mel, mel_lengths, gate = batch(4)
    criterion = Tacotron2Loss(config.loss, 4)
    out = model(text, text_lengths, mel)
    low = criterion(out, mel, mel_lengths, gate, text_lengths, ga_weight=1.0)
    high = criterion(out, mel, mel_lengths, gate, text_lengths, ga_weight=7.0)
    torch.testing.assert_close(high["loss"] - low["loss"], 6.0 * low["ga"])
    attn_grad = torch.autograd.grad(high["loss"], model.decoder.attention.v.weight, retain_graph=True)[0]
    attn_grad_low = torch.autograd.grad(low["loss"], model.decoder.attention.v.weight)[0]
    assert not torch.allclose(attn_grad, attn_grad_low)


def test_loss_ignores_padded_frames():
    model, config = make_model(4)
    text, text_lengths, mel, mel_lengths, gate = batch(4)
    criterion = Tacotron2Loss(config.loss, 4)
    out = model(text, text_lengths, mel)
    base = criterion(out, mel, mel_lengths, gate, text_lengths, 1.0)
    changed = mel.clone()
    changed[1, :, int(mel_lengths[1]):] = 100.0
    noisy_out = Output(out.mel.clone(), out.mel_postnet.clone(), out.gate.clone(), out.alignments)
    noisy_out.mel[1, :, int(mel_lengths[1]):] = -50.0
    other = criterion(noisy_out, changed, mel_lengths, gate, text_lengths, 1.0)
    for key in ("mel", "postnet", "gate"):
        torch.testing.assert_close(other[key], base[key])
