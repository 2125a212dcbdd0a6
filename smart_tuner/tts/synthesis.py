"""Speech from text with a trained checkpoint: check the text against the checkpoint's symbols, decode batches
free-running, and hand back each sentence's log-mel (in the checkpoint's mel convention made absolute: natural
log of mel magnitudes, unstandardized), alignment and stop status. Files are written by
:mod:`smart_tuner.tts.speak`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .alignment import diagonality
from .inference import LoadedModel


class SynthesisError(UserError, ValueError):
    """The text or the request cannot be synthesized; the message says which line and why."""


@dataclass
class Sentence:
    number: int  # 1-based line of the input
    text: str
    ids: list[int]


@dataclass
class Spoken:
    sentence: Sentence
    mel: torch.Tensor  # (n_mels, frames) natural-log mel magnitudes, unstandardized, CPU float32
    alignment: torch.Tensor | None  # (decoder steps, tokens)
    stopped: bool  # the gate fired before the step limit
    diagonality: float  # free-running diagonality (NaN without attention)


def read_lines(text: str | None, text_file: str | Path | None) -> list[str]:
    """The sentences of ``--text`` (one) or ``--text-file`` (one per line); empty input is an error."""
    if text is not None:
        if not text.strip():
            raise SynthesisError("--text: the text is empty")
        return [text]
    path = Path(text_file)
    try:
        # Lines end at "\n" only: splitlines() would also cut at form feeds, "\x85" and "\u2028", and the file's
        # line numbers (which name the output files) would no longer be the lines a user sees in an editor.
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except FileNotFoundError:
        raise SynthesisError(f"{path}: no such text file") from None
    except UnicodeDecodeError:
        raise SynthesisError(f"{path}: not UTF-8 text") from None
    if not any(line.strip() for line in lines):
        raise SynthesisError(f"{path}: the file holds no text")
    while lines and not lines[-1].strip():  # a trailing newline or blank lines at the end are not sentences
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise SynthesisError(f"{path}:{empty[0]}: empty line ({len(empty)} in all); one sentence per line")
    return lines


def encode_lines(loaded: LoadedModel, lines: list[str], drop_missing: bool = False,
                 origin: str = "--text") -> list[Sentence]:
    """Token ids of each line. Characters the checkpoint's symbol table lacks are an error listing them (or, with
    ``drop_missing``, dropped); a line left with no symbol is an error."""
    symbols = loaded.symbols
    missing = {c: i + 1 for i, line in reversed(list(enumerate(lines))) for c in symbols.missing(line)}
    if missing and not drop_missing:
        listed = " ".join(repr(c) for c in sorted(missing))
        first = min(missing.values())
        what = (f"phonemes (eSpeak NG, {symbols.phonemes}) not in the checkpoint's symbol table: {listed}; reword "
                "the line" if symbols.phonemes else f"characters not in the checkpoint's symbol table: {listed}; "
                "remove them")
        raise SynthesisError(f"{origin}:{first}: {what} or pass --drop-missing")
    sentences = []
    for i, line in enumerate(lines):
        ids = symbols.encode(line, drop_missing=True)
        if not any(c.isalnum() for t in ids if symbols.symbols[t] != symbols.eos for c in symbols.symbols[t]):
            why = "after dropping unknown characters" if drop_missing else "(no letter or digit)"
            raise SynthesisError(f"{origin}:{i + 1}: nothing left to say {why}")
        sentences.append(Sentence(i + 1, line, ids))
    return sentences


def synthesize(loaded: LoadedModel, sentences: list[Sentence], device: torch.device, batch_size: int = 8,
               seed: int = 0) -> Iterator[Spoken]:
    """Decode free-running in batches of similar length; yields sentences in batch order. Prenet dropout stays on
    at inference (Tacotron 2), so the output depends on ``seed``: the same seed, input and batch size give the
    same mels."""
    torch.manual_seed(seed)
    order = sorted(sentences, key=lambda s: len(s.ids))
    pad = loaded.symbols.pad_id
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        lengths = torch.tensor([len(s.ids) for s in batch])
        text = torch.full((len(batch), int(lengths.max())), pad, dtype=torch.long)
        for i, s in enumerate(batch):  # a loop over sentences, not tensor elements
            text[i, :len(s.ids)] = torch.tensor(s.ids)
        out = loaded.family.synthesize(loaded.model, text.to(device), lengths.to(device))
        mel = loaded.stats.denormalize(out.mel.float().cpu())
        frames, stopped = out.mel_lengths.cpu().tolist(), out.stopped.cpu().tolist()
        diag = [float("nan")] * len(batch)
        alignments = None
        if out.alignments is not None:
            alignments = out.alignments.float().cpu()
            steps = out.alignment_lengths.cpu()
            diag = diagonality(alignments, lengths, steps).tolist()
        for i, s in enumerate(batch):
            alignment = alignments[i, :int(steps[i]), :len(s.ids)] if alignments is not None else None
            yield Spoken(s, mel[i, :, :frames[i]].contiguous(), alignment, bool(stopped[i]), diag[i])
