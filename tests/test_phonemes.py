"""Phoneme input (``data.text: phonemes``): eSpeak NG through phonemizer, the symbol table that names its voice, the
cache, ``data check --phonemes``, and training and synthesis from the CLI in English and Russian."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from smart_tuner.config import ConfigError, build_config
from smart_tuner.data import phonemes
from smart_tuner.data.phonemes import PhonemeCache, PhonemeError, phonemize
from smart_tuner.data.text import SymbolTable

from .conftest import TINY_MODEL


def test_phonemes_keep_stress_word_boundaries_and_punctuation():
    english, russian = phonemize(["hello, world!"], "en-us")[0], phonemize(["замок стоит."], "ru")[0]
    assert "ˈ" in english and english.endswith("!") and ", " in english and len(english.split(" ")) == 2
    assert "ˈ" in russian and russian.endswith(".") and not any("а" <= c <= "я" for c in russian)
    assert phonemize(["", "hello, world!"], "en-us") == ["", english]  # an empty text stays in its place


def test_an_unknown_voice_is_one_clear_error():
    with pytest.raises(PhonemeError, match=r"data\.phoneme_language: .*xx-nope.*en-us"):
        phonemize(["hello"], "xx-nope")


def test_a_phoneme_table_round_trips_and_an_old_table_reads_characters():
    table = SymbolTable.from_texts(["Hello, world!"], phonemes="en-us")
    assert table.frontend == f"espeak-ng v{phonemes.FRONTEND_VERSION} en-us" and "ˈ" in table.symbols
    assert SymbolTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    assert table.encode("hello, world!") == table.encode("Hello,   world!")  # cleaned, then phonemized
    old = {"symbols": ["<pad>", "<eos>", "<unk>", "a", "b"], "lowercase": True}  # a table saved before phonemes
    assert SymbolTable.from_dict(old).phonemes is None and SymbolTable.from_dict(old).clean("AB") == "ab"


def test_phonemes_of_a_corpus_of_ones_own_need_its_language():
    with pytest.raises(ConfigError, match="data.text: phonemes needs data.phoneme_language"):
        build_config({"data": {"corpus": "/some/corpus", "text": "phonemes"}})
    with pytest.raises(ConfigError, match="data.phoneme_language: 'EN US' is not valid"):
        build_config({"data": {"text": "phonemes", "phoneme_language": "EN US"}})
    assert build_config({"data": {"text": "phonemes"}}).data.phoneme_language == ""  # the demo corpus's voice


def test_the_cache_is_read_back_and_a_damaged_one_is_made_again(tmp_path):
    PhonemeCache(tmp_path, "en-us").save(["the cache holds this"])
    path = tmp_path / "phonemes" / f"en-us-v{phonemes.FRONTEND_VERSION}.json"
    saved = json.loads(path.read_text())
    phonemes._memo.clear()
    PhonemeCache(tmp_path, "en-us")
    assert phonemes._memo[("en-us", "the cache holds this")] == saved["the cache holds this"]
    path.write_text("{not json")
    PhonemeCache(tmp_path, "en-us").save(["the cache holds this"])
    assert json.loads(path.read_text()) == saved


@pytest.mark.parametrize(("corpus", "voice"), [("corpus_en", "en-us"), ("corpus_ru", "ru")])
def test_train_on_phonemes_then_synthesize_plain_text(corpus, voice, request, tmp_path, cli_main):
    corpus = request.getfixturevalue(corpus)
    config = {"preset": "demo", "model": dict(TINY_MODEL),
              "data": {"corpus": str(corpus), "val_size": 4, "free_running_sentences": 2,
                       "cache_dir": str(tmp_path / "cache"),
                       "text": "phonemes", "phoneme_language": voice},
              "train": {"batch_size": 4, "max_steps": 4, "eval_every": 2, "num_threads": 1},
              "tracking": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    trained = cli_main("train", "--config", "c.yaml", "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["symbols"]["phonemes"] == voice and "ˈ" in state["symbols"]["symbols"]
    cached = json.loads((tmp_path / "cache" / "phonemes" / f"{voice}-v{phonemes.FRONTEND_VERSION}.json").read_text())
    assert len(cached) == {"en-us": 24, "ru": 16}[voice]  # every training and validation text

    first_line = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()[0].split("|")[1]
    spoken = cli_main("synthesize", "--checkpoint", "run/checkpoints/last.pt", "--text", first_line.upper(), "--out",
                      "speech", "--no-progress", cwd=tmp_path)
    assert spoken.returncode == 0, spoken.stderr
    assert (tmp_path / "speech" / "001.wav").stat().st_size > 44


def test_data_check_lists_the_lines_a_voice_cannot_read(corpus_ru, tmp_path, cli_main):
    corpus = tmp_path / "ru"
    shutil.copytree(corpus_ru, corpus)
    lines = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()
    uid = lines[2].split("|")[0]
    lines[2] = f"{uid}|Привет hello мир.|Привет hello мир."
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    checked = cli_main("data", "check", corpus, "--phonemes", "ru", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"metadata.csv:3: {uid}: eSpeak NG (ru) read words of it as en" in checked.stdout
    assert checked.stdout.strip().endswith("16 usable, 0 bad, 1 that eSpeak NG (ru) cannot read")
