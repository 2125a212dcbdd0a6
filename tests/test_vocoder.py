"""The HiFi-GAN generator: checkpoints in jik876/hifi-gan's layout (built here with random weights, weight-normed
as hifi-gan saves them), the weight norm folded at load, ``vocode`` and ``synthesize --vocoder`` from the CLI, and
one error line for each kind of bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from smart_tuner.tts.hifigan import Generator, HifiGanConfig, VocoderError, load_vocoder

CONFIGS = {
    "1": {"resblock": "1", "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
          "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 5],
          "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]]},
    "2": {"resblock": "2", "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
          "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 2], [2, 6]]},
}
AUDIO = {"num_mels": 80, "sampling_rate": 22050, "hop_size": 256, "n_fft": 1024, "win_size": 1024, "fmin": 0,
         "fmax": 8000, "segment_size": 8192, "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002}


def hifigan_files(root: Path, resblock: str = "1", parametrized: bool = False, **changes) -> tuple[Path, nn.Module]:
    """``root/g_00000000`` ({"generator": state_dict}, every convolution weight-normed) and ``root/config.json``;
    returns the checkpoint and the weight-normed module, whose output is the reference."""
    root.mkdir(parents=True, exist_ok=True)
    data = {**CONFIGS[resblock], **AUDIO, **changes}
    (root / "config.json").write_text(json.dumps(data))
    torch.manual_seed(0)
    model = Generator(HifiGanConfig.read(root / "config.json"))
    norm = torch.nn.utils.parametrizations.weight_norm if parametrized else torch.nn.utils.weight_norm
    with warnings.catch_warnings():  # the deprecated API is the one that saves weight_g/weight_v, as hifi-gan's do
        warnings.simplefilter("ignore", FutureWarning)
        for module in list(model.modules()):
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
                norm(module)
    with torch.no_grad():  # magnitudes unlike the directions' norms, so that folding them matters
        for name, p in model.named_parameters():
            if name.endswith(("weight_g", "original0")):
                p.mul_(torch.rand_like(p) + 0.5)
    path = root / "g_00000000"
    torch.save({"generator": model.state_dict()}, path)
    return path, model.eval()


@pytest.mark.parametrize(("resblock", "parametrized"), [("1", False), ("2", False), ("1", True)])
def test_the_folded_generator_speaks_as_the_weight_normed_one(tmp_path, resblock, parametrized):
    path, reference = hifigan_files(tmp_path, resblock, parametrized)
    keys = torch.load(path, weights_only=True)["generator"].keys()
    assert ("conv_pre.parametrizations.weight.original0" if parametrized else "conv_pre.weight_g") in keys
    assert any(k.startswith("resblocks.5.") for k in keys) and not any(k.startswith("resblocks.6.") for k in keys)
    vocoder = load_vocoder(path)
    mels = [torch.randn(80, 30) - 4, torch.randn(80, 17) - 4]
    waves = vocoder(mels)
    assert [len(w) for w in waves] == [30 * 256, 17 * 256]
    with torch.no_grad():
        expected = reference(mels[0][None])[0, 0]
    assert torch.allclose(waves[0], expected, atol=1e-5)
    assert waves[0].abs().max() <= 1


def test_vocode_writes_a_wav_per_mel_in_both_layouts(tmp_path, cli_main):
    path, _ = hifigan_files(tmp_path / "hifigan")
    np.save(tmp_path / "a.npy", np.random.randn(80, 40).astype(np.float32) - 4)
    np.save(tmp_path / "b.npy", np.random.randn(1, 80, 25).astype(np.float32) - 4)
    done = cli_main("vocode", "a.npy", "b.npy", "--vocoder", path, "--out", "wavs", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for stem, frames in (("a", 40), ("b", 25)):
        info = soundfile.info(str(tmp_path / "wavs" / f"{stem}.wav"))
        assert (info.samplerate, info.frames, info.subtype) == (22050, frames * 256, "PCM_16")
    assert "real-time factor" in done.stdout


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    """A folder with a generator and the bad inputs the cases below name (relative to it)."""
    root = tmp_path_factory.mktemp("bad_vocoder_input")
    hifigan_files(root / "hifigan")
    np.save(root / "good.npy", np.zeros((80, 10), np.float32))
    np.save(root / "wide.npy", np.zeros((64, 10), np.float32))
    torch.save({"state_dict": {}}, root / "tacotron.pt")
    other = root / "other"
    hifigan_files(other)
    (other / "config.json").write_text(json.dumps({**CONFIGS["1"], **AUDIO, "upsample_initial_channel": 64}))
    return root


@pytest.mark.parametrize(("args", "message"), [
    (("good.npy", "wide.npy", "--vocoder", "hifigan/g_00000000"), "wide.npy: shape (64, 10); expected (80, frames)"),
    (("good.npy", "--vocoder", "tacotron.pt"), "not a HiFi-GAN generator checkpoint"),
    (("good.npy", "--vocoder", "other/g_00000000"), "does not fit the tensors of"),
    (("good.npy", "--vocoder", "hifigan/g_00000000", "--vocoder-config", "absent.json"),
     "absent.json: no such vocoder config"),
    (("absent.npy", "--vocoder", "hifigan/g_00000000"), "absent.npy: no such mel file"),
], ids=["wide-mel", "not-a-generator", "wrong-config", "absent-config", "absent-mel"])
def test_bad_vocoder_input_is_one_line_and_writes_nothing(bad_inputs, cli_main, args, message):
    done = cli_main("vocode", *args, "--out", "wavs", "--device", "cpu", cwd=bad_inputs)
    assert done.returncode == 2, (args, done.stderr)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (bad_inputs / "wavs").exists()


def test_a_generator_whose_upsampling_misses_the_hop_is_refused(tmp_path):
    with pytest.raises(VocoderError, match=r"upsample_rates multiply to 256, not hop_size 200"):
        hifigan_files(tmp_path / "bad", hop_size=200)


def test_synthesize_speaks_through_the_vocoder(trained_en, cli_main, tmp_path):
    path, _ = hifigan_files(tmp_path / "hifigan")
    checkpoint = trained_en.checkpoint
    lines = tmp_path / "lines.txt"
    lines.write_text("a short one.\nand a second, longer sentence here.\nthird.\n")
    done = cli_main("synthesize", "--checkpoint", checkpoint, "--text-file", lines, "--out", "speech", "--mel",
               "--vocoder", path, "--batch-size", "2", "--no-progress", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"through {path}" in done.stdout
    for name in ("001", "002", "003"):
        frames = np.load(tmp_path / "speech" / f"{name}.npy").shape[1]
        assert soundfile.info(str(tmp_path / "speech" / f"{name}.wav")).frames == frames * 256
    (tmp_path / "hifigan" / "config.json").write_text(json.dumps({**CONFIGS["1"], **AUDIO, "sampling_rate": 16000}))
    mismatch = cli_main("synthesize", "--checkpoint", checkpoint, "--text", "hi.", "--out", "x", "--vocoder", path,
                   "--no-progress", cwd=tmp_path)
    assert mismatch.returncode == 2 and "sampling rate 16000 against 22050" in mismatch.stderr, mismatch.stderr

