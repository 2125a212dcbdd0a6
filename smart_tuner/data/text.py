"""Text normalization and the symbol table, built from the corpus itself so that any script works."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"
SPECIALS = (PAD, EOS, UNK)


def normalize_text(text: str, lowercase: bool = True) -> str:
    """NFC, optional lowercasing, whitespace collapsed. Letters of every script are kept, never stripped."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


@dataclass
class SymbolTable:
    """Characters seen in the training texts plus pad (id 0), end-of-sequence and unknown."""

    symbols: list[str]
    lowercase: bool = True

    def __post_init__(self) -> None:
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], lowercase: bool = True) -> "SymbolTable":
        chars = sorted({c for t in texts for c in normalize_text(t, lowercase)})
        return cls(list(SPECIALS) + chars, lowercase)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    def encode(self, text: str) -> list[int]:
        """Normalized characters, then EOS; characters never seen in training map to UNK."""
        unk = self._ids[UNK]
        return [self._ids.get(c, unk) for c in normalize_text(text, self.lowercase)] + [self._ids[EOS]]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[i] for i in ids if self.symbols[i] not in SPECIALS)

    def to_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SymbolTable":
        return cls(list(data["symbols"]), bool(data["lowercase"]))
