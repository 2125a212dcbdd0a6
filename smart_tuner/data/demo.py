"""A small synthetic LJSpeech-style corpus, spoken locally by eSpeak NG.

It lets the training and tuning pipeline run end to end without downloading a real
dataset: sentences come from templates and word lists shipped here (English and
Russian), and audio from libespeak-ng in-process, so a few hundred clips take seconds.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from ..paths import demo_corpus_dir
from .corpus import CorpusError
from .espeak import EspeakSynthesizer

__all__ = [
    "GENERATOR_VERSION",
    "SAMPLE_RATE",
    "SUPPORTED_LANGS",
    "build_demo_corpus",
    "generate_sentences",
]

# Bump when sentences or audio change, so stale corpora are not silently reused.
GENERATOR_VERSION = 1
SAMPLE_RATE = 22050  # LJSpeech's rate, which the Tacotron 2 configs expect
VOICES = {"en": "en-us", "ru": "ru"}
SUPPORTED_LANGS = tuple(VOICES)
MIN_WORDS, MAX_WORDS = 3, 12  # of one template sentence
DEFAULT_WORDS = (MIN_WORDS, MAX_WORDS)  # an utterance of the default demo corpus: one sentence
MAX_UTTERANCE_WORDS = 200
_GENERATOR_NAME = "smart_tuner.data.demo"

# --------------------------------------------------------------------------- English

_EN_NAMES = ["Anna", "Peter", "Maria", "John", "Lucy", "Oliver", "Emma", "Daniel",
             "Sophie", "Henry", "Grace", "Thomas"]
_EN_PEOPLE = ["teacher", "farmer", "doctor", "painter", "sailor", "student", "baker",
              "driver", "neighbor", "pilot", "writer", "gardener", "musician", "cat",
              "dog", "fox", "old man", "little girl"]
_EN_PEOPLE_ADJ = ["quiet", "old", "young", "happy", "tired", "clever", "busy", "careful",
                  "friendly", "lazy", "brave", "curious", "gentle", "patient", "nervous"]
# All take a regular "-s" plural.
_EN_THINGS = ["letter", "book", "basket", "window", "bicycle", "lamp", "map", "bottle",
              "coat", "boat", "kettle", "photograph", "violin", "umbrella", "newspaper",
              "key", "ladder", "blanket", "parcel", "mirror"]
_EN_THING_ADJ = ["red", "heavy", "broken", "wooden", "small", "new", "old", "dusty",
                 "shiny", "strange", "empty", "beautiful", "green", "round", "wet"]
# (third person singular, past, base form)
_EN_VERBS = [("finds", "found", "find"), ("carries", "carried", "carry"),
             ("opens", "opened", "open"), ("paints", "painted", "paint"),
             ("cleans", "cleaned", "clean"), ("fixes", "fixed", "fix"),
             ("sells", "sold", "sell"), ("brings", "brought", "bring"),
             ("hides", "hid", "hide"), ("buys", "bought", "buy"),
             ("watches", "watched", "watch"), ("drops", "dropped", "drop"),
             ("keeps", "kept", "keep"), ("moves", "moved", "move"),
             ("wraps", "wrapped", "wrap")]
_EN_PLACES = ["in the kitchen", "near the river", "at the station", "on the bridge",
              "in the old house", "behind the barn", "at the market", "by the window",
              "under the tree", "in the village", "on the hill", "at school"]
_EN_TIMES = ["yesterday", "this morning", "last night", "on Sunday", "every evening",
             "after lunch", "in the spring", "before dawn"]
_EN_STATES = ["cold", "warm", "quiet", "empty", "crowded", "bright", "dark", "calm",
              "noisy", "clean"]
_EN_NUMBERS = ["two", "three", "four", "five", "six", "seven", "twelve", "twenty"]


def _a(word: str) -> str:
    """Indefinite article for `word` (the word lists avoid silent h and "yoo" sounds)."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _en_templates() -> list[Callable[[random.Random], str]]:
    c = random.Random.choice
    return [
        lambda r: f"The {c(r, _EN_PEOPLE_ADJ)} {c(r, _EN_PEOPLE)} {c(r, _EN_VERBS)[0]} "
                  f"{_a(c(r, _EN_THING_ADJ))} {c(r, _EN_THINGS)} {c(r, _EN_PLACES)}.",
        lambda r: f"{c(r, _EN_TIMES)}, {c(r, _EN_NAMES)} {c(r, _EN_VERBS)[1]} "
                  f"{_a(c(r, _EN_THING_ADJ))} {c(r, _EN_THINGS)}.",
        lambda r: f"{c(r, _EN_NAMES)} and {c(r, _EN_NAMES)} {c(r, _EN_VERBS)[1]} "
                  f"the {c(r, _EN_THINGS)} {c(r, _EN_PLACES)}.",
        lambda r: f"Did the {c(r, _EN_PEOPLE)} {c(r, _EN_VERBS)[2]} "
                  f"the {c(r, _EN_THING_ADJ)} {c(r, _EN_THINGS)}?",
        lambda r: f"Please {c(r, _EN_VERBS)[2]} the {c(r, _EN_THINGS)}, {c(r, _EN_NAMES)}!",
        lambda r: f"It was {c(r, _EN_STATES)} {c(r, _EN_PLACES)} {c(r, _EN_TIMES)}.",
        lambda r: f"Why did {c(r, _EN_NAMES)} {c(r, _EN_VERBS)[2]} my {c(r, _EN_THINGS)}?",
        lambda r: f"There were {c(r, _EN_NUMBERS)} {c(r, _EN_THING_ADJ)} "
                  f"{c(r, _EN_THINGS)}s {c(r, _EN_PLACES)}.",
        lambda r: f"The {c(r, _EN_THINGS)} is {c(r, _EN_THING_ADJ)}.",
    ]


