"""Tacotron 2 (Shen et al. 2018) with a reduction factor r, its loss, and its family (the protocol the trainer
uses, see base.py). Reads top to bottom.

text -> embedding -> 3 x (conv, batch norm, ReLU, dropout) -> BiLSTM = memory (B, N, E)
decoder step t: prenet(previous frame) + context -> attention LSTM -> location-sensitive attention over memory
                -> context; attention state + context -> decoder LSTM -> r mel frames and r stop-gate logits
mel -> 5-conv postnet -> residual refinement.

Shapes: B batch, N text tokens, E encoder width, T mel frames, D = T / r decoder steps, M mel channels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, LossConfig, ModelConfig
from ..data.dataset import Batch
from . import nvidia
from .alignment import length_mask
from .base import ForeignWeights, ModelFamily, Synthesis, TrainingOutput


class Encoder(nn.Module):
    def __init__(self, n_symbols: int, cfg: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(n_symbols, cfg.embedding_dim)
        layers = []
        channels = cfg.embedding_dim
        for _ in range(cfg.encoder_conv_layers):
            layers += [
                nn.Conv1d(channels, cfg.encoder_channels, cfg.encoder_kernel, padding=cfg.encoder_kernel // 2),
                nn.BatchNorm1d(cfg.encoder_channels),
                nn.ReLU(),
                Dropout(cfg.encoder_dropout),
            ]
            channels = cfg.encoder_channels
        self.convs = nn.Sequential(*layers)
        self.lstm = nn.LSTM(channels, cfg.encoder_lstm_dim, batch_first=True, bidirectional=True)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        mask = length_mask(text_lengths, text.shape[1])[:, None, :]
        x = _masked_convs(self.convs, self.embedding(text).transpose(1, 2), mask).transpose(1, 2)  # (B, N, C)
        packed = nn.utils.rnn.pack_padded_sequence(x, text_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=text.shape[1])
        return out  # (B, N, E)


class Prenet(nn.Module):
    """Bottleneck on the previous frame. Dropout stays on at inference: it is what makes the decoder
    rely on attention instead of copying the previous frame (Tacotron 2, section 2.3)."""

    def __init__(self, in_dim: int, dims: list[int], dropout: float):
        super().__init__()
        sizes = [in_dim] + dims
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(sizes))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = dropout(F.relu(layer(x)), self.dropout, training=True)
        return x


class LocationSensitiveAttention(nn.Module):
    """Additive attention whose energies also see the previous and cumulative weights (Chorowski et al. 2015)."""

    def __init__(self, query_dim: int, memory_dim: int, cfg: ModelConfig):
        super().__init__()
        self.query = nn.Linear(query_dim, cfg.attention_dim, bias=False)
        self.memory = nn.Linear(memory_dim, cfg.attention_dim, bias=False)
        self.location_conv = nn.Conv1d(2, cfg.location_filters, cfg.location_kernel,
                                       padding=cfg.location_kernel // 2, bias=False)
        self.location_dense = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)
        self.v = nn.Linear(cfg.attention_dim, 1, bias=True)

    def forward(self, query: torch.Tensor, processed_memory: torch.Tensor, weights_cat: torch.Tensor,
                pad_mask: torch.Tensor) -> torch.Tensor:
        location = self.location_dense(self.location_conv(weights_cat).transpose(1, 2))  # (B, N, A)
        energies = self.v(torch.tanh(self.query(query)[:, None, :] + location + processed_memory)).squeeze(-1)
        energies = energies.masked_fill(pad_mask, torch.finfo(energies.dtype).min)
        return torch.softmax(energies, dim=-1)  # (B, N)


class Decoder(nn.Module):
    def __init__(self, n_mels: int, memory_dim: int, cfg: ModelConfig):
        super().__init__()
        self.n_mels, self.r, self.cfg = n_mels, cfg.r, cfg
        self.prenet = Prenet(n_mels, cfg.prenet_dims, cfg.prenet_dropout)
        self.attention_rnn = nn.LSTMCell(cfg.prenet_dims[-1] + memory_dim, cfg.attention_rnn_dim)
        self.attention = LocationSensitiveAttention(cfg.attention_rnn_dim, memory_dim, cfg)
        self.decoder_rnn = nn.LSTMCell(cfg.attention_rnn_dim + memory_dim, cfg.decoder_rnn_dim)
        self.projection = nn.Linear(cfg.decoder_rnn_dim + memory_dim, n_mels * cfg.r)
        self.gate = nn.Linear(cfg.decoder_rnn_dim + memory_dim, cfg.r)

    def initial_state(self, memory: torch.Tensor) -> list[torch.Tensor]:
        b, n, e = memory.shape
        zeros = memory.new_zeros
        return [zeros(b, self.cfg.attention_rnn_dim), zeros(b, self.cfg.attention_rnn_dim),
                zeros(b, self.cfg.decoder_rnn_dim), zeros(b, self.cfg.decoder_rnn_dim),
                zeros(b, n), zeros(b, n), zeros(b, e)]

    def step(self, prenet_out: torch.Tensor, state: list[torch.Tensor], memory: torch.Tensor,
             processed_memory: torch.Tensor, pad_mask: torch.Tensor):
        attn_h, attn_c, dec_h, dec_c, weights, weights_cum, context = state
        attn_h, attn_c = self.attention_rnn(torch.cat([prenet_out, context], -1), (attn_h, attn_c))
        attn_h = dropout(attn_h, self.cfg.attention_dropout, self.training)
        weights = self.attention(attn_h, processed_memory, torch.stack([weights, weights_cum], 1), pad_mask)
        weights_cum = weights_cum + weights
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)
        dec_h, dec_c = self.decoder_rnn(torch.cat([attn_h, context], -1), (dec_h, dec_c))
        dec_h = dropout(dec_h, self.cfg.decoder_dropout, self.training)
        out = torch.cat([dec_h, context], -1)
        frames = self.projection(out)  # (B, r * M)
        gate = self.gate(out)  # (B, r)
        return frames, gate, weights, [attn_h, attn_c, dec_h, dec_c, weights, weights_cum, context]

    def forward(self, memory: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor, fast: bool = True):
        """Teacher forcing: step d is fed the last frame of group d - 1 (a zero "go" frame first).

        ``fast`` computes the same function as the step-by-step path (``fast=False``, the free-running path's
        :meth:`step` fed the true frames) with fewer, larger ops per decoder step (:meth:`_teacher_forced`)."""
        b, m, t = mel.shape
        steps = t // self.r
        last_of_group = mel.transpose(1, 2).reshape(b, steps, self.r, m)[:, :, -1, :]  # (B, D, M)
        inputs = torch.cat([mel.new_zeros(b, 1, m), last_of_group[:, :-1]], 1)
        prenet_out = self.prenet(inputs)  # all steps at once: the prenet does not depend on the state
        processed_memory = self.attention.memory(memory)
        pad_mask = ~length_mask(text_lengths, memory.shape[1])
        if fast:
            return self._teacher_forced(prenet_out, memory, processed_memory, pad_mask)
        state = self.initial_state(memory)
        frames, gates, alignments = [], [], []
        for d in range(steps):
            f, g, w, state = self.step(prenet_out[:, d], state, memory, processed_memory, pad_mask)
            frames.append(f)
            gates.append(g)
            alignments.append(w)
        mel_out = torch.stack(frames, 1).reshape(b, steps * self.r, m).transpose(1, 2)  # (B, M, T)
        gate_out = torch.stack(gates, 1).reshape(b, steps * self.r)  # (B, T)
        return mel_out, gate_out, torch.stack(alignments, 1)  # alignments (B, D, N)

    def _teacher_forced(self, prenet_out: torch.Tensor, memory: torch.Tensor, processed_memory: torch.Tensor,
                        pad_mask: torch.Tensor):
        """:meth:`step` for every decoder step, with whatever does not depend on the recurrent state moved out of
        the loop: the prenet's share of the attention LSTM's input product (one matmul for all steps), every
        dropout mask (one draw), the location convolution folded with its dense layer (both linear: one matmul
        over the unfolded windows), each LSTM's input and recurrent products in one matmul, the frame projection
        and stop gate applied once to the stacked decoder outputs, and the large weights shared by the steps (the
        LSTMs', the query's, the memory) given their gradient in one matmul over all steps
        (:class:`_StepProducts`) instead of one matmul and one accumulation per step."""
        cfg, attention = self.cfg, self.attention
        b, steps, _ = prenet_out.shape
        n = memory.shape[1]
        kernel = cfg.location_kernel
        # Location features: dense(conv(w)) is one linear map of each K-wide window of the two weight rows, with
        # the dense layer folded into the kernel: (2 K) -> A.
        location_weight = torch.einsum("af,fck->ack", attention.location_dense.weight,
                                       attention.location_conv.weight).reshape(-1, 2 * kernel).t()  # (2K, A)
        bases, shared, inputs = self._step_products(prenet_out, memory, processed_memory)
        attn_base, dec_base, query_base, context_base = bases
        attn_weight, dec_weight, query_weight = shared
        attn_inputs, dec_inputs, query_inputs, weight_inputs = inputs
        v = attention.v.weight.t()  # (A, 1)
        memory_values = memory.detach()
        attn_masks = _dropout_masks(prenet_out, (steps, b, cfg.attention_rnn_dim), cfg.attention_dropout,
                                    self.training)
        dec_masks = _dropout_masks(prenet_out, (steps, b, cfg.decoder_rnn_dim), cfg.decoder_dropout, self.training)
        neg = torch.finfo(memory.dtype).min
        recording = torch.is_grad_enabled()

        attn_h, attn_c, dec_h, dec_c, weights, weights_cum, context = self.initial_state(memory)
        dec_outputs, contexts, alignments = [], [], []
        for d in range(steps):
            attn_in = torch.cat([context, attn_h], 1)
            attn_h, attn_c = _lstm_cell(torch.addmm(attn_base[d], attn_in, attn_weight), attn_c)
            if attn_masks is not None:
                attn_h = attn_h * attn_masks[d]
            windows = F.pad(torch.stack([weights, weights_cum], 1), (kernel // 2, kernel // 2)).unfold(2, kernel, 1)
            windows = windows.transpose(1, 2).reshape(b, n, 2 * kernel)
            query = torch.addmm(query_base[d], attn_h, query_weight)
            hidden = torch.tanh(torch.baddbmm(processed_memory, windows, location_weight.expand(b, -1, -1))
                                + query[:, None, :])
            energies = (hidden @ v).view(b, n) + attention.v.bias
            weights = torch.softmax(energies.masked_fill(pad_mask, neg), dim=-1)
            weights_cum = weights_cum + weights
            context = torch.baddbmm(context_base[d], weights[:, None, :], memory_values).view(b, -1)
            dec_in = torch.cat([attn_h, context, dec_h], 1)
            dec_h, dec_c = _lstm_cell(torch.addmm(dec_base[d], dec_in, dec_weight), dec_c)
            if dec_masks is not None:
                dec_h = dec_h * dec_masks[d]
            if recording:  # the inputs of the shared weights' gradients (none without autograd: evaluation)
                for inputs, value in ((attn_inputs, attn_in), (dec_inputs, dec_in), (query_inputs, attn_h),
                                      (weight_inputs, weights)):
                    inputs.append(value.detach())
            alignments.append(weights)
            dec_outputs.append(dec_h)
            contexts.append(context)
        out = torch.cat([torch.stack(dec_outputs, 1), torch.stack(contexts, 1)], -1)  # (B, D, H + E)
        mel_out = self.projection(out).reshape(b, steps * self.r, self.n_mels).transpose(1, 2)  # (B, M, T)
        gate_out = self.gate(out).reshape(b, steps * self.r)  # (B, T)
        return mel_out, gate_out, torch.stack(alignments, 1)

    def _step_products(self, prenet_out: torch.Tensor, memory: torch.Tensor, processed_memory: torch.Tensor):
        """Per-step products with the weights the steps share, for :meth:`_teacher_forced`: each step's "base" (the
        tensor its product is added to), the weights (detached: their gradient comes from :class:`_StepProducts`)
        and the lists the steps append their inputs to, from which backward makes one matmul per weight.

        Each base holds every step's state-free part already: the attention LSTM's product with the prenet output
        and both biases; the decoder LSTM's biases; the processed memory."""
        attn_rnn, dec_rnn, attention = self.attention_rnn, self.decoder_rnn, self.attention
        b, steps, p = prenet_out.shape
        inputs = attn_inputs, dec_inputs, query_inputs, weight_inputs = [], [], [], []
        attn_weight = torch.cat([attn_rnn.weight_ih[:, p:], attn_rnn.weight_hh], 1).t()  # [context, h] -> gates
        attn_base = F.linear(prenet_out.transpose(0, 1), attn_rnn.weight_ih[:, :p], attn_rnn.bias_ih + attn_rnn.bias_hh)
        dec_weight = torch.cat([dec_rnn.weight_ih, dec_rnn.weight_hh], 1).t()  # [attn_h, context, h] -> gates
        dec_base = (dec_rnn.bias_ih + dec_rnn.bias_hh).expand(steps, b, -1)
        # One tensor per step (unbind): indexing a step of one tensor would make its backward zero-fill the whole.
        attn_base = _StepProducts.apply(attn_weight, attn_base, attn_inputs).unbind(0)
        dec_base = _StepProducts.apply(dec_weight, dec_base, dec_inputs).unbind(0)
        query_weight = attention.query.weight.t()
        query_base = _StepProducts.apply(query_weight, processed_memory.new_zeros(steps, b, self.cfg.attention_dim),
                                         query_inputs).unbind(0)
        # The location and energy products keep plain autograd: batching their small weights' gradients would
        # materialize (D, B, N, A) tensors, gigabytes at LJSpeech shapes.
        context_base = _StepProducts.apply(memory, memory.new_zeros(steps, b, 1, memory.shape[2]), weight_inputs,
                                           _context_memory_grad).unbind(0)
        shared = attn_weight.detach(), dec_weight.detach(), query_weight.detach()
        return (attn_base, dec_base, query_base, context_base), shared, inputs

    @torch.no_grad()
    def infer(self, memory: torch.Tensor, text_lengths: torch.Tensor, max_steps: int, gate_threshold: float):
        """Free-running: each step is fed its own last frame; an item stops when any of its r gates fires."""
        b, _, _ = memory.shape
        processed_memory = self.attention.memory(memory)
        pad_mask = ~length_mask(text_lengths, memory.shape[1])
        state = self.initial_state(memory)
        frame = memory.new_zeros(b, self.n_mels)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        dec_lengths = torch.full((b,), max_steps, dtype=torch.long, device=memory.device)
        frames, gates, alignments = [], [], []
        for d in range(max_steps):
            f, g, w, state = self.step(self.prenet(frame), state, memory, processed_memory, pad_mask)
            frames.append(f)
            gates.append(g)
            alignments.append(w)
            frame = f.view(b, self.r, self.n_mels)[:, -1]
            stop = (torch.sigmoid(g) > gate_threshold).any(-1) & ~done
            dec_lengths = torch.where(stop, torch.full_like(dec_lengths, d + 1), dec_lengths)
            done = done | stop
            if d % 8 == 7 and bool(done.all()):  # a host sync every 8 steps, not every step
                break
        steps = len(frames)
        mel_out = torch.stack(frames, 1).reshape(b, steps * self.r, self.n_mels).transpose(1, 2)
        return mel_out, torch.stack(gates, 1).reshape(b, steps * self.r), torch.stack(alignments, 1), dec_lengths


