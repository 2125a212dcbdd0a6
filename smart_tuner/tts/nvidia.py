"""NVIDIA's Tacotron 2 checkpoints (NVIDIA/tacotron2 and DeepLearningExamples) in our layout: the facts in one place.

Facts from NVIDIA/tacotron2 (``model.py``, ``layers.py``, ``text/symbols.py``, ``hparams.py``; no code taken):

- A checkpoint is ``{"state_dict": ..., "optimizer": ..., "iteration": ..., "learning_rate": ...}``;
  DeepLearningExamples' checkpoints hold the same key names with ``module.`` in front of each (a DDP model).
- Their linear layers (``LinearNorm``) wrap a ``linear_layer``, their convolutions (``ConvNorm``) a ``conv``; each
  encoder and postnet convolution is ``nn.Sequential(ConvNorm, BatchNorm1d)``.
- Their decoder emits one frame per step (r = 1) and one stop logit; their attention energy layer ``v`` has no
  bias. Ours has one: a conversion sets it to zero, which changes nothing (the same constant is added to every
  energy before a softmax).
- Symbols: pad ``_``, ``-``, the punctuation ``!'(),.:;?`` and space, ``A-Z``, ``a-z``, then the 84 ARPAbet
  phonemes prefixed with ``@``: 148 in all, no end-of-sequence symbol; unknown characters are dropped. Text is
  cleaned with their English cleaners (ASCII, lowercase, numbers, abbreviations, whitespace).
- Mels: 22050 Hz, n_fft 1024, hop 256, window 1024, 80 Slaney mels from 0 to 8000 Hz, natural log of the
  magnitudes clamped at 1e-5, not standardized.

Their ``hparams.py`` defaults are our ``tacotron2`` preset's sizes; the sizes of a converted model are read from
the tensors' shapes, so a checkpoint trained with other sizes converts too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import Config, build_config
from ..data.arpabet import ARPABET
from ..data.arpabet import PREFIX as ARPABET_PREFIX
from ..data.text import SymbolTable
from ..errors import UserError

SYMBOLS = (["_", "-"] + list("!'(),.:;? ") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
           + [ARPABET_PREFIX + p for p in ARPABET])
DDP_PREFIX = "module."


def symbol_table() -> SymbolTable:
    """NVIDIA's symbols, in their ids, with their English cleaning; no end-of-sequence or unknown symbol."""
    return SymbolTable(list(SYMBOLS), lowercase=True, cleaner="english", pad="_", eos=None, unk=None)


def _rule(pattern: str, ours: Callable[[re.Match], str]) -> tuple[re.Pattern, Callable[[re.Match], str]]:
    return re.compile(pattern), ours