# --------------------------------------------------------------------------- Russian
# Russian agrees adjectives and past-tense verbs with gender, so words carry the forms
# the templates need instead of being inflected by rules.

_RU_NAMES = [("Анна", "f"), ("Пётр", "m"), ("Мария", "f"), ("Иван", "m"), ("Ольга", "f"),
             ("Сергей", "m"), ("Наташа", "f"), ("Дмитрий", "m"), ("Елена", "f"),
             ("Алексей", "m"), ("Татьяна", "f"), ("Михаил", "m")]
_RU_PEOPLE = [("учитель", "m"), ("рыбак", "m"), ("врач", "m"), ("художник", "m"),
              ("сосед", "m"), ("студент", "m"), ("почтальон", "m"), ("старик", "m"),
              ("повар", "m"), ("медведь", "m"), ("бабушка", "f"), ("девочка", "f"),
              ("соседка", "f"), ("учительница", "f"), ("кошка", "f"), ("собака", "f"),
              ("лиса", "f"), ("певица", "f")]
# {gender: nominative form}
_RU_PEOPLE_ADJ = [{"m": m, "f": f} for m, f in [
    ("старый", "старая"), ("молодой", "молодая"), ("весёлый", "весёлая"),
    ("усталый", "усталая"), ("добрый", "добрая"), ("умный", "умная"),
    ("ленивый", "ленивая"), ("храбрый", "храбрая"), ("тихий", "тихая"),
    ("хитрый", "хитрая")]]
# Inanimate nouns: (nominative, accusative, gender)
_RU_THINGS = [("книга", "книгу", "f"), ("письмо", "письмо", "n"), ("стол", "стол", "m"),
              ("лампа", "лампу", "f"), ("корзина", "корзину", "f"), ("окно", "окно", "n"),
              ("зонт", "зонт", "m"), ("велосипед", "велосипед", "m"), ("карта", "карту", "f"),
              ("бутылка", "бутылку", "f"), ("пальто", "пальто", "n"), ("лодка", "лодку", "f"),
              ("чайник", "чайник", "m"), ("фотография", "фотографию", "f"),
              ("скрипка", "скрипку", "f"), ("газета", "газету", "f"), ("ключ", "ключ", "m"),
              ("одеяло", "одеяло", "n"), ("посылка", "посылку", "f"),
              ("зеркало", "зеркало", "n")]
