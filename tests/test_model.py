"""Tacotron 2 shapes, inference bounds, and the guided-attention term."""

from __future__ import annotations

import pytest
import torch

from smart_tuner.config import build_config
from smart_tuner.tts.alignment import ideal_diagonal
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


@pytest.mark.parametrize("r", [1, 3])
def test_fast_teacher_forcing_is_the_step_by_step_function(r):
    """The fast teacher-forced decoder (state-free work out of the loop, folded location layer, fused LSTM
    products) computes what the free-running path's step computes when fed the true frames: same outputs, same
    gradient for every parameter. Dropout off (eval mode, prenet dropout 0) so both see the same function; float64,
    so that the tolerance (1e-9) measures the algebra, not float32 rounding over the recurrence."""
    config = build_config({"model": {**TINY_MODEL, "r": r, "prenet_dropout": 0.0}})
    torch.manual_seed(0)
    model = Tacotron2(n_symbols=30, n_mels=80, cfg=config.model).double().eval()
    text, text_lengths, mel, *_ = batch(r)
    mel = mel.double()
    results = []
    for fast in (False, True):
        model.zero_grad()
        out = model(text, text_lengths, mel, fast=fast)
        # A loss that reaches every output (mel, postnet, gate, alignments) with different weights.
        loss = (out.mel * mel).mean() + out.mel_postnet.pow(2).mean() + out.gate.sigmoid().mean() \
            + (out.alignments * torch.linspace(0, 1, 9, dtype=torch.float64)).sum()
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (slow, slow_grads), (fast, fast_grads) = results
    for name in ("mel", "mel_postnet", "gate", "alignments"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-9)
    assert fast_grads.keys() == slow_grads.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-9, atol=1e-9, msg=name)


def test_fast_teacher_forcing_draws_dropout_like_the_step_path():
    """With dropout on, the fast path drops units at the configured rate and scales the kept ones by 1/(1-p)."""
    from smart_tuner.tts.tacotron2 import dropout

    torch.manual_seed(1)
    x = torch.ones(400, 500)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert dropout(x, 0.3, training=False) is x
