"""Text normalization and the symbol table, built from the corpus itself so that any script works.

Two normalizers (``data.cleaner``): ``basic`` (Unicode NFC, optional lowercasing, whitespace collapsed; letters of
every script kept) and ``english`` (the English cleaning NVIDIA's Tacotron 2 checkpoints were trained with:
ASCII folding, lowercase, numbers spelled out, abbreviations expanded, whitespace collapsed). A table names its
normalizer, and for ``data.text: phonemes`` its eSpeak NG voice (data/phonemes.py: the cleaned text is phonemized and
its phoneme characters are the symbols), so a checkpoint encodes new text the way its training text was encoded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .arpabet import BRACES
from .arpabet import PREFIX as ARPABET_PREFIX

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"
SPECIALS = (PAD, EOS, UNK)
CLEANERS = ("basic", "english")


def normalize_text(text: str, lowercase: bool = True) -> str:
    """NFC, optional lowercasing, whitespace collapsed. Letters of every script are kept, never stripped."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------- English
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
_ABBREVIATIONS = {"mrs": "misess", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company",
                  "jr": "junior", "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend",
                  "lt": "lieutenant", "hon": "honorable", "sgt": "sergeant", "capt": "captain", "esq": "esquire",
                  "ltd": "limited", "col": "colonel", "ft": "fort"}
_ABBREVIATION_RE = re.compile(r"\b(" + "|".join(sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")\.", re.I)
# Punctuation that ASCII folding by decomposition cannot reach.
_ASCII_PUNCTUATION = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...",
                                    "«": '"', "»": '"', "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O",
                                    "œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D"})


def number_words(n: int) -> str:
    """A non-negative integer in English words: 1984 -> "one thousand nine hundred eighty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return number_words(head) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def _year_or_number(n: int) -> str:
    """Years are read in pairs (1984: "nineteen eighty four"), other numbers as cardinals."""
    if 1100 <= n < 2000 or 2010 <= n < 2100:
        high, low = divmod(n, 100)
        return number_words(high) + (" hundred" if low == 0 else (" oh " if low < 10 else " ") + number_words(low))
    return number_words(n)


def _ordinal(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _currency(match: re.Match) -> str:
    whole, _, cents = match.group(1).replace(",", "").partition(".")
    dollars, cents_value = int(whole or 0), int((cents + "00")[:2]) if cents else 0
    parts = []
    if dollars or not cents_value:
        parts.append(f"{number_words(dollars)} dollar{'' if dollars == 1 else 's'}")
    if cents_value:
        parts.append(f"{number_words(cents_value)} cent{'' if cents_value == 1 else 's'}")
    return " and ".join(parts)


def expand_numbers(text: str) -> str:
    """Spell out currency ($3.50), thousands separators, decimals (2.5), ordinals (21st), percentages and plain
    integers (years read in pairs) in English. Numbers of more than 15 digits are read digit by digit."""
    text = re.sub(r"£([0-9][0-9,]*(?:\.[0-9]+)?)", lambda m: m.group(1).replace(",", "") + " pounds", text)
    text = re.sub(r"\$([0-9][0-9,]*(?:\.[0-9]+)?)", _currency, text)
    text = re.sub(r"\b([0-9]{1,3}(?:,[0-9]{3})+)\b", lambda m: m.group(1).replace(",", ""), text)
    text = re.sub(r"\b([0-9]+)\.([0-9]+)\b", lambda m: m.group(1) + " point " + " ".join(m.group(2)), text)
    text = re.sub(r"\b([0-9]+)(st|nd|rd|th)\b", lambda m: _ordinal(int(m.group(1))), text, flags=re.I)
    text = re.sub(r"([0-9])\s*%", r"\1 percent", text)

    def integer(match: re.Match) -> str:
        digits = match.group(0)
        if len(digits) > 15:
            return " ".join(_ONES[int(d)] for d in digits)
        return _year_or_number(int(digits))

    return re.sub(r"[0-9]+", integer, text)


def to_ascii(text: str) -> str:
    """Latin letters without their accents (é -> e), typographic punctuation as ASCII; what has no ASCII form
    (other scripts) is kept, so that a symbol check can name it."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCTUATION))
    return unicodedata.normalize("NFC", "".join(c for c in text if not unicodedata.combining(c)))


def english_cleaner(text: str) -> str:
    """ASCII folding, lowercase, numbers spelled out, abbreviations expanded, whitespace collapsed."""
    text = expand_numbers(to_ascii(text)).lower()
    text = _ABBREVIATION_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    return " ".join(text.split())


def clean(text: str, cleaner: str = "basic", lowercase: bool = True) -> str:
    """``text`` under the normalizer ``cleaner`` (see :data:`CLEANERS`)."""
    if cleaner == "english":
        return english_cleaner(text)
    if cleaner == "basic":
        return normalize_text(text, lowercase)
    raise ValueError(f"unknown text cleaner {cleaner!r}; choose one of {', '.join(CLEANERS)}")