# (masculine, feminine, neuter, feminine accusative); with inanimate nouns the other
# accusatives equal the nominatives.
_RU_THING_ADJ = [
    ("красный", "красная", "красное", "красную"), ("новый", "новая", "новое", "новую"),
    ("старый", "старая", "старое", "старую"), ("тяжёлый", "тяжёлая", "тяжёлое", "тяжёлую"),
    ("большой", "большая", "большое", "большую"),
    ("маленький", "маленькая", "маленькое", "маленькую"),
    ("деревянный", "деревянная", "деревянное", "деревянную"),
    ("синий", "синяя", "синее", "синюю"), ("пустой", "пустая", "пустое", "пустую"),
    ("красивый", "красивая", "красивое", "красивую"),
    ("сломанный", "сломанная", "сломанное", "сломанную"),
    ("зелёный", "зелёная", "зелёное", "зелёную")]
# (3rd person singular, 3rd person plural, past masculine, past feminine)
_RU_VERBS = [("видит", "видят", "видел", "видела"), ("ищет", "ищут", "искал", "искала"),
             ("покупает", "покупают", "купил", "купила"),
             ("несёт", "несут", "принёс", "принесла"),
             ("открывает", "открывают", "открыл", "открыла"),
             ("чинит", "чинят", "починил", "починила"),
             ("рисует", "рисуют", "нарисовал", "нарисовала"),
             ("моет", "моют", "помыл", "помыла"),
             ("находит", "находят", "нашёл", "нашла"),
             ("продаёт", "продают", "продал", "продала"),
             ("прячет", "прячут", "спрятал", "спрятала"),
             ("берёт", "берут", "взял", "взяла"),
             ("показывает", "показывают", "показал", "показала")]
# Past tenses that fit "Куда ... ?" ("where to?"): (masculine, feminine)
_RU_WHERE_VERBS = [("спрятал", "спрятала"), ("положил", "положила"), ("унёс", "унесла"),
                   ("поставил", "поставила"), ("отнёс", "отнесла"), ("дел", "дела")]
_RU_IMPERATIVES = ["возьми", "открой", "принеси", "почини", "спрячь", "покажи", "найди",
                   "купи", "помой"]
_RU_PLACES = ["в парке", "на кухне", "у реки", "на вокзале", "в старом доме", "на рынке",
              "у окна", "под деревом", "в деревне", "на холме", "в библиотеке", "на мосту"]
# Point-in-time phrases only: they are combined with perfective (one-off) past verbs.
_RU_TIMES = ["вчера", "сегодня утром", "вечером", "в воскресенье", "утром",
             "после обеда", "весной", "ночью"]
_RU_STATES = ["тихо", "шумно", "холодно", "тепло", "светло", "темно", "пусто", "весело",
              "спокойно", "многолюдно"]
_RU_GENDER_INDEX = {"m": 0, "f": 1, "n": 2}


def _ru_thing(r: random.Random, case: str) -> str:
    """Adjective + inanimate noun, agreed in gender, in the nominative or accusative."""
    nom, acc, gender = r.choice(_RU_THINGS)
    adj = r.choice(_RU_THING_ADJ)
    if case == "acc":
        return f"{adj[3] if gender == 'f' else adj[_RU_GENDER_INDEX[gender]]} {acc}"
    return f"{adj[_RU_GENDER_INDEX[gender]]} {nom}"


def _ru_person(r: random.Random) -> str:
    noun, gender = r.choice(_RU_PEOPLE)
    return f"{r.choice(_RU_PEOPLE_ADJ)[gender]} {noun}"


def _ru_past(r: random.Random, verbs: list[tuple[str, ...]], past: int) -> str:
    """A name with a past-tense verb agreeing with its gender: "Анна нашла".

    `past` is the index of the masculine past form in each verb tuple; the feminine follows it.
    """
    name, gender = r.choice(_RU_NAMES)
    verb = r.choice(verbs)
    return f"{name} {verb[past] if gender == 'm' else verb[past + 1]}"