# NVIDIA's parameter and buffer names -> ours. Our encoder is Sequential(conv, batch norm, ReLU, dropout) per
# layer and our postnet Sequential(conv, batch norm, [tanh], dropout): layer i's conv is item 4i, its norm 4i + 1.
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
NAME_RULES = [
    _rule(r"embedding\.weight", lambda m: "encoder.embedding.weight"),
    _rule(r"encoder\.convolutions\.(\d+)\.0\.conv\.(weight|bias)", lambda m: f"encoder.convs.{4 * int(m[1])}.{m[2]}"),
    _rule(rf"encoder\.convolutions\.(\d+)\.1\.{_BN}", lambda m: f"encoder.convs.{4 * int(m[1]) + 1}.{m[2]}"),
    _rule(r"encoder\.lstm\.((weight|bias)_(ih|hh)_l0(_reverse)?)", lambda m: f"encoder.lstm.{m[1]}"),
    _rule(r"decoder\.prenet\.layers\.(\d+)\.linear_layer\.weight", lambda m: f"decoder.prenet.layers.{m[1]}.weight"),
    _rule(r"decoder\.attention_rnn\.((weight|bias)_(ih|hh))", lambda m: f"decoder.attention_rnn.{m[1]}"),
    _rule(r"decoder\.attention_layer\.query_layer\.linear_layer\.weight", lambda m: "decoder.attention.query.weight"),
    _rule(r"decoder\.attention_layer\.memory_layer\.linear_layer\.weight",
          lambda m: "decoder.attention.memory.weight"),
    _rule(r"decoder\.attention_layer\.v\.linear_layer\.weight", lambda m: "decoder.attention.v.weight"),
    _rule(r"decoder\.attention_layer\.location_layer\.location_conv\.conv\.weight",
          lambda m: "decoder.attention.location_conv.weight"),
    _rule(r"decoder\.attention_layer\.location_layer\.location_dense\.linear_layer\.weight",
          lambda m: "decoder.attention.location_dense.weight"),
    _rule(r"decoder\.decoder_rnn\.((weight|bias)_(ih|hh))", lambda m: f"decoder.decoder_rnn.{m[1]}"),
    _rule(r"decoder\.linear_projection\.linear_layer\.(weight|bias)", lambda m: f"decoder.projection.{m[1]}"),
    _rule(r"decoder\.gate_layer\.linear_layer\.(weight|bias)", lambda m: f"decoder.gate.{m[1]}"),
    _rule(r"postnet\.convolutions\.(\d+)\.0\.conv\.(weight|bias)", lambda m: f"postnet.net.{4 * int(m[1])}.{m[2]}"),
    _rule(rf"postnet\.convolutions\.(\d+)\.1\.{_BN}", lambda m: f"postnet.net.{4 * int(m[1]) + 1}.{m[2]}"),
]
ATTENTION_BIAS = "decoder.attention.v.bias"  # ours only: set to zero
# Two names only NVIDIA's layout has: how a checkpoint is recognized.
SIGNATURE = ("embedding.weight", "decoder.attention_layer.query_layer.linear_layer.weight")


class ConversionError(UserError, ValueError):
    """A file looks like an NVIDIA checkpoint but cannot be converted; the message says why."""