# ----------------------------------------------------------------------------------------------- symbols
@dataclass
class SymbolTable:
    """Symbols and their ids. A table built from a corpus holds pad (id 0), end-of-sequence and unknown, then
    the characters seen in the training texts; an imported table (NVIDIA's) names its own pad and may have no
    end-of-sequence or unknown symbol (``eos``/``unk`` None: nothing appended, unknown characters dropped)."""

    symbols: list[str]
    lowercase: bool = True
    cleaner: str = "basic"
    pad: str = PAD
    eos: str | None = EOS
    unk: str | None = UNK
    phonemes: str | None = None  # the eSpeak NG voice of a phoneme table (data/phonemes.py); None: characters
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], lowercase: bool = True, cleaner: str = "basic",
                   phonemes: str | None = None) -> SymbolTable:
        """The table of the characters of ``texts`` once cleaned (and phonemized with the voice ``phonemes``)."""
        table = cls(list(SPECIALS), lowercase, cleaner, phonemes=phonemes)
        chars = sorted({c for t in table.clean_all(list(texts)) for c in t})
        return cls(list(SPECIALS) + chars, lowercase, cleaner, phonemes=phonemes)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def pad_id(self) -> int:
        return self._ids[self.pad]

    def role(self, symbol: str) -> str:
        """The role a special symbol plays (``<pad>``, ``<eos>``, ``<unk>``), else the symbol itself: rows of two
        tables correspond when their roles are equal (NVIDIA's pad ``_`` is our ``<pad>``)."""
        return {self.pad: PAD, self.eos: EOS, self.unk: UNK}.get(symbol, symbol)

    def id_of_role(self, role: str) -> int | None:
        symbol = {PAD: self.pad, EOS: self.eos, UNK: self.unk}.get(role, role)
        return self._ids.get(symbol) if symbol is not None else None

    def clean(self, text: str) -> str:
        """What the table encodes of ``text``: normalized by its cleaner, then phonemized for a phoneme table."""
        return self.clean_all([text])[0]

    def clean_all(self, texts: list[str]) -> list[str]:
        """:meth:`clean` of each text, phonemized in one call."""
        cleaned = [clean(t, self.cleaner, self.lowercase) for t in texts]
        if self.phonemes is None:
            return cleaned
        from .phonemes import phonemize

        return phonemize(cleaned, self.phonemes)

    @property
    def arpabet(self) -> bool:
        """Whether the table has ARPAbet symbols (``@HH``, NVIDIA's): then ``{HH AH0 L OW1}`` in a text is read as
        them."""
        return f"{ARPABET_PREFIX}AA" in self._ids

    def tokens(self, text: str) -> list[str]:
        """The symbols ``text`` reads as: its cleaned characters (or phonemes), and with an ARPAbet table each
        brace group's ARPAbet symbols, as NVIDIA's ``text_to_sequence`` reads them (the text between the groups
        cleaned, a space at either end of it kept)."""
        if not self.arpabet or "{" not in text:
            return list(self.clean(text))
        found: list[str] = []
        for i, part in enumerate(BRACES.split(text)):
            if i % 2:
                found += [ARPABET_PREFIX + p.upper() for p in part.split()]
            elif part:
                cleaned = self.clean(part)
                edges = (" " if part[:1].isspace() else "", " " if part[-1:].isspace() and cleaned else "")
                found += list(edges[0] + cleaned + edges[1])
        return found

    def missing(self, text: str) -> list[str]:
        """Symbols of ``text`` (:meth:`tokens`) that the table lacks, sorted."""
        specials = {self.pad, self.eos, self.unk}
        return sorted({c for c in self.tokens(text) if c not in self._ids or c in specials})

    def encode(self, text: str, drop_missing: bool = False) -> list[int]:
        """The ids of :meth:`tokens`, then EOS if the table has one; a symbol the table lacks maps to UNK, or is
        dropped when ``drop_missing`` is set or the table has no UNK."""
        unk = None if drop_missing or self.unk is None else self._ids[self.unk]
        ids = [self._ids.get(c, unk) for c in self.tokens(text)]
        ids = [i for i in ids if i is not None]
        return ids + ([self._ids[self.eos]] if self.eos is not None else [])

    def decode(self, ids: Iterable[int]) -> str:
        specials = {self.pad, self.eos, self.unk}
        return "".join(self.symbols[i] for i in ids if self.symbols[i] not in specials)

    def to_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "lowercase": self.lowercase, "cleaner": self.cleaner,
                "pad": self.pad, "eos": self.eos, "unk": self.unk, "phonemes": self.phonemes,
                "frontend": self.frontend}

    @property
    def frontend(self) -> str:
        """What turns text into the table's symbols: ``characters`` or ``espeak-ng <version> <voice>``."""
        if self.phonemes is None:
            return "characters"
        from .phonemes import FRONTEND, FRONTEND_VERSION

        return f"{FRONTEND} v{FRONTEND_VERSION} {self.phonemes}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SymbolTable:
        """A saved table; one saved before tables named their cleaner, specials or phonemes gets today's defaults
        (a table saved before phonemes existed is a character table)."""
        return cls(list(data["symbols"]), bool(data["lowercase"]), data.get("cleaner", "basic"),
                   data.get("pad", PAD), data.get("eos", EOS), data.get("unk", UNK), data.get("phonemes"))