class _StepProducts(torch.autograd.Function):
    """Products ``x_d @ W`` of a loop's steps with one shared weight, whose gradient is one matmul over all steps.

    ``apply(W, base, inputs)`` returns a copy of ``base`` (D, ...); step ``d`` adds ``x_d @ W.detach()`` to its row
    and appends ``x_d`` (detached) to ``inputs``. Autograd computes each ``x_d``'s gradient through the detached
    weight as usual, delivers every step's output gradient here together, and ``W``'s gradient is
    ``sum_d x_d^T grad_d`` in one matmul, where plain autograd runs a small matmul and an accumulation per step;
    ``base`` gets the output gradient unchanged. ``weight_grad(inputs, grad)`` computes other products' gradients.
    """

    @staticmethod
    def forward(ctx, weight, base, inputs, weight_grad=None):
        ctx.inputs, ctx.weight_grad = inputs, weight_grad or _matmul_weight_grad
        return base.clone()

    @staticmethod
    def backward(ctx, grad):
        weight_grad = ctx.weight_grad(ctx.inputs, grad) if ctx.needs_input_grad[0] else None
        return weight_grad, grad, None, None


def _matmul_weight_grad(inputs: list[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """Of ``x_d @ W`` for every step: ``sum_d x_d^T grad_d`` (inputs (..., in), grad (D, ..., out))."""
    stacked = torch.stack(inputs)
    return stacked.reshape(-1, stacked.shape[-1]).t() @ grad.reshape(-1, grad.shape[-1])


def _context_memory_grad(weights: list[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """Of ``context_d = w_d @ memory`` for every step (w_d (B, N), grad (D, B, 1, E)): (B, N, E)."""
    return torch.bmm(torch.stack(weights, 2), grad.squeeze(2).transpose(0, 1))


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.LSTMCell``'s pointwise part (gate order i, f, g, o) on precomputed gates, in six ops."""
    i, f, _, o = torch.sigmoid(gates).chunk(4, 1)
    g = torch.tanh(gates[:, 2 * c.shape[1]: 3 * c.shape[1]])
    c = torch.addcmul(f * c, i, g)
    return o * torch.tanh(c), c


def _dropout_masks(like: torch.Tensor, shape: tuple[int, ...], p: float, training: bool) -> torch.Tensor | None:
    """Every step's dropout mask in one draw (scaled like ``F.dropout``), or None when dropout is off."""
    if not training or p == 0.0:
        return None
    return _keep_mask(like.new_empty(shape), p)


def _keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p). Uniform draws compared with p: on CPU four
    times faster than ``bernoulli_``, which is what ``F.dropout`` draws with (measured on 2 cores)."""
    return (torch.rand_like(like) >= p).to(like.dtype).mul_(1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout``, with the cheaper mask on CPU (on CUDA ``F.dropout`` is one fused kernel)."""
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    return x * _keep_mask(x, p)


class Dropout(nn.Module):
    """``nn.Dropout`` through :func:`dropout` (no parameters or buffers: checkpoints are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class Postnet(nn.Module):
    def __init__(self, n_mels: int, cfg: ModelConfig):
        super().__init__()
        layers = []
        sizes = [n_mels] + [cfg.postnet_channels] * (cfg.postnet_layers - 1) + [n_mels]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers += [nn.Conv1d(a, b, cfg.postnet_kernel, padding=cfg.postnet_kernel // 2), nn.BatchNorm1d(b)]
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
            layers.append(Dropout(cfg.postnet_dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _masked_convs(self.net, mel, frame_mask)


def _masked_convs(layers: nn.Sequential, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``layers`` with the padded positions zeroed before each convolution: a real position then sees zeros past
    the sequence's end however far the batch is padded, so an item's output does not depend on its batch's
    padding (batch-max or a static-shape grid). ``mask``: (B, 1, T) true at real positions; None: no masking."""
    for layer in layers:
        if mask is not None and isinstance(layer, nn.Conv1d):
            x = x * mask
        x = layer(x)
    return x


@dataclass
class Output:
    mel: torch.Tensor  # (B, M, T) decoder output
    mel_postnet: torch.Tensor  # (B, M, T) after the residual postnet
    gate: torch.Tensor  # (B, T) stop logits
    alignments: torch.Tensor  # (B, D, N)
    dec_lengths: torch.Tensor | None = None  # (B,) free-running decoder steps, at inference


class Tacotron2(nn.Module):
    def __init__(self, n_symbols: int, n_mels: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(n_symbols, cfg)
        memory_dim = 2 * cfg.encoder_lstm_dim
        self.decoder = Decoder(n_mels, memory_dim, cfg)
        self.postnet = Postnet(n_mels, cfg)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor,
                mel_lengths: torch.Tensor | None = None, fast: bool = True) -> Output:
        """Teacher-forced; with ``mel_lengths`` the postnet sees zeros past each item's frames."""
        memory = self.encoder(text, text_lengths)
        mel_out, gate, alignments = self.decoder(memory, text_lengths, mel, fast=fast)
        frame_mask = None if mel_lengths is None else length_mask(mel_lengths, mel_out.shape[2])[:, None, :]
        return Output(mel_out, mel_out + self.postnet(mel_out, frame_mask), gate, alignments)

    @torch.no_grad()
    def infer(self, text: torch.Tensor, text_lengths: torch.Tensor, max_steps: int | None = None) -> Output:
        memory = self.encoder(text, text_lengths)
        mel_out, gate, alignments, dec_lengths = self.decoder.infer(
            memory, text_lengths, max_steps or self.cfg.max_decoder_steps, self.cfg.gate_threshold)
        frame_mask = length_mask(dec_lengths * self.cfg.r, mel_out.shape[2])[:, None, :]
        return Output(mel_out, mel_out + self.postnet(mel_out, frame_mask), gate, alignments, dec_lengths)


def guided_attention_penalty(alignments: torch.Tensor, text_lengths: torch.Tensor, dec_lengths: torch.Tensor,
                             sigma: float) -> torch.Tensor:
    """Tachibana et al. (2017) guided attention, normalized so that a weight of about 1-10 acts.

    W[d, n] = 1 - exp(-((n + 0.5)/N - (d + 0.5)/D)^2 / (2 sigma^2)) for valid tokens n < N and steps d < D.
    Per item: sum over text positions of A * W (the expected penalty of one decoder step, in [0, 1]), then the
    mean over valid decoder steps; the batch value is the mean over items. A diagonal alignment scores about 0,
    a uniform one about 0.5 for sigma 0.2. (A plain mean over the whole N x D region would be about 1/N of this,
    so a weight would have to be N times larger to act.)
    """
    _b, d_max, n_max = alignments.shape
    n_len = text_lengths.to(alignments.device, torch.float32)
    d_len = dec_lengths.to(alignments.device, torch.float32)
    n_pos = (torch.arange(n_max, device=alignments.device) + 0.5)[None, None, :] / n_len[:, None, None]
    d_pos = (torch.arange(d_max, device=alignments.device) + 0.5)[None, :, None] / d_len[:, None, None]
    w = 1.0 - torch.exp(-((n_pos - d_pos) ** 2) / (2 * sigma**2))
    mask = length_mask(dec_lengths, d_max)[:, :, None] & length_mask(text_lengths, n_max)[:, None, :]
    per_step = (alignments.float() * w * mask).sum(-1)  # (B, D)
    return (per_step.sum(1) / d_len.clamp_min(1)).mean()


def decoder_steps(mel_lengths: torch.Tensor, r: int) -> torch.Tensor:
    return torch.div(mel_lengths + r - 1, r, rounding_mode="floor")


class Tacotron2Loss(nn.Module):
    """mel MSE + postnet mel MSE (masked by length) + stop-gate BCE (masked) + ga_weight * guided attention.

    ``ga_weight`` is an argument of each call, so the adapters can change it between steps with nothing rebuilt.
    """

    def __init__(self, cfg: LossConfig, r: int):
        super().__init__()
        self.cfg, self.r = cfg, r
        self.register_buffer("pos_weight", torch.tensor(cfg.gate_pos_weight), persistent=False)

    def forward(self, out: Output, mel: torch.Tensor, mel_lengths: torch.Tensor, gate_target: torch.Tensor,
                text_lengths: torch.Tensor, ga_weight: float) -> dict[str, torch.Tensor]:
        frame_mask = length_mask(mel_lengths, mel.shape[2])  # (B, T)
        n_valid = frame_mask.sum().clamp_min(1) * mel.shape[1]
        mask3 = frame_mask[:, None, :]
        mel_loss = (((out.mel.float() - mel) ** 2) * mask3).sum() / n_valid
        postnet_loss = (((out.mel_postnet.float() - mel) ** 2) * mask3).sum() / n_valid
        gate_all = F.binary_cross_entropy_with_logits(out.gate.float(), gate_target, pos_weight=self.pos_weight,
                                                      reduction="none")
        gate_loss = (gate_all * frame_mask).sum() / frame_mask.sum().clamp_min(1)
        ga_loss = guided_attention_penalty(out.alignments, text_lengths, decoder_steps(mel_lengths, self.r),
                                           self.cfg.ga_sigma)
        total = mel_loss + postnet_loss + gate_loss + ga_weight * ga_loss
        return {"loss": total, "mel": mel_loss, "postnet": postnet_loss, "gate": gate_loss, "ga": ga_loss}


class Tacotron2Family(ModelFamily):
    """Tacotron 2 behind the model protocol: losses mel, postnet, gate (the reconstruction) and ga (guided
    attention, weighted by the steerable ``ga_weight``); the decoder emits ``model.r`` frames per step."""

    name = "tacotron2"
    reconstruction_losses = ("mel", "postnet", "gate")
    output_loss = "postnet"
    symbol_rows = ("encoder.embedding.weight",)

    def __init__(self, config: Config):
        super().__init__(config)
        self._criteria: dict[torch.device, Tacotron2Loss] = {}  # one per device: the loss holds a buffer

    @property
    def frames_multiple(self) -> int:
        return self.config.model.r

    def build(self, n_symbols: int) -> Tacotron2:
        return Tacotron2(n_symbols, self.config.audio.n_mels, self.config.model)

    def loss_weights(self) -> dict[str, float]:
        return {"ga_weight": self.config.loss.ga_weight}

    def _criterion(self, device: torch.device) -> Tacotron2Loss:
        if device not in self._criteria:
            self._criteria[device] = Tacotron2Loss(self.config.loss, self.config.model.r).to(device)
        return self._criteria[device]

    def training_forward(self, model: nn.Module, batch: Batch, weights: dict[str, float]) -> TrainingOutput:
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths,
                    fast=self.config.train.execution != "stepwise")
        losses = self._criterion(batch.mel.device)(out, batch.mel, batch.mel_lengths, batch.gate,
                                                   batch.text_lengths, weights["ga_weight"])
        total = losses.pop("loss")
        return TrainingOutput(losses, total, out.mel_postnet, out.alignments,
                              decoder_steps(batch.mel_lengths, self.config.model.r))

    def foreign_checkpoint(self, data: Any) -> ForeignWeights | None:
        """NVIDIA's checkpoints (NVIDIA/tacotron2, DeepLearningExamples), see nvidia.py."""
        state = nvidia.nvidia_state_dict(data)
        if state is None:
            return None
        return ForeignWeights("nvidia", nvidia.to_ours(state), nvidia.symbol_table(), nvidia.config_for(state))

    def synthesize(self, model: nn.Module, text: torch.Tensor, text_lengths: torch.Tensor,
                   max_frames: int | None = None) -> Synthesis:
        r, limit = self.config.model.r, self.config.model.max_decoder_steps
        max_steps = min(limit, -(-max_frames // r)) if max_frames else limit
        out = model.infer(text, text_lengths, max_steps=max_steps)
        return Synthesis(out.mel_postnet, out.dec_lengths * r, out.dec_lengths < max_steps, out.alignments,
                         out.dec_lengths)
