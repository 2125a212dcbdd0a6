"""Tacotron 2 (Shen et al. 2018) with a reduction factor r, its loss, and its family (the protocol the trainer
uses, see base.py). Reads top to bottom.

text -> embedding -> 3 x (conv, batch norm, ReLU, dropout) -> BiLSTM = memory (B, N, E)
decoder step t: prenet(previous frame) + context -> attention LSTM -> location-sensitive attention over memory
                -> context; attention state + context -> decoder LSTM -> r mel frames and r stop-gate logits
mel -> 5-conv postnet -> residual refinement.

Shapes: B batch, N text tokens, E encoder width, T mel frames, D = T / r decoder steps, M mel channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, LossConfig, ModelConfig
from ..data.dataset import Batch
from .alignment import length_mask
from . import nvidia
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
                nn.Dropout(cfg.encoder_dropout),
            ]
            channels = cfg.encoder_channels
        self.convs = nn.Sequential(*layers)
        self.lstm = nn.LSTM(channels, cfg.encoder_lstm_dim, batch_first=True, bidirectional=True)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.embedding(text).transpose(1, 2)).transpose(1, 2)  # (B, N, C)
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
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), self.dropout, training=True)
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
        attn_h = F.dropout(attn_h, self.cfg.attention_dropout, self.training)
        weights = self.attention(attn_h, processed_memory, torch.stack([weights, weights_cum], 1), pad_mask)
        weights_cum = weights_cum + weights
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)
        dec_h, dec_c = self.decoder_rnn(torch.cat([attn_h, context], -1), (dec_h, dec_c))
        dec_h = F.dropout(dec_h, self.cfg.decoder_dropout, self.training)
        out = torch.cat([dec_h, context], -1)
        frames = self.projection(out)  # (B, r * M)
        gate = self.gate(out)  # (B, r)
        return frames, gate, weights, [attn_h, attn_c, dec_h, dec_c, weights, weights_cum, context]

    def forward(self, memory: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor):
        """Teacher forcing: step d is fed the last frame of group d - 1 (a zero "go" frame first)."""
        b, m, t = mel.shape
        steps = t // self.r
        last_of_group = mel.transpose(1, 2).reshape(b, steps, self.r, m)[:, :, -1, :]  # (B, D, M)
        inputs = torch.cat([mel.new_zeros(b, 1, m), last_of_group[:, :-1]], 1)
        prenet_out = self.prenet(inputs)  # all steps at once: the prenet does not depend on the state
        processed_memory = self.attention.memory(memory)
        pad_mask = ~length_mask(text_lengths, memory.shape[1])
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


class Postnet(nn.Module):
    def __init__(self, n_mels: int, cfg: ModelConfig):
        super().__init__()
        layers = []
        sizes = [n_mels] + [cfg.postnet_channels] * (cfg.postnet_layers - 1) + [n_mels]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Conv1d(a, b, cfg.postnet_kernel, padding=cfg.postnet_kernel // 2), nn.BatchNorm1d(b)]
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
            layers.append(nn.Dropout(cfg.postnet_dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel)


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

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor) -> Output:
        memory = self.encoder(text, text_lengths)
        mel_out, gate, alignments = self.decoder(memory, text_lengths, mel)
        return Output(mel_out, mel_out + self.postnet(mel_out), gate, alignments)

    @torch.no_grad()
    def infer(self, text: torch.Tensor, text_lengths: torch.Tensor, max_steps: int | None = None) -> Output:
        memory = self.encoder(text, text_lengths)
        mel_out, gate, alignments, dec_lengths = self.decoder.infer(
            memory, text_lengths, max_steps or self.cfg.max_decoder_steps, self.cfg.gate_threshold)
        return Output(mel_out, mel_out + self.postnet(mel_out), gate, alignments, dec_lengths)


def guided_attention_penalty(alignments: torch.Tensor, text_lengths: torch.Tensor, dec_lengths: torch.Tensor,
                             sigma: float) -> torch.Tensor:
    """Tachibana et al. (2017) guided attention, normalized so that a weight of about 1-10 acts.

    W[d, n] = 1 - exp(-((n + 0.5)/N - (d + 0.5)/D)^2 / (2 sigma^2)) for valid tokens n < N and steps d < D.
    Per item: sum over text positions of A * W (the expected penalty of one decoder step, in [0, 1]), then the
    mean over valid decoder steps; the batch value is the mean over items. A diagonal alignment scores about 0,
    a uniform one about 0.5 for sigma 0.2. (A plain mean over the whole N x D region would be about 1/N of this,
    so a weight would have to be N times larger to act.)
    """
    b, d_max, n_max = alignments.shape
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
        out = model(batch.text, batch.text_lengths, batch.mel)
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
