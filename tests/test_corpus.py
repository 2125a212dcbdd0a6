"""Tests for reading and validating an LJSpeech-format corpus, and for prepare_data's report and feature cache.

The corpora are real: eSpeak NG speech built once per module, copied per test so that a test may corrupt it.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from smart_tuner.config import build_config
from smart_tuner.data.corpus import CorpusError, read_corpus
from smart_tuner.data.dataset import audio_cache_key, prepare_data
from smart_tuner.data.demo import build_demo_corpus
from smart_tuner.data.text import UNK, normalize_text

from .conftest import read_only_view

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
SIZE = 20


# ------------------------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def built_en(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("corpus_src") / "en", lang="en", size=SIZE)


@pytest.fixture(scope="module")
def built_ru(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("corpus_src") / "ru", lang="ru", size=12)


@pytest.fixture
def corpus(built_en, tmp_path):
    """A private copy of the English corpus (copytree keeps the wav mtimes)."""
    return shutil.copytree(built_en, tmp_path / "corpus")


@pytest.fixture(scope="module")
def warm_cache(built_en, tmp_path_factory):
    """Features of the pristine corpus, computed once (about 1 s); see ``cache_copy``."""
    cache = tmp_path_factory.mktemp("warm") / "cache"
    prepare_data(build_config({"data": {"corpus": str(built_en), "val_size": 2, "cache_dir": str(cache)}}))
    return cache


@pytest.fixture
def cache_copy(warm_cache, tmp_path):
    """A warm copy of the feature cache at ``tmp_path/cache`` (where ``data_config`` points).

    The manifest stamps (wav size and mtime) match the copied corpus, whose mtimes copytree keeps, so only the
    wavs a test changes are decoded again: this keeps the prepare_data tests fast.
    """
    return shutil.copytree(warm_cache, tmp_path / "cache")


@pytest.fixture
def corpus_ru(built_ru, tmp_path):
    return shutil.copytree(built_ru, tmp_path / "corpus_ru")


def meta_lines(corpus) -> list[bytes]:
    return (corpus / "metadata.csv").read_bytes().splitlines()


def write_meta(corpus, lines: list[bytes]) -> None:
    (corpus / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")


def uid_at(corpus, number: int) -> str:
    """The id on 1-based line ``number`` of the pristine metadata."""
    return meta_lines(corpus)[number - 1].split(b"|")[0].decode()


def wav_of(corpus, uid: str):
    return corpus / "wavs" / f"{uid}.wav"


def data_config(corpus, tmp_path, **sections):
    data = {"corpus": str(corpus), "val_size": 2, "cache_dir": str(tmp_path / "cache")}
    data.update(sections.pop("data", {}))
    return build_config({"data": data, **sections})


def only_bad(result):
    assert len(result.bad) == 1, [str(b) for b in result.bad]
    return result.bad[0]


def assert_one_bad_line(result, line: int, uid: str, reason: str):
    """Exactly one bad line, at ``line`` with id ``uid``, whose reason says ``reason``; that id is not used."""
    bad = only_bad(result)
    assert (bad.line, bad.id) == (line, uid)
    assert reason in bad.reason
    assert uid not in ids_of(result)
    return bad


def ids_of(result) -> list[str]:
    return [u.id for u in result.utterances]


# ------------------------------------------------------------------------------------ the clean corpus
def test_clean_corpus_reads_every_line(corpus):
    result = read_corpus(corpus)
    assert result.bad == []
    assert result.total_lines == SIZE
    assert len(result.utterances) == SIZE
    assert [u.line for u in result.utterances] == list(range(1, SIZE + 1))
    first = result.utterances[0]
    assert first.wav_path == wav_of(corpus, first.id)
    assert first.text == meta_lines(corpus)[0].decode().split("|")[2]


def test_missing_corpus_dir_and_metadata(tmp_path):
    with pytest.raises(CorpusError, match="no such corpus directory"):
        read_corpus(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="metadata.csv"):
        read_corpus(tmp_path / "empty")


# ------------------------------------------------------------------------------------ each kind of bad line
def test_missing_wav(corpus):
    uid = uid_at(corpus, 4)
    wav_of(corpus, uid).unlink()
    result = read_corpus(corpus)
    bad = assert_one_bad_line(result, 4, uid, "missing")
    assert bad.file == str(corpus / "metadata.csv")
    assert len(result.utterances) == SIZE - 1
    assert result.total_lines == SIZE


def test_unreadable_wav(corpus):
    uid = uid_at(corpus, 7)
    wav_of(corpus, uid).write_bytes(b"this is not a RIFF file at all \x00\x01\x02" * 50)
    result = read_corpus(corpus)
    assert_one_bad_line(result, 7, uid, "unreadable")


def test_zero_length_wav(corpus):
    uid = uid_at(corpus, 9)
    sf.write(wav_of(corpus, uid), np.zeros(0, dtype=np.int16), 22050, subtype="PCM_16")
    assert sf.info(str(wav_of(corpus, uid))).frames == 0  # a valid header, no frames
    result = read_corpus(corpus)
    assert_one_bad_line(result, 9, uid, "zero-length")


def test_empty_text(corpus):
    lines = meta_lines(corpus)
    uid = uid_at(corpus, 2)
    lines[1] = f"{uid}|  |".encode()
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    assert_one_bad_line(result, 2, uid, "empty text")


def test_empty_id(corpus):
    lines = meta_lines(corpus)
    lines[2] = b"|Some text.|Some text."
    write_meta(corpus, lines)
    bad = only_bad(read_corpus(corpus))
    assert bad.line == 3
    assert "empty id" in bad.reason


def test_duplicate_id_names_the_first_line(corpus):
    lines = meta_lines(corpus)
    uid = uid_at(corpus, 3)
    lines[11] = f"{uid}|A different sentence.|A different sentence.".encode()
    replaced = uid_at(corpus, 12)
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    bad = only_bad(result)
    assert (bad.line, bad.id) == (12, uid)
    assert "duplicate" in bad.reason
    assert "line 3" in bad.reason
    # The first occurrence is kept, with its own text.
    kept = [u for u in result.utterances if u.id == uid]
    assert len(kept) == 1 and kept[0].line == 3
    assert kept[0].text != "A different sentence."
    assert replaced not in ids_of(result)


@pytest.mark.parametrize(("line", "columns"), [(b"demo_en_0005 the text without separators", 1),
                                               (b"demo_en_0005|one|two|three", 4)])
def test_wrong_column_count(corpus, line, columns):
    lines = meta_lines(corpus)
    assert uid_at(corpus, 5) == "demo_en_0005"
    lines[4] = line
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    bad = only_bad(result)
    assert bad.line == 5
    assert "columns" in bad.reason
    assert f"found {columns}" in bad.reason
    assert "demo_en_0005" not in ids_of(result)
    assert len(result.utterances) == SIZE - 1


def test_non_utf8_line(corpus):
    lines = meta_lines(corpus)
    uid = uid_at(corpus, 6)
    lines[5] = uid.encode() + b"|Caf\xff\xfe text.|Caf\xff\xfe text."
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    bad = only_bad(result)
    assert bad.line == 6
    assert "UTF-8" in bad.reason
    assert uid not in ids_of(result)
    assert len(result.utterances) == SIZE - 1


@pytest.mark.parametrize("line", [b"demo_en_0006|Caf\xff\xfe.|Caf\xff\xfe.", b"demo_en_0006|one|two|three"])
def test_id_is_reported_when_it_can_be_read(corpus, line):
    lines = meta_lines(corpus)
    lines[5] = line
    write_meta(corpus, lines)
    bad = only_bad(read_corpus(corpus))
    assert bad.line == 6
    assert bad.id == "demo_en_0006"


def test_several_bad_lines_keep_their_own_numbers(corpus):
    lines = meta_lines(corpus)
    wav_of(corpus, uid_at(corpus, 1)).unlink()
    lines[9] = b"just one column"
    lines[14] = lines[14].split(b"|")[0] + b"||"
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    assert [b.line for b in result.bad] == [1, 10, 15]
    assert len(result.utterances) == SIZE - 3
    assert result.total_lines == SIZE


# ------------------------------------------------------------------------------------ tolerated forms
def test_blank_lines_are_ignored(corpus):
    lines = meta_lines(corpus)
    uid4 = uid_at(corpus, 4)
    with_blanks = lines[:3] + [b"", b"   ", b"\r"] + lines[3:] + [b""]
    write_meta(corpus, with_blanks)
    result = read_corpus(corpus)
    assert result.bad == []
    assert result.total_lines == SIZE
    assert len(result.utterances) == SIZE
    # Line numbers still count the blank lines, so they point into the real file.
    assert next(u for u in result.utterances if u.id == uid4).line == 7


def test_crlf_line_endings(corpus):
    (corpus / "metadata.csv").write_bytes(b"\r\n".join(meta_lines(corpus)) + b"\r\n")
    result = read_corpus(corpus)
    assert result.bad == []
    assert len(result.utterances) == SIZE
    assert not any(u.text.endswith("\r") for u in result.utterances)


def test_third_column_preferred_when_not_empty(corpus):
    lines = meta_lines(corpus)
    uid1, uid2, uid3 = uid_at(corpus, 1), uid_at(corpus, 2), uid_at(corpus, 3)
    lines[0] = f"{uid1}|Dr. Smith paid $5.|Doctor Smith paid five dollars.".encode()
    lines[1] = f"{uid2}|Two columns only.".encode()
    lines[2] = f"{uid3}|Raw text wins here.|   ".encode()
    write_meta(corpus, lines)
    result = read_corpus(corpus)
    assert result.bad == []
    texts = {u.id: u.text for u in result.utterances}
    assert texts[uid1] == "Doctor Smith paid five dollars."
    assert texts[uid2] == "Two columns only."
    assert texts[uid3] == "Raw text wins here."


def test_utf8_bom_is_tolerated(corpus):
    meta = corpus / "metadata.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    uid = uid_at(corpus, 1).lstrip("\ufeff")
    result = read_corpus(corpus)
    assert result.bad == []
    assert len(result.utterances) == SIZE
    assert result.utterances[0].id == uid
    assert not result.utterances[0].id.startswith("\ufeff")


# ------------------------------------------------------------------------------------ prepare_data
def test_prepare_data_skips_bad_lines_and_writes_a_report(corpus, tmp_path, cache_copy):
    lines = meta_lines(corpus)
    garbage_uid = uid_at(corpus, 3)
    wav_of(corpus, garbage_uid).write_bytes(b"\x00garbage" * 64)
    lines.append(b"demo_en_9999|No audio for this one.|No audio for this one.")  # line 21, missing wav
    write_meta(corpus, lines)

    run_dir = tmp_path / "run"
    data = prepare_data(data_config(corpus, tmp_path), run_dir)

    meta = corpus / "metadata.csv"
    assert [(b.line, b.id) for b in data.skipped] == [(3, garbage_uid), (21, "demo_en_9999")]
    report = (run_dir / "data_report.txt").read_text(encoding="utf-8")
    assert f"{meta}:3: {garbage_uid}: unreadable" in report
    assert f"{meta}:21: demo_en_9999: missing" in report
    assert "lines: 21, usable: 19, skipped: 2" in report
    report_json = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report_json["lines"] == 21
    assert [(s["file"], s["line"], s["id"]) for s in report_json["skipped"]] == [
        (str(meta), 3, garbage_uid), (str(meta), 21, "demo_en_9999")]
    assert data.report_path == run_dir / "data_report.txt"

    assert len(data.train) + len(data.val) == 19
    assert len(data.val) == 2
    all_ids = set(data.train.ids) | set(data.val.ids)
    assert garbage_uid not in all_ids and "demo_en_9999" not in all_ids
    assert not set(data.train.ids) & set(data.val.ids)
    text, mel = data.train[0]
    assert mel.shape[0] == 80
    assert text[-1].item() == data.symbols.encode("")[-1]  # ends with EOS


def test_prepare_data_clean_corpus_report_lists_nothing(corpus, tmp_path, cache_copy):
    run_dir = tmp_path / "run"
    data = prepare_data(data_config(corpus, tmp_path), run_dir)
    assert data.skipped == []
    report = (run_dir / "data_report.txt").read_text(encoding="utf-8")
    assert f"lines: {SIZE}, usable: {SIZE}, skipped: 0" in report
    assert json.loads((run_dir / "data_report.json").read_text())["skipped"] == []
    assert len(data.train) == SIZE - 2 and len(data.val) == 2


def test_prepare_data_refuses_too_many_bad_lines(corpus, tmp_path):
    for number in (2, 5, 8):  # 3 of 20 = 15% > the default 10%
        wav_of(corpus, uid_at(corpus, number)).unlink()
    run_dir = tmp_path / "run"
    config = data_config(corpus, tmp_path)
    assert config.data.max_bad_share == 0.1
    with pytest.raises(CorpusError) as info:
        prepare_data(config, run_dir)
    message = str(info.value)
    assert str(corpus / "metadata.csv") in message
    assert f"3 of {SIZE}" in message
    assert "data.max_bad_share" in message
    assert str(run_dir / "data_report.txt") in message
    # The report is written even though the corpus is refused, and no features were computed.
    report = (run_dir / "data_report.txt").read_text(encoding="utf-8")
    assert report.count("missing") == 3
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.npy"))


def test_raising_max_bad_share_accepts_the_same_corpus(corpus, tmp_path, cache_copy):
    for number in (2, 5, 8):
        wav_of(corpus, uid_at(corpus, number)).unlink()
    data = prepare_data(data_config(corpus, tmp_path, data={"max_bad_share": 0.2}), tmp_path / "run")
    assert len(data.skipped) == 3
    assert len(data.train) + len(data.val) == SIZE - 3


def test_prepare_data_reports_a_silent_wav(corpus, tmp_path, cache_copy):
    uid = uid_at(corpus, 11)
    sf.write(wav_of(corpus, uid), np.zeros(22050, dtype=np.int16), 22050, subtype="PCM_16")
    assert read_corpus(corpus).bad == []  # the header is fine: only the audio stage can tell
    run_dir = tmp_path / "run"
    data = prepare_data(data_config(corpus, tmp_path), run_dir)
    assert [(b.line, b.id) for b in data.skipped] == [(11, uid)]
    assert "silent" in data.skipped[0].reason
    report = (run_dir / "data_report.txt").read_text(encoding="utf-8")
    assert f"{corpus / 'metadata.csv'}:11: {uid}:" in report
    assert "silent" in report
    assert "usable: 19, skipped: 1" in report
    assert uid not in set(data.train.ids) | set(data.val.ids)


def test_prepare_data_refuses_when_audio_stage_pushes_over_the_limit(corpus, tmp_path, cache_copy):
    wav_of(corpus, uid_at(corpus, 1)).unlink()
    wav_of(corpus, uid_at(corpus, 2)).unlink()  # 2 of 20: exactly the limit, still accepted by read_corpus
    sf.write(wav_of(corpus, uid_at(corpus, 3)), np.zeros(4000, dtype=np.int16), 22050, subtype="PCM_16")
    run_dir = tmp_path / "run"
    with pytest.raises(CorpusError, match=r"3 of 20 .*data\.max_bad_share"):
        prepare_data(data_config(corpus, tmp_path), run_dir)
    assert "silent" in (run_dir / "data_report.txt").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ Cyrillic
def test_cyrillic_corpus_symbols_and_round_trip(corpus_ru, tmp_path):
    data = prepare_data(data_config(corpus_ru, tmp_path), tmp_path / "run")
    assert data.skipped == []
    symbols = data.symbols
    letters = [s for s in symbols.symbols if CYRILLIC.fullmatch(s)]
    assert len(letters) >= 20

    texts = [line.split("|")[2] for line in (corpus_ru / "metadata.csv").read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 12
    assert all(CYRILLIC.search(t) for t in texts)
    unk = symbols.symbols.index(UNK)
    for text in texts:
        normalized = normalize_text(text)
        assert set(normalized) <= set(symbols.symbols), set(normalized) - set(symbols.symbols)
        ids = symbols.encode(text)
        assert unk not in ids
        assert len(ids) == len(normalized) + 1  # one id per character, then EOS
        assert symbols.decode(ids) == normalized
    # The datasets hold the encoded texts too.
    for text, ids in zip(data.train.texts, data.train.encoded):
        assert symbols.decode(ids.tolist()) == normalize_text(text)


# ------------------------------------------------------------------------------------ feature cache
def npy_mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.npy")}


def age_cache(directory, seconds_ago=3600) -> None:
    """Back-date every cached feature so that any rewrite shows up in its mtime."""
    old = int((os.path.getmtime(directory) - seconds_ago) * 1e9)
    for p in directory.glob("*.npy"):
        os.utime(p, ns=(old, old))


def test_second_prepare_data_reuses_the_cache(corpus, tmp_path):
    config = data_config(corpus, tmp_path)
    first = prepare_data(config, tmp_path / "run1")
    key_dir = tmp_path / "cache" / audio_cache_key(config)
    assert key_dir.is_dir()
    assert len(npy_mtimes(key_dir)) == SIZE
    age_cache(key_dir)
    before = npy_mtimes(key_dir)
    manifest_before = (key_dir / "manifest.json").read_text()

    second = prepare_data(config, tmp_path / "run2")
    assert npy_mtimes(key_dir) == before
    assert (key_dir / "manifest.json").read_text() == manifest_before
    assert second.train.ids == first.train.ids
    assert second.train.frames == first.train.frames
    assert second.symbols == first.symbols
    assert np.array_equal(second.stats.mean.numpy(), first.stats.mean.numpy())


def test_other_n_mels_uses_another_cache_key(corpus, tmp_path):
    config80 = data_config(corpus, tmp_path)
    config40 = data_config(corpus, tmp_path, audio={"n_mels": 40})
    assert audio_cache_key(config80) != audio_cache_key(config40)

    data80 = prepare_data(config80, tmp_path / "run80")
    data40 = prepare_data(config40, tmp_path / "run40")
    subdirs = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert subdirs == sorted([audio_cache_key(config80), audio_cache_key(config40)])
    dir40 = tmp_path / "cache" / audio_cache_key(config40)
    assert json.loads((dir40 / "audio.json").read_text())["n_mels"] == 40
    assert len(npy_mtimes(dir40)) == SIZE

    _, mel40 = data40.train[0]
    _, mel80 = data80.train[0]
    assert mel40.shape[0] == 40
    assert mel80.shape[0] == 80
    assert data40.stats.mean.shape == (40,)
    assert all(np.load(p).shape[0] == 40 for p in dir40.glob("*.npy"))


@pytest.mark.parametrize("change", ["rewrite", "touch"])
def test_changed_wav_invalidates_only_its_entry(corpus, tmp_path, change):
    config = data_config(corpus, tmp_path)
    prepare_data(config, tmp_path / "run1")
    key_dir = tmp_path / "cache" / audio_cache_key(config)
    age_cache(key_dir)
    before = npy_mtimes(key_dir)

    uid = uid_at(corpus, 5)
    wav = wav_of(corpus, uid)
    cached = key_dir / f"{uid}.npy"
    old_mel = np.load(cached)
    if change == "rewrite":
        audio, rate = sf.read(wav, dtype="int16")
        sf.write(wav, audio[: len(audio) // 2], rate, subtype="PCM_16")  # different content, shorter
    else:
        stat = wav.stat()
        os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    data = prepare_data(config, tmp_path / "run2")
    after = npy_mtimes(key_dir)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {f"{uid}.npy"}
    new_mel = np.load(cached)
    if change == "rewrite":
        assert new_mel.shape[1] < old_mel.shape[1]
        frames = dict(zip(data.train.ids + data.val.ids, data.train.frames + data.val.frames))
        assert frames[uid] == new_mel.shape[1]
    else:
        np.testing.assert_allclose(new_mel, old_mel, rtol=1e-5, atol=1e-5)
    manifest = json.loads((key_dir / "manifest.json").read_text())
    assert manifest[uid] == [wav.stat().st_size, wav.stat().st_mtime_ns]


# ------------------------------------------------------------------------------------ issue 14: hostile corpora
@pytest.mark.parametrize("bad_id", ["../outside", "/etc/outside", "wavs/../../outside", "..", ".hidden"])
def test_an_id_that_is_a_path_is_a_bad_line_and_reads_nothing_outside(corpus, tmp_path, bad_id):
    outside = corpus.parent / "outside.wav"  # a real WAV that an id with ../ would reach
    sf.write(outside, np.zeros(22050, dtype=np.int16), 22050, subtype="PCM_16")
    lines = meta_lines(corpus)
    lines[2] = bad_id.encode() + b"|" + lines[2].split(b"|", 1)[1]
    write_meta(corpus, lines)
    assert_one_bad_line(read_corpus(corpus), 3, bad_id, "not a plain file name")


def test_an_absurd_sample_rate_is_a_bad_line_from_the_header(corpus):
    uid = uid_at(corpus, 5)
    sf.write(wav_of(corpus, uid), np.zeros(7000, dtype=np.int16), 7, subtype="PCM_16")  # 7 Hz, 1000 s
    assert_one_bad_line(read_corpus(corpus), 5, uid, "absurd sample rate 7 Hz in the header")


@pytest.mark.parametrize("value,reason", [(1e25, "absurd sample values"), (np.inf, "NaN or inf")])
def test_absurd_or_non_finite_samples_are_bad_lines_before_the_mel_statistics(corpus, tmp_path, cache_copy, value,
                                                                             reason):
    uid = uid_at(corpus, 6)
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 22050).astype(np.float32)
    wav[1000] = value
    sf.write(wav_of(corpus, uid), wav, 22050, subtype="FLOAT")
    data = prepare_data(data_config(corpus, tmp_path), tmp_path / "run")
    assert [(b.line, b.id) for b in data.skipped] == [(6, uid)] and reason in data.skipped[0].reason
    mean = data.stats.mean.numpy()
    assert np.isfinite(mean).all() and np.abs(mean).max() < 20


def test_a_read_only_corpus_says_to_set_the_cache_dir(corpus, tmp_path):
    with read_only_view(corpus, tmp_path / "ro") as readonly:
        config = build_config({"data": {"corpus": str(readonly), "val_size": 2}})
        with pytest.raises(CorpusError, match="read-only .*set data.cache_dir to a writable directory"):
            prepare_data(config)