def _ru_templates() -> list[Callable[[random.Random], str]]:
    c = random.Random.choice
    return [
        lambda r: f"{_ru_person(r)} {c(r, _RU_VERBS)[0]} {_ru_thing(r, 'acc')} "
                  f"{c(r, _RU_PLACES)}.",
        lambda r: f"{c(r, _RU_TIMES)} {_ru_past(r, _RU_VERBS, 2)} {_ru_thing(r, 'acc')}.",
        lambda r: f"{c(r, _RU_NAMES)[0]} и {c(r, _RU_NAMES)[0]} {c(r, _RU_VERBS)[1]} "
                  f"{_ru_thing(r, 'acc')} {c(r, _RU_PLACES)}.",
        lambda r: f"Почему {_ru_person(r)} {c(r, _RU_VERBS)[0]} {c(r, _RU_THINGS)[1]}?",
        lambda r: f"Пожалуйста, {c(r, _RU_IMPERATIVES)} {c(r, _RU_THINGS)[1]}, "
                  f"{c(r, _RU_NAMES)[0]}!",
        lambda r: f"{c(r, _RU_TIMES)} {c(r, _RU_PLACES)} было {c(r, _RU_STATES)}.",
        lambda r: f"Мы нашли {_ru_thing(r, 'acc')} {c(r, _RU_PLACES)}.",
        lambda r: f"Каждое утро {_ru_person(r)} {c(r, _RU_VERBS)[0]} {_ru_thing(r, 'acc')} "
                  f"{c(r, _RU_PLACES)}.",
        lambda r: f"Где {_ru_thing(r, 'nom')}?",
        lambda r: f"Куда {_ru_past(r, _RU_WHERE_VERBS, 0)} {_ru_thing(r, 'acc')}?",
    ]


_TEMPLATES = {"en": _en_templates(), "ru": _ru_templates()}


def _check_lang(lang: str) -> None:
    if lang not in VOICES:
        supported = ", ".join(SUPPORTED_LANGS)
        raise ValueError(f"unsupported demo language {lang!r}; supported: {supported}")


def check_words(words: tuple[int, int]) -> tuple[int, int]:
    """A valid (low, high) word range of an utterance."""
    low, high = words
    if not (1 <= low <= high <= MAX_UTTERANCE_WORDS) or high < MIN_WORDS:
        raise ValueError(f"words {low}-{high}: give LOW-HIGH with 1 <= LOW <= HIGH <= {MAX_UTTERANCE_WORDS} and "
                         f"HIGH >= {MIN_WORDS}")
    return low, high


def generate_sentences(lang: str = "en", size: int = 400, seed: int = 1234,
                       words: tuple[int, int] = DEFAULT_WORDS) -> list[str]:
    """`size` distinct utterances of `words` = (low, high) words; same arguments, same list.

    With the default range each utterance is one sentence of MIN_WORDS..MAX_WORDS words. A longer range makes
    utterances of several sentences in a row (for harder alignment: longer than the demo's), each drawn until the
    utterance holds at least `low` words and kept when it holds at most `high`. Utterances are drawn one by one
    from a `random.Random(seed)`, so a smaller corpus is a prefix of a larger one with the same seed and range.
    """
    _check_lang(lang)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    low, high = check_words(words)
    rng = random.Random(seed)
    templates = _TEMPLATES[lang]

    def sentence() -> str:
        text = rng.choice(templates)(rng)
        return text[0].upper() + text[1:]

    sentences: list[str] = []
    seen: set[str] = set()
    # There are millions of combinations, so duplicates are rare and this bound only
    # trips for absurd sizes.
    for _ in range(100 * size + 1000):
        parts = [sentence()]
        while sum(len(p.split()) for p in parts) < low:
            parts.append(sentence())
        text = " ".join(parts)
        if text not in seen and max(low, MIN_WORDS) <= len(text.split()) <= high:
            seen.add(text)
            sentences.append(text)
            if len(sentences) == size:
                return sentences
    raise ValueError(f"cannot generate {size} distinct {lang!r} utterances of {low}-{high} words")