def nvidia_state_dict(data: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict of a loaded NVIDIA checkpoint (``{"state_dict": ...}`` or a bare state_dict, DDP ``module.``
    prefixes removed), or None if ``data`` is not one."""
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        return None
    if all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    if not all(name in state for name in SIGNATURE):
        return None
    return state


def our_name(name: str) -> str | None:
    for pattern, ours in NAME_RULES:
        match = pattern.fullmatch(name)
        if match:
            return ours(match)
    return None


def to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA's tensors under our names (the attention bias added as zero). A name no rule knows is an error: a
    silently dropped tensor would give a model that loads and then speaks garbage."""
    converted, unknown = {}, []
    for name, tensor in state.items():
        ours = our_name(name)
        if ours is None:
            unknown.append(name)
        else:
            converted[ours] = tensor
    if unknown:
        raise ConversionError(f"{len(unknown)} tensors of the NVIDIA checkpoint have no place in our Tacotron 2: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    v = converted["decoder.attention.v.weight"]
    converted[ATTENTION_BIAS] = torch.zeros(1, dtype=v.dtype)
    return converted


def config_for(state: dict[str, torch.Tensor]) -> Config:
    """Our config of an NVIDIA model: the ``tacotron2`` preset with the sizes read from the tensors' shapes, NVIDIA's
    English cleaning and unstandardized log-mels."""
    def shape(name: str) -> tuple[int, ...]:
        return tuple(state[name].shape)

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    encoder_convs, postnet_convs = count("encoder.convolutions."), count("postnet.convolutions.")
    conv0 = shape("encoder.convolutions.0.0.conv.weight")
    location = shape("decoder.attention_layer.location_layer.location_conv.conv.weight")
    prenet = [shape(f"decoder.prenet.layers.{i}.linear_layer.weight")[0]
              for i in range(count("decoder.prenet.layers."))]
    post = shape("postnet.convolutions.0.0.conv.weight")
    frames_per_step = shape("decoder.gate_layer.linear_layer.weight")[0]
    n_mels = shape("decoder.linear_projection.linear_layer.weight")[0] // frames_per_step
    model = {
        "embedding_dim": shape("embedding.weight")[1],
        "encoder_conv_layers": encoder_convs,
        "encoder_kernel": conv0[2],
        "encoder_channels": conv0[0],
        "encoder_lstm_dim": shape("encoder.lstm.weight_hh_l0")[1],
        "attention_rnn_dim": shape("decoder.attention_rnn.weight_hh")[1],
        "decoder_rnn_dim": shape("decoder.decoder_rnn.weight_hh")[1],
        "attention_dim": shape("decoder.attention_layer.query_layer.linear_layer.weight")[0],
        "location_filters": location[0],
        "location_kernel": location[2],
        "prenet_dims": prenet,
        "postnet_channels": post[0],
        "postnet_kernel": post[2],
        "postnet_layers": postnet_convs,
        "r": shape("decoder.gate_layer.linear_layer.weight")[0],
    }
    return build_config({"preset": "tacotron2", "model": model, "audio": {"n_mels": n_mels},
                         "data": {"cleaner": "english", "lowercase": True, "mel_standardize": False}})


def check_symbols(state: dict[str, torch.Tensor]) -> None:
    rows = state["embedding.weight"].shape[0]
    if rows != len(SYMBOLS):
        raise ConversionError(f"the NVIDIA checkpoint's embedding has {rows} symbol rows; NVIDIA's English symbol "
                              f"set has {len(SYMBOLS)}, so its symbols are unknown: use it with --init-from and "
                              f"train.init_ignore='encoder\\.embedding\\..*' instead")


def convert(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Write a smart_tuner checkpoint with the weights of the NVIDIA checkpoint ``source``, NVIDIA's symbols, English
    cleaning and mel convention; every tensor is placed (a strict load checks it). Returns a summary."""
    from ..data.dataset import MelStats
    from . import build_family
    from . import checkpoint as ckpt

    data = ckpt.load_any(source)
    state = nvidia_state_dict(data)
    if state is None:
        kind = "a smart_tuner checkpoint" if ckpt.is_ours(data) else "not an NVIDIA Tacotron 2 checkpoint"
        raise ckpt.CheckpointError(f"{source}: {kind} (expected {{'state_dict': ...}} with NVIDIA's key names, "
                                   f"such as {SIGNATURE[1]!r})")
    try:
        check_symbols(state)
        weights = to_ours(state)
        config = config_for(state)
    except ConversionError as exc:
        raise ckpt.CheckpointError(f"{source}: cannot convert: {exc}") from None
    except KeyError as exc:
        raise ckpt.CheckpointError(f"{source}: cannot convert: it has no tensor {exc.args[0]!r} (an incomplete "
                                   "checkpoint, or not a Tacotron 2)") from None
    model = build_family(config).build(len(SYMBOLS))
    ckpt.load_weights(model, weights, source)  # strict: every tensor placed
    broken = [name for name, tensor in weights.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise ckpt.CheckpointError(f"{source}: {len(broken)} of its {len(weights)} tensors hold NaN or inf (first: "
                                   f"{broken[0]}): not a usable model; convert a checkpoint from before training "
                                   "diverged")
    iteration = data.get("iteration", data.get("epoch")) if isinstance(data, dict) else None
    ckpt.save_atomic({
        "format": ckpt.FORMAT, "step": 0, "model": model.state_dict(), "config": config.to_dict(),
        "symbols": symbol_table().to_dict(), "mel_stats": MelStats.identity(config.audio.n_mels).to_dict(),
        "source": {"kind": "nvidia", "file": Path(source).name,
                   "iteration": iteration if isinstance(iteration, int) else None},
    }, out)
    return {"tensors": len(state), "parameters": sum(t.numel() for t in model.parameters()), "out": str(out)}


def convert_command(source: str | Path, out: str | Path, force: bool = False) -> int:
    """``convert nvidia``: :func:`convert`, and one line saying what the new checkpoint holds. ``out`` is never the
    source, and an existing file is replaced only with ``force``."""
    from ..files import check_output_file

    check_output_file(out, inputs=(source,), replace=force)
    done = convert(source, out)
    print(f"converted {done['tensors']} tensors ({done['parameters']:,} parameters) into {done['out']}: NVIDIA's "
          f"symbols, English cleaning and unstandardized log-mels")
    return 0
