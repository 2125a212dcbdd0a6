"""``synthesize``: a demo checkpoint speaks (WAV, alignment PNG, log-mel .npy with the documented shapes), the same
seed gives the same output, and every error case is one ``error:`` line with exit status 2."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from smart_tuner import cli


@pytest.fixture
def checkpoint(trained_en):
    """The session's tiny English checkpoint (conftest.trained_en: its stop gate never fires, so every sentence
    decodes several steps)."""
    return trained_en.checkpoint


@pytest.fixture
def speak(capsys):
    def run(*args):
        code = cli.main(["synthesize", *map(str, args), "--no-progress"])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def one_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_synthesize_writes_wav_png_and_mel(checkpoint, tmp_path, cli_main):
    text = tmp_path / "lines.txt"
    text.write_text("The quick brown fox.\nA second, longer sentence to say!\nhi\n", encoding="utf-8")
    out = tmp_path / "out"
    result = cli_main("synthesize", "--checkpoint", checkpoint, "--text-file", text, "--out", out, "--mel", "--seed", 7,
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line[:4] in
                 ("001:", "002:", "003:")]
    assert len(summaries) == 3
    for line in summaries:
        assert " frames, " in line and " s, " in line and "diagonality " in line
        assert "stopped" in line or "hit the step limit" in line
    for number in (1, 2, 3):
        mel = np.load(out / f"{number:03d}.npy")
        frames = mel.shape[1]
        assert mel.dtype == np.float32 and mel.shape[0] == 80 and frames % 4 == 0 and 4 <= frames <= 240
        assert mel.min() >= np.log(1e-5) - 1.0  # unstandardized natural-log mels, around the silence floor or above
        wav, rate = sf.read(out / f"{number:03d}.wav")
        assert rate == 22050 and wav.ndim == 1 and len(wav) == (max(frames, 5) - 1) * 256
        assert (out / f"{number:03d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{frames} frames" in summaries[number - 1]


def test_the_seed_makes_output_reproducible(checkpoint, tmp_path, speak):
    def mel(seed, name):
        assert speak("--checkpoint", checkpoint, "--text", "hello there.", "--out", tmp_path / name, "--mel",
                     "--seed", seed).returncode == 0
        return np.load(tmp_path / name / "001.npy")

    assert np.array_equal(mel(3, "a"), mel(3, "b"))
    first, other = mel(3, "c"), mel(4, "d")
    assert first.shape != other.shape or not np.array_equal(first, other)  # prenet dropout is on


def test_missing_characters_are_listed_or_dropped(checkpoint, tmp_path, speak):
    line = one_error(speak("--checkpoint", checkpoint, "--text", "hello ж world ©", "--out", tmp_path / "o"))
    assert "characters not in the checkpoint's symbol table: '©' 'ж'" in line and "--drop-missing" in line
    assert not (tmp_path / "o").exists()
    result = speak("--checkpoint", checkpoint, "--text", "hello ж world ©", "--out", tmp_path / "o", "--drop-missing")
    assert result.returncode == 0 and (tmp_path / "o" / "001.wav").is_file()
    assert "nothing left to say" in one_error(speak("--checkpoint", checkpoint, "--text", "жж", "--out",
                                                    tmp_path / "o", "--drop-missing"))


def test_error_cases_are_one_line(checkpoint, tmp_path, speak):
    out = tmp_path / "o"
    empty_text = speak("--checkpoint", checkpoint, "--text", "  ", "--out", out)
    assert one_error(empty_text) == "error: --text: the text is empty"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert one_error(speak("--checkpoint", checkpoint, "--text-file", empty, "--out", out)) == (
        f"error: {empty}: the file holds no text")
    gap = tmp_path / "gap.txt"
    gap.write_text("one line.\n\nanother line.\n", encoding="utf-8")
    assert one_error(speak("--checkpoint", checkpoint, "--text-file", gap, "--out", out)).startswith(
        f"error: {gap}:2: empty line")
    assert one_error(speak("--checkpoint", tmp_path / "none.pt", "--text", "hi", "--out", out)) == (
        f"error: {tmp_path / 'none.pt'}: no such checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert "not a smart_tuner checkpoint" in one_error(speak("--checkpoint", other, "--text", "hi", "--out", out))
    nvidia = tmp_path / "nvidia.pt"
    torch.save({"state_dict": {"embedding.weight": torch.zeros(148, 4),
                               "decoder.attention_layer.query_layer.linear_layer.weight": torch.zeros(2, 2)}}, nvidia)
    assert "convert it first: python -m smart_tuner convert nvidia" in one_error(
        speak("--checkpoint", nvidia, "--text", "hi", "--out", out))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    assert "not a readable checkpoint" in one_error(speak("--checkpoint", garbage, "--text", "hi", "--out", out))
    assert "name one checkpoint" in one_error(speak("--text", "hi", "--out", out))
    assert not out.exists()


def test_from_study_speaks_with_the_best_trials_checkpoint(checkpoint, tmp_path, speak):
    import optuna

    storage = f"sqlite:///{tmp_path / 'speech.db'}"
    study = optuna.create_study(study_name="speech", storage=storage)
    run_dir = checkpoint.parent.parent
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs={"run_dir": str(tmp_path / "worse")}))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"run_dir": str(run_dir)}))
    result = speak("--from-study", "speech", "--storage", storage, "--text", "hello.", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert f"from {run_dir / 'checkpoints' / 'best.pt'}" in result.stdout and (tmp_path / "o" / "001.wav").is_file()
    assert "name one checkpoint" in one_error(speak("--from-study", "speech", "--storage", storage, "--checkpoint",
                                                    checkpoint, "--text", "hi", "--out", tmp_path / "p"))
