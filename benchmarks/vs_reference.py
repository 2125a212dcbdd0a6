"""One Tacotron 2 training step, ours against NVIDIA/tacotron2's model code, side by side at the same size.

Get the reference (nothing of it is in this project): a checkout of NVIDIA/tacotron2 (github.com/NVIDIA/tacotron2),
any commit, e.g. ``git clone <its URL> /tmp/tacotron2``; its model needs only torch. Then::

    python benchmarks/vs_reference.py --reference /tmp/tacotron2 [--device cpu|cuda] [--threads 2]
                                      [--batch B --tokens N --frames T] [--repeats 4]

Both models are built at the paper's sizes (their hparams defaults, our ``tacotron2`` preset: the same 84 tensors
up to names, ours one more, the attention ``v`` bias), fed one random batch of the same shapes (text lengths
descending, as their encoder requires), and each takes full training steps (forward, its own loss, backward,
Adam), alternated: ours (fast path), theirs, ours (step-by-step path). Defaults: batch 8, 90 tokens, 300 frames on
CPU; LJSpeech-like batch 64, 150 tokens, 570 frames on CUDA. Prints the median seconds per step and the ratios.

Two things in the reference are not model code and are replaced here, without changing what is timed:
``utils.get_mask_from_lengths`` allocates a ``torch.cuda.LongTensor`` (no CPU run possible), so a device-agnostic
mask of the same values stands in; ``layers.py`` imports librosa for its mel STFT (not used by the model), so a stub
module stands in when librosa is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from smart_tuner.config import build_config
from smart_tuner.tts.base import count_parameters
from smart_tuner.tts.tacotron2 import Tacotron2, Tacotron2Loss

# NVIDIA/tacotron2 hparams.py defaults that size the model (facts from their repository).
REFERENCE_HPARAMS = dict(
    n_mel_channels=80, symbols_embedding_dim=512, encoder_kernel_size=5, encoder_n_convolutions=3,
    encoder_embedding_dim=512, n_frames_per_step=1, decoder_rnn_dim=1024, prenet_dim=256, max_decoder_steps=1000,
    gate_threshold=0.5, p_attention_dropout=0.1, p_decoder_dropout=0.1, attention_rnn_dim=1024, attention_dim=128,
    attention_location_n_filters=32, attention_location_kernel_size=31, postnet_embedding_dim=512,
    postnet_kernel_size=5, postnet_n_convolutions=5, mask_padding=True, fp16_run=False)
N_SYMBOLS = 148  # len(text.symbols) in their repository; the same for ours here


def import_reference(path: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Their ``model`` and ``loss_function`` modules, imported from the checkout at ``path``."""
    if not (path / "model.py").is_file() or not (path / "layers.py").is_file():
        raise SystemExit(f"error: {path} is not a NVIDIA/tacotron2 checkout (no model.py / layers.py); see --help")
    try:
        importlib.import_module("librosa")
    except ImportError:  # only their TacotronSTFT uses it
        librosa = types.ModuleType("librosa")
        librosa.filters = types.SimpleNamespace(mel=None)
        librosa.util = types.SimpleNamespace(pad_center=None, tiny=None, normalize=None)
        sys.modules.update({"librosa": librosa, "librosa.filters": librosa.filters, "librosa.util": librosa.util})
    sys.path.insert(0, str(path))
    utils = importlib.import_module("utils")

    def get_mask_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(int(lengths.max()), device=lengths.device)
        return ids[None, :] < lengths[:, None]

    utils.get_mask_from_lengths = get_mask_from_lengths
    model = importlib.import_module("model")
    model.get_mask_from_lengths = get_mask_from_lengths
    return model, importlib.import_module("loss_function")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch: int, tokens: int, frames: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text_lengths = torch.linspace(tokens, tokens * 0.7, batch).long()  # descending, as their encoder requires
    mel_lengths = torch.linspace(frames, frames * 0.7, batch).long()
    text = torch.randint(1, N_SYMBOLS, (batch, tokens), generator=generator)
    text[torch.arange(tokens)[None, :] >= text_lengths[:, None]] = 0
    mel = torch.randn(batch, 80, frames, generator=generator) - 4.0
    gate = (torch.arange(frames)[None, :] >= mel_lengths[:, None] - 1).float()
    return [t.to(device) for t in (text, text_lengths, mel, mel_lengths, gate)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="a NVIDIA/tacotron2 checkout")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--repeats", type=int, default=4, help="timed steps of each model (after one warm-up)")
    parser.add_argument("--no-stepwise", "--no-eager", dest="no_stepwise", action="store_true",
                        help="skip our step-by-step path (train.execution: stepwise)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    batch, tokens, frames = args.batch or (64 if cuda else 8), args.tokens or (150 if cuda else 90), \
        args.frames or (570 if cuda else 300)
    their_model, their_loss = import_reference(args.reference.resolve())

    torch.manual_seed(0)
    theirs = their_model.Tacotron2(types.SimpleNamespace(n_symbols=N_SYMBOLS, **REFERENCE_HPARAMS)).to(device)
    config = build_config({"preset": "tacotron2"})
    ours = Tacotron2(N_SYMBOLS, 80, config.model).to(device)
    text, text_lengths, mel, mel_lengths, gate = make_batch(batch, tokens, frames, device)
    our_loss, their_criterion = Tacotron2Loss(config.loss, config.model.r).to(device), their_loss.Tacotron2Loss()
    optimizers = {"ours": torch.optim.Adam(ours.parameters(), 1e-3),
                  "theirs": torch.optim.Adam(theirs.parameters(), 1e-3)}

    def our_step(fast: bool) -> None:
        out = ours(text, text_lengths, mel, mel_lengths, fast=fast)
        loss = our_loss(out, mel, mel_lengths, gate, text_lengths, ga_weight=2.0)["loss"]
        optimizers["ours"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["ours"].step()

    def their_step() -> None:
        out = theirs((text, text_lengths, mel, int(text_lengths.max()), mel_lengths))
        loss = their_criterion(out, (mel, gate))
        optimizers["theirs"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["theirs"].step()

    runs = {"ours (fast)": lambda: our_step(True), "NVIDIA": their_step}
    if not args.no_stepwise:
        runs["ours (step-by-step)"] = lambda: our_step(False)
    where = (f"device {torch.cuda.get_device_name(device)}" if cuda
             else f"device {device} ({torch.get_num_threads()} threads)")
    print(where,
          f"batch {batch}, {tokens} tokens, {frames} frames; parameters: ours {count_parameters(ours):,}, "
          f"NVIDIA {count_parameters(theirs):,}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):  # the first round warms up (allocator, kernels)
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if repeat:
                times[name].append(time.perf_counter() - start)
        if repeat:
            print(f"round {repeat}: " + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in runs), flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    real_frames = int(mel_lengths.sum())
    for name, seconds in median.items():
        print(f"{name:>20}: {seconds:.3f} s per step, {real_frames / seconds:,.0f} mel frames/s")
    print(f"speed-up of ours (fast) over NVIDIA: {median['NVIDIA'] / median['ours (fast)']:.2f}x")
    if "ours (step-by-step)" in median:
        print(f"speed-up of ours (fast) over ours (step-by-step): "
              f"{median['ours (step-by-step)'] / median['ours (fast)']:.2f}x")


if __name__ == "__main__":
    main()
