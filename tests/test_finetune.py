"""Warm start (``train.init_from``): weights by name, embedding rows by symbol, ignore patterns, shape mismatches
skipped and reported, frozen modules; and the unstandardized mel convention a converted NVIDIA model needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smart_tuner import cli
from smart_tuner.config import ConfigError
from smart_tuner.data.audio import MelExtractor, load_wav, trim_silence
from smart_tuner.data.dataset import prepare_data
from smart_tuner.train.trainer import Trainer, TrainingError
from smart_tuner.tts import build_family
from smart_tuner.tts.checkpoint import load as load_checkpoint
from smart_tuner.tts.warm_start import WarmStartError, read_source, transfer_weights

from .conftest import tiny_config


@pytest.fixture(scope="module")
def pretrained(corpus_en, tmp_path_factory):
    """A tiny model trained 8 steps on the English demo corpus: its checkpoint."""
    tmp = tmp_path_factory.mktemp("pretrained")
    config = tiny_config(corpus_en, tmp, train={"max_steps": 8, "eval_every": 8, "lr": 3e-3})
    Trainer(config, tmp / "run", progress=False).fit()
    return tmp / "run" / "checkpoints" / "last.pt"


def test_shared_symbols_copy_exactly_their_rows(pretrained, corpus_ru, tmp_path):
    source = load_checkpoint(pretrained)
    config = tiny_config(corpus_ru, tmp_path)
    data = prepare_data(config)
    family = build_family(config)
    model = family.build(len(data.symbols))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_weights(model, family, data.symbols, read_source(pretrained, family))

    theirs = source["symbols"]["symbols"]
    rows = model.state_dict()["encoder.embedding.weight"]
    shared = [s for s in data.symbols.symbols if s in theirs]
    assert {"<pad>", "<eos>", "<unk>", " ", "."} <= set(shared) and len(shared) < len(data.symbols)  # Cyrillic: new
    for i, symbol in enumerate(data.symbols.symbols):
        expected = (source["model"]["encoder.embedding.weight"][theirs.index(symbol)] if symbol in theirs
                    else fresh["encoder.embedding.weight"][i])
        assert torch.equal(rows[i], expected), symbol
    embedding = next(t for t in report.tensors if t.name == "encoder.embedding.weight")
    assert embedding.status == "remapped" and embedding.detail.startswith(f"{len(shared)} of {len(data.symbols)}")
    for name, value in model.state_dict().items():  # everything else is the source's
        if name != "encoder.embedding.weight":
            assert torch.equal(value, source["model"][name]), name
    assert report.count("loaded") == len(fresh) - 1 and report.count("skipped") == 0


def test_ignore_patterns_and_shape_mismatches_are_skipped_and_reported(pretrained, corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, model={"postnet_channels": 24})  # the postnet's inner sizes differ
    data = prepare_data(config)
    family = build_family(config)
    model = family.build(len(data.symbols))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_weights(model, family, data.symbols, read_source(pretrained, family), ignore=[r"decoder\.gate\."])
    status = {t.name: (t.status, t.detail) for t in report.tensors}
    assert status["decoder.gate.weight"] == ("skipped", "ignored (train.init_ignore 'decoder\\\\.gate\\\\.')")
    kind, why = status["postnet.net.0.weight"]
    assert kind == "skipped" and "shape mismatch: source 16x80x5" in why
    assert status["postnet.net.16.bias"][0] == "loaded"  # the last conv's output (80 mels) still fits
    state = model.state_dict()
    assert torch.equal(state["decoder.gate.weight"], fresh["decoder.gate.weight"])
    assert torch.equal(state["postnet.net.0.weight"], fresh["postnet.net.0.weight"])
    assert "skipped" in report.table() and report.count("loaded") > 20

    with pytest.raises(WarmStartError, match="no learned value of the checkpoint fits this model"):
        transfer_weights(model, family, data.symbols, read_source(pretrained, family), ignore=[".*"])
    with pytest.raises(ConfigError, match="train.init_ignore: '\\(' is not a regular expression"):
        transfer_weights(model, family, data.symbols, read_source(pretrained, family), ignore=["("])


def test_a_warm_run_writes_its_report_and_keeps_frozen_modules_fixed(pretrained, corpus_en, tmp_path):
    source = load_checkpoint(pretrained)["model"]
    config = tiny_config(corpus_en, tmp_path, train={"init_from": str(pretrained), "freeze_modules": ["encoder"],
                                                     "freeze_steps": 4, "max_steps": 4, "eval_every": 4})
    result = Trainer(config, tmp_path / "frozen", progress=False).fit()
    assert result.status == "completed"
    report = json.loads((tmp_path / "frozen" / "init_report.json").read_text())
    assert report["kind"] == "smart_tuner" and report["counts"]["skipped"] == 0 and report["counts"]["remapped"] == 1
    after = load_checkpoint(tmp_path / "frozen" / "checkpoints" / "last.pt")
    assert after["step"] == 4 and after["optimizer"]["state"]  # a fresh optimizer that has stepped
    params = dict(build_family(config).build(len(after["symbols"]["symbols"])).named_parameters())
    changed = {name for name in params if not torch.equal(after["model"][name], source[name])}
    assert not {name for name in changed if name.startswith("encoder.")}  # the encoder stayed fixed
    # The rest trained (the attention's v bias may not move: a constant added to every energy has no gradient).
    assert changed >= {name for name in params if not name.startswith("encoder.")} - {"decoder.attention.v.bias"}

    # Frozen for 2 of 4 steps: the encoder trains afterwards.
    config = tiny_config(corpus_en, tmp_path, train={"init_from": str(pretrained), "freeze_modules": ["encoder"],
                                                     "freeze_steps": 2, "max_steps": 4, "eval_every": 4})
    Trainer(config, tmp_path / "thawed", progress=False).fit()
    thawed = load_checkpoint(tmp_path / "thawed" / "checkpoints" / "last.pt")["model"]
    assert not torch.equal(thawed["encoder.convs.0.weight"], source["encoder.convs.0.weight"])

    bad = tiny_config(corpus_en, tmp_path, train={"freeze_modules": ["encoder.nothing"], "freeze_steps": 2})
    with pytest.raises(TrainingError, match="train.freeze_modules: no module named 'encoder.nothing'"):
        Trainer(bad, tmp_path / "bad", progress=False)


@pytest.mark.slow
def test_a_warm_start_evaluates_far_better_than_a_fresh_one(corpus_en, tmp_path):
    """The first evaluation (after 2 steps) of a run warm-started from a model that aligned (150 steps with a
    strong guided-attention weight; teacher-forced diagonality about 0.96) against a fresh run of the same config.
    A tiny model's teacher-forced mel terms move little in 150 steps; its attention and its stop gate are what it
    learned, and they carry over."""
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 150, "eval_every": 150, "lr": 5e-3,
                                                     "batch_size": 8}, loss={"ga_weight": 10.0})
    source = Trainer(config, tmp_path / "source", progress=False).fit().last_eval
    assert source.diagonality > 0.5, (source.diagonality, source.val_loss)  # the pretraining (mostly) aligned

    def first_eval(**train):
        config = tiny_config(corpus_en, tmp_path, train={"max_steps": 2, "eval_every": 2, **train})
        return Trainer(config, tmp_path / f"run-{len(train)}", progress=False).fit().last_eval

    fresh, warm = first_eval(), first_eval(init_from=str(tmp_path / "source" / "checkpoints" / "last.pt"))
    assert warm.diagonality > fresh.diagonality + 0.3, (warm.diagonality, fresh.diagonality)
    assert warm.val_losses["gate"] < 0.3 * fresh.val_losses["gate"], (warm.val_losses, fresh.val_losses)
    assert warm.val_loss < 0.9 * fresh.val_loss, (warm.val_loss, fresh.val_loss)


def test_train_init_from_a_missing_file_is_one_error_line(corpus_en, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--corpus", str(corpus_en), "--init-from", str(tmp_path / "nope.pt"),
                     "--set", "tracking.enabled=false", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                     "--max-steps", "1", "--no-progress", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nope.pt'}: no such checkpoint"]


def test_unstandardized_mels_are_the_log_mels_as_computed(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, data={"mel_standardize": False})
    data = prepare_data(config)
    assert data.stats.is_identity and float(data.stats.pad_value[0]) == pytest.approx(np.log(1e-5))
    _text, mel = data.train[0]
    wav = trim_silence(load_wav(corpus_en / "wavs" / f"{data.train.ids[0]}.wav", 22050), 40.0, 1024, 256)
    expected = MelExtractor(22050, 1024, 256, 1024, 80, 0.0, 8000.0)(wav)
    assert mel.shape == expected.shape and torch.allclose(mel, expected, atol=1e-5)
    assert float(mel.min()) >= np.log(1e-5) - 1e-6  # natural log, clamped at 1e-5
