"""Tests for the eSpeak-synthesized demo corpus (smart_tuner.data.demo / .espeak)."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from smart_tuner.data import demo
from smart_tuner.data.demo import build_demo_corpus, generate_sentences
from smart_tuner.data.espeak import EspeakError, EspeakSynthesizer
from smart_tuner.paths import demo_corpus_dir

CYRILLIC = re.compile(r"[А-Яа-яЁё]")


def read_metadata(corpus):
    lines = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()
    return [line.split("|") for line in lines]


def file_mtimes(corpus):
    return {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_corpus_is_ljspeech_with_audible_audio(tmp_path, lang):
    size = 12
    corpus = build_demo_corpus(tmp_path / "corpus", lang=lang, size=size, seed=7)
    assert corpus == tmp_path / "corpus"

    rows = read_metadata(corpus)
    assert len(rows) == size
    lengths, durations = [], []
    for row in rows:
        assert len(row) == 3
        utt_id, text, normalized = row
        assert re.fullmatch(rf"demo_{lang}_\d{{4}}", utt_id)
        assert text == normalized
        assert 3 <= len(text.split()) <= 12
        assert text[-1] in ".!?"
        assert bool(CYRILLIC.search(text)) == (lang == "ru")

        path = corpus / "wavs" / f"{utt_id}.wav"
        info = sf.info(path)
        assert (info.channels, info.samplerate, info.subtype) == (1, 22050, "PCM_16")
        audio, _ = sf.read(path, dtype="float32")
        assert np.sqrt(np.mean(audio**2)) > 0.01  # speech, not silence
        lengths.append(len(text))
        durations.append(len(audio) / info.samplerate)

    assert len({row[0] for row in rows}) == size
    # Longer texts take longer to say; a tolerant check on the whole set.
    assert np.corrcoef(lengths, durations)[0, 1] > 0.5

    manifest = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    assert {k: manifest[k] for k in ("lang", "size", "seed", "sample_rate")} == {
        "lang": lang, "size": size, "seed": 7, "sample_rate": 22050}
    assert manifest["generator_version"] == demo.GENERATOR_VERSION
    # Nothing left over from the temporary build directory.
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_sentences_are_deterministic_distinct_and_bounded(lang):
    sentences = generate_sentences(lang, 300, seed=3)
    assert sentences == generate_sentences(lang, 300, seed=3)
    assert sentences != generate_sentences(lang, 300, seed=4)
    assert len(set(sentences)) == 300
    assert all(3 <= len(s.split()) <= 12 and s[-1] in ".!?" for s in sentences)
    assert all(s[0].isupper() for s in sentences)
    # Varied, not a handful of templates with one word swapped.
    assert len({s.split()[0] for s in sentences}) >= 5
    assert len({w for s in sentences for w in s.split()}) >= 100


def test_same_args_give_same_texts(tmp_path):
    a = build_demo_corpus(tmp_path / "a", lang="ru", size=8, seed=11)
    b = build_demo_corpus(tmp_path / "b", lang="ru", size=8, seed=11)
    assert read_metadata(a) == read_metadata(b)
    assert [r[1] for r in read_metadata(a)] == generate_sentences("ru", 8, seed=11)


def test_second_call_reuses_corpus(tmp_path, monkeypatch):
    corpus = build_demo_corpus(tmp_path / "c", lang="en", size=8)
    before = file_mtimes(corpus)

    def no_synthesis(self, text, voice):
        raise AssertionError("corpus was re-synthesized")

    monkeypatch.setattr(EspeakSynthesizer, "synthesize", no_synthesis)
    assert build_demo_corpus(tmp_path / "c", lang="en", size=8) == corpus
    assert file_mtimes(corpus) == before

    # force=True does rebuild.
    monkeypatch.undo()
    build_demo_corpus(tmp_path / "c", lang="en", size=8, force=True)
    after = file_mtimes(corpus)
    assert sorted(p.name for p in after) == sorted(p.name for p in before)
    assert after != before


def test_default_dir_is_used_and_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SMART_TUNER_DATA", str(tmp_path / "store"))
    assert demo_corpus_dir("ru", 8) == tmp_path / "store" / "demo-ru-8"
    assert build_demo_corpus(lang="ru", size=8) == tmp_path / "store" / "demo-ru-8"
    assert (tmp_path / "store" / "demo-ru-8" / "metadata.csv").is_file()


def test_foreign_directory_is_never_touched(tmp_path):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(ValueError, match="mine"):
            build_demo_corpus(user_dir, lang="en", size=8, force=force)
    assert [p.name for p in user_dir.iterdir()] == ["notes.txt"]


def test_demo_corpus_with_other_settings_needs_force(tmp_path):
    corpus = build_demo_corpus(tmp_path / "c", lang="en", size=8, seed=1)
    with pytest.raises(ValueError, match="force"):
        build_demo_corpus(corpus, lang="en", size=8, seed=2)
    with pytest.raises(ValueError):
        build_demo_corpus(corpus, lang="ru", size=8, seed=1)
    assert json.loads((corpus / "corpus.json").read_text())["seed"] == 1

    build_demo_corpus(corpus, lang="en", size=8, seed=2, force=True)
    assert json.loads((corpus / "corpus.json").read_text())["seed"] == 2
    assert [r[1] for r in read_metadata(corpus)] == generate_sentences("en", 8, seed=2)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    real = EspeakSynthesizer.synthesize
    calls = []

    def flaky(self, text, voice):
        calls.append(text)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return real(self, text, voice)

    monkeypatch.setattr(EspeakSynthesizer, "synthesize", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        build_demo_corpus(tmp_path / "c", lang="en", size=8)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="en.*ru"):
        build_demo_corpus(tmp_path / "x", lang="de", size=8)
    for size in (0, -3):
        with pytest.raises(ValueError, match="size"):
            build_demo_corpus(tmp_path / "x", lang="en", size=size)
    assert not (tmp_path / "x").exists()


def test_synthesizer_output_and_unknown_voice():
    synth = EspeakSynthesizer()
    assert synth.sample_rate > 0
    audio = synth.synthesize("Привет, как дела?", "ru")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.3 < len(audio) / synth.sample_rate < 5
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    with pytest.raises(EspeakError, match="no-such-voice"):
        synth.synthesize("hello", "no-such-voice")
    # The failed selection does not break later calls.
    assert len(synth.synthesize("hello", "en-us")) > 0


# ------------------------------------------------------------------------------------ longer utterances
def test_a_word_range_makes_longer_utterances_and_the_default_is_unchanged():
    default = generate_sentences("en", 30, seed=7)
    assert generate_sentences("en", 30, seed=7, words=(3, 12)) == default  # existing corpora stay as they were
    long = generate_sentences("en", 30, seed=7, words=(15, 30))
    assert len(set(long)) == 30 and all(15 <= len(t.split()) <= 30 for t in long)
    assert sum(t.count(".") + t.count("?") + t.count("!") for t in long) >= 2 * 30  # several sentences each
    assert generate_sentences("en", 10, seed=7, words=(15, 30)) == long[:10]  # a prefix, as for the default
    ru = generate_sentences("ru", 10, seed=7, words=(20, 40))
    assert all(20 <= len(t.split()) <= 40 for t in ru)
    for bad in [(30, 15), (0, 5), (1, 2), (10, 500)]:
        with pytest.raises(ValueError, match="LOW-HIGH"):
            generate_sentences("en", 5, words=bad)


def test_data_demo_words_writes_long_utterances_in_their_own_directory(tmp_path, cli_main):
    env = {"SMART_TUNER_DATA": str(tmp_path / "data")}
    result = cli_main("data", "demo", "--size", 3, "--words", "15-30", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "demo-en-3-w15-30"
    rows = [line.split("|") for line in (out / "metadata.csv").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(15 <= len(text.split()) <= 30 for _, text, _ in rows)
    seconds = [sf.info(out / "wavs" / f"{uid}.wav").duration for uid, _, _ in rows]
    assert min(seconds) > 3.0, seconds  # a default utterance lasts about 1-3 s
    bad = cli_main("data", "demo", "--size", 3, "--words", "30-15", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "LOW-HIGH" in bad.stderr.splitlines()[-1]