def _read_manifest(path: Path) -> dict | None:
    """The corpus.json of a demo corpus, or None if `path` does not hold one."""
    try:
        manifest = json.loads((path / "corpus.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("generator") == _GENERATOR_NAME:
        return manifest
    return None


def _to_pcm16(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly  # only needed for an unusual eSpeak build

        g = math.gcd(SAMPLE_RATE, rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _write_corpus(directory: Path, lang: str, sentences: list[str], manifest: dict) -> None:
    synth = EspeakSynthesizer()
    (directory / "wavs").mkdir()
    width = max(4, len(str(len(sentences))))
    lines = []
    for i, text in enumerate(sentences, start=1):
        utt_id = f"demo_{lang}_{i:0{width}d}"
        audio = synth.synthesize(text, VOICES[lang])
        sf.write(directory / "wavs" / f"{utt_id}.wav", _to_pcm16(audio, synth.sample_rate),
                 SAMPLE_RATE, subtype="PCM_16")
        # LJSpeech's third column is the normalized text; ours needs no normalization.
        lines.append(f"{utt_id}|{text}|{text}\n")
    with open(directory / "metadata.csv", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    manifest = {**manifest, "voice": VOICES[lang], "espeak_sample_rate": synth.sample_rate}
    # Written last: its presence marks a complete corpus.
    (directory / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _fresh_sibling(path: Path, tag: str) -> Path:
    """An unused hidden name next to `path`. (Not tempfile.mkdtemp: its 0700 mode would
    end up on the finished corpus.)"""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def build_demo_corpus(
    out_dir: Path | None = None,
    lang: str = "en",
    size: int = 400,
    seed: int = 1234,
    force: bool = False,
    words: tuple[int, int] = DEFAULT_WORDS,
) -> Path:
    """Build (once) an LJSpeech-format demo corpus and return its directory.

    Layout: metadata.csv (`id|text|text`, UTF-8), wavs/<id>.wav (mono 16-bit PCM,
    22050 Hz) and corpus.json describing how it was made. An existing corpus built
    with the same settings is reused; `force=True` rebuilds a demo corpus. A directory
    that is not an (empty or) demo corpus is never touched: it raises ValueError.
    """
    _check_lang(lang)
    words = tuple(words)
    sentences = generate_sentences(lang, size, seed, words)  # also validates size and words
    out_dir = Path(out_dir) if out_dir is not None else demo_corpus_dir(lang, size, words)
    wanted = {"generator": _GENERATOR_NAME, "generator_version": GENERATOR_VERSION,
              "lang": lang, "size": size, "seed": seed, "sample_rate": SAMPLE_RATE}
    if words != DEFAULT_WORDS:  # (a default corpus's manifest stays as it was: existing corpora still match)
        wanted["words"] = list(words)

    def matches(found: dict | None) -> bool:
        return found is not None and all(found.get(k) == v for k, v in wanted.items()) \
            and (out_dir / "metadata.csv").is_file()

    if (out_dir.exists() or out_dir.is_symlink()) and _reusable(out_dir, matches, force):
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling (same filesystem, so the final rename is atomic) so that
    # an interrupted build never looks like a finished corpus.
    tmp = _fresh_sibling(out_dir, "tmp")
    tmp.mkdir()
    old = None
    try:
        _write_corpus(tmp, lang, sentences, wanted)
        if out_dir.exists():
            # Only an empty directory or an outdated demo corpus gets here (checked above).
            old = _fresh_sibling(out_dir, "old")
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # A concurrent build may have finished first; its result is as good as ours.
            if matches(_read_manifest(out_dir)):
                return out_dir
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _reusable(out_dir: Path, matches: Callable[[dict | None], bool], force: bool) -> bool:
    """Whether the existing ``out_dir`` is the wanted corpus already; raises when it may not be (re)built."""
    if not out_dir.is_dir():
        raise CorpusError(f"{out_dir} exists and is not a directory; choose another directory (--out)")
    found = _read_manifest(out_dir)
    if found is None:
        if any(out_dir.iterdir()):
            raise CorpusError(f"{out_dir} exists, is not empty and is not a demo corpus; refusing to "
                              "touch it: choose another directory (--out)")
        return False
    if force:
        return False
    if matches(found):
        return True
    raise CorpusError(f"{out_dir} holds a demo corpus built with other settings; rebuild it with --force "
                      "(force=True) or choose another directory (--out)")


def demo_command(out: str | None, lang: str, size: int, seed: int, force: bool, words: tuple[int, int]) -> int:
    """``data demo``: build the corpus (in ``out``, or where training looks for it) and say where; returns 0."""
    start = time.perf_counter()
    path = build_demo_corpus(Path(out) if out else demo_corpus_dir(lang, size, words), lang=lang, size=size,
                             seed=seed, force=force, words=words)
    print(f"demo corpus ({lang}, {size} utterances of {words[0]}-{words[1]} words) in {path} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0

