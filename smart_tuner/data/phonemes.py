"""Phonemes from text (``data.text: phonemes``): eSpeak NG, the library the demo corpus is spoken with, through the
maintained ``phonemizer`` package pointed at the copy ``espeakng-loader`` ships (no system install, no binding of
our own).

A phoneme string keeps what characters carry and more: stress and length marks, a space between words, the
punctuation (``"Hello, world!"`` -> ``"həlˈoʊ, wˈɜːld!"``; Russian ``"замок"`` -> ``"zamˈok"``). Each of its
characters is a symbol of the table, as letters are for ``characters``. The table names its eSpeak NG voice
(:class:`~smart_tuner.data.text.SymbolTable`), so synthesis and previews phonemize plain text as training did.

Phonemizing is memoized in the process and cached on disk with the features (:class:`PhonemeCache`, keyed by the
text, the voice and :data:`FRONTEND_VERSION`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import write_atomic

log = logging.getLogger(__name__)

FRONTEND = "espeak-ng"
FRONTEND_VERSION = 1  # bump when the phonemes of a text change: cached ones are then made again
# eSpeak NG marks a word it read in another language as "(en)hello(ru)": that word is not read as the voice's own.
_SWITCH = re.compile(r"\(([a-z]{2,3}(?:-[a-z0-9]+)*)\)")

_backends: dict[str, Any] = {}
_memo: dict[tuple[str, str], str] = {}  # (voice, text) -> phonemes, switch flags removed
_switched: dict[tuple[str, str], list[str]] = {}  # (voice, text) -> the languages eSpeak NG switched to


class PhonemeError(UserError, ValueError):
    """Text cannot be phonemized as asked (an unknown voice, eSpeak NG missing); the message says what to do."""


def _backend(voice: str) -> Any:
    if voice not in _backends:
        try:
            import espeakng_loader
            from phonemizer.backend import EspeakBackend
            from phonemizer.backend.espeak.wrapper import EspeakWrapper
        except ImportError as exc:
            raise PhonemeError(f"data.text: phonemes needs the phonemizer and espeakng-loader packages ({exc}); "
                               "reinstall the project: pip install -e .") from None
        EspeakWrapper.set_library(espeakng_loader.get_library_path())
        EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
        quiet = logging.getLogger(f"{__name__}.phonemizer")
        quiet.setLevel(logging.ERROR)  # it warns about every language switch; :func:`problems` reports those
        try:
            _backends[voice] = EspeakBackend(voice, preserve_punctuation=True, with_stress=True,
                                             language_switch="keep-flags", logger=quiet)
        except RuntimeError as exc:
            raise PhonemeError(f"data.phoneme_language: {exc}; use an eSpeak NG voice name such as en-us, en-gb, "
                               "ru, de or fr") from None
    return _backends[voice]


def phonemize(texts: list[str], voice: str) -> list[str]:
    """The phonemes of each text (already normalized by the table's cleaner), in one call to eSpeak NG for those
    not seen before; an empty text stays empty."""
    todo = sorted({t for t in texts if (voice, t) not in _memo and t.strip()})
    if todo:
        from phonemizer.separator import Separator

        backend, separator = _backend(voice), Separator(phone="", syllable="", word=" ")
        lines = [" ".join(t.split()) for t in todo]  # one text a line: a newline ends an utterance for eSpeak NG
        out = backend.phonemize(lines, separator=separator, strip=True, njobs=1)
        if len(out) != len(lines):  # it drops a line it reads as empty: then one call a line, to keep the pairs
            out = [(backend.phonemize([line], separator=separator, strip=True, njobs=1) or [""])[0]
                   for line in lines]
        for text, phonemes in zip(todo, out):
            _switched[(voice, text)] = sorted(set(_SWITCH.findall(phonemes)))
            _memo[(voice, text)] = " ".join(_SWITCH.sub("", phonemes).split())
    return [_memo.get((voice, t), "") for t in texts]


def problems(texts: list[str], voice: str) -> list[str | None]:
    """Why eSpeak NG cannot read each text as ``voice`` (None: it can): nothing spoken for a text with letters,
    or words read in another language (a word in another script or language, which the voice would spell)."""
    phonemes = phonemize(texts, voice)
    found: list[str | None] = []
    for text, spoken in zip(texts, phonemes):
        switched = _switched.get((voice, text), [])
        if any(c.isalpha() for c in text) and not any(c.isalpha() for c in spoken):
            found.append(f"eSpeak NG ({voice}) makes no phonemes of it")
        elif switched:
            found.append(f"eSpeak NG ({voice}) read words of it as {', '.join(switched)}: write them in the "
                         f"corpus's language, or spell them out")
        else:
            found.append(None)
    return found


class PhonemeCache:
    """``<cache_dir>/phonemes/<voice>-v<FRONTEND_VERSION>.json``: text -> phonemes, read into the memo on open and
    written (atomically) with what was added, so that a corpus is phonemized once."""

    def __init__(self, cache_dir: Path, voice: str):
        self.voice = voice
        self.path = Path(cache_dir) / "phonemes" / f"{voice}-v{FRONTEND_VERSION}.json"
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        self.known = {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
        for text, phonemes in self.known.items():
            _memo.setdefault((voice, text), phonemes)

    def save(self, texts: list[str]) -> None:
        """Add the phonemes of ``texts`` (phonemizing those not memoized) and write the file if it grew."""
        added = {t: p for t, p in zip(texts, phonemize(texts, self.voice)) if t not in self.known}
        if added:
            self.known.update(added)
            write_atomic(self.path, json.dumps(self.known, ensure_ascii=False, sort_keys=True))
            log.info("phonemized %d texts with eSpeak NG (%s), cached in %s", len(added), self.voice, self.path)
