"""Reading and validating an LJSpeech-format corpus: ``metadata.csv`` (``id|text[|normalized_text]``) + ``wavs/``.

Every line is checked. A bad line is skipped and recorded (file, line, id, reason); the corpus is refused only
when the share of bad lines exceeds ``data.max_bad_share``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile

from ..errors import UserError
from ..files import write_atomic


class CorpusError(UserError, ValueError):
    """The corpus cannot be used; the message says which file and what to do."""


# What an audio file of speech can be: rates outside this range are broken headers (a WAV declaring 7 Hz would be
# resampled into gigabytes), and samples beyond this magnitude are broken data (a float WAV holding 1e25 wrecks the
# mel statistics). Full scale is 1; float files may overshoot a little.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000
MAX_ABS_SAMPLE = 4.0


def header_problem(samplerate: int) -> str | None:
    """Why a file's header rules it out before decoding, or None."""
    if not MIN_SAMPLE_RATE <= samplerate <= MAX_SAMPLE_RATE:
        return (f"absurd sample rate {samplerate} Hz in the header (expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} "
                "Hz)")
    return None


def id_problem(uid: str) -> str | None:
    """Why an id cannot name a file in ``wavs/`` (``../x`` or ``/etc/x`` would read audio outside the corpus)."""
    if "/" in uid or "\\" in uid or uid.startswith(".") or "\0" in uid:
        return "the id is not a plain file name (a path, or starting with '.'); ids name files in wavs/"
    return None


@dataclass
class Utterance:
    id: str
    text: str
    wav_path: Path
    line: int  # 1-based line in metadata.csv


@dataclass
class BadLine:
    file: str
    line: int
    id: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.id or '-'}: {self.reason}"


@dataclass
class Corpus:
    root: Path
    utterances: list[Utterance]
    bad: list[BadLine] = field(default_factory=list)
    total_lines: int = 0

    def check_bad_share(self, max_bad_share: float, report_path: Path | None = None) -> None:
        """Refuse the corpus when too many lines are bad; list the first few problems in the message."""
        if not self.utterances:
            raise CorpusError(
                f"{self.root / 'metadata.csv'}: no usable utterance"
                + (f"; problems: {'; '.join(map(str, self.bad[:5]))}" if self.bad else "")
            )
        share = len(self.bad) / max(self.total_lines, 1)
        if share > max_bad_share:
            first = "\n  ".join(map(str, self.bad[:5]))
            where = f"; the full list is in {report_path}" if report_path else ""
            raise CorpusError(
                f"{self.root / 'metadata.csv'}: {len(self.bad)} of {self.total_lines} lines are bad "
                f"({share:.0%}), more than data.max_bad_share={max_bad_share:.0%}{where}. First problems:\n  "
                f"{first}\nFix these lines, or raise data.max_bad_share to train on the rest."
            )


def read_corpus(root: str | Path) -> Corpus:
    """Parse and validate ``root/metadata.csv``; never raises for a bad line, only for a missing corpus."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not root.is_dir():
        raise CorpusError(f"{root}: no such corpus directory (expected metadata.csv and wavs/ inside)")
    if not meta.is_file():
        raise CorpusError(f"{meta}: missing; a corpus is a directory with metadata.csv and wavs/<id>.wav")
    raw_lines = meta.read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the trailing newline
    utterances: list[Utterance] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    total = 0
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        if not raw.strip():
            continue  # blank lines are not utterances
        total += 1
        try:
            utterances.append(_read_line(root, raw, number, seen))
        except _Rejected as rejected:
            bad.append(BadLine(str(meta), number, rejected.uid, rejected.reason))
    return Corpus(root, utterances, bad, total)


class _Rejected(Exception):
    """Why one metadata line is not an utterance (collected as a :class:`BadLine`, never raised out of here)."""

    def __init__(self, reason: str, uid: str = ""):
        super().__init__(reason)
        self.reason, self.uid = reason, uid


def _read_line(root: Path, raw: bytes, number: int, seen: dict[str, int]) -> Utterance:
    """One non-blank metadata line as an utterance; ``seen`` maps the ids read so far to their line numbers."""
    # The id is read before anything else so that every problem is reported with it.
    uid = raw.split(b"|", 1)[0].decode("utf-8", errors="replace").strip()
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Rejected(f"not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); save the file as UTF-8",
                        uid) from None
    fields = line.split("|")
    if len(fields) not in (2, 3):
        raise _Rejected(f"expected 2 or 3 '|'-separated columns (id|text[|normalized text]), found {len(fields)}",
                        uid)
    text = (fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]).strip()
    if not uid:
        raise _Rejected("empty id")
    if not text:
        raise _Rejected("empty text", uid)
    if uid in seen:
        raise _Rejected(f"duplicate id (first on line {seen[uid]})", uid)
    seen[uid] = number
    problem = id_problem(uid)
    if problem:
        raise _Rejected(problem, uid)
    wav = root / "wavs" / f"{uid}.wav"
    problem = _audio_problem(wav)
    if problem:
        raise _Rejected(problem, uid)
    return Utterance(uid, text, wav, number)


def _audio_problem(wav: Path) -> str | None:
    """Why ``wav`` cannot be an utterance's audio, read from its header only; None when it can."""
    if not wav.is_file():
        return f"missing audio file {wav}"
    try:
        info = soundfile.info(str(wav))
    except Exception as exc:  # soundfile raises several types for broken files
        return f"unreadable audio file {wav} ({type(exc).__name__}: {exc})"
    if info.frames == 0:
        return f"zero-length audio file {wav}"
    problem = header_problem(info.samplerate)
    return f"{wav}: {problem}" if problem else None


def write_report(path: Path, corpus: Corpus, extra: list[BadLine] | None = None) -> None:
    """A human-readable list of skipped lines plus a JSON twin for tools."""
    bad = corpus.bad + list(extra or [])
    lines = [
        f"corpus: {corpus.root}",
        f"lines: {corpus.total_lines}, usable: {corpus.total_lines - len(bad)}, skipped: {len(bad)}",
        *map(str, bad),
    ]
    write_atomic(path, "\n".join(lines) + "\n")
    write_atomic(path.with_suffix(".json"), json.dumps(
        {"corpus": str(corpus.root), "lines": corpus.total_lines, "skipped": [asdict(b) for b in bad]},
        ensure_ascii=False, indent=1))


def check_command(root: str | Path, max_bad_share: float, phonemes: str | None = None) -> int:
    """``data check``: every bad line of the corpus, and with ``phonemes`` (an eSpeak NG voice) the usable lines
    that voice cannot read (they stay usable: training reads what eSpeak NG makes of them); exit 0, or a
    :class:`CorpusError` when the bad share is too high."""
    corpus = read_corpus(root)
    for bad in corpus.bad:
        print(bad)
    unreadable = 0
    if phonemes:
        from .phonemes import problems
        from .text import normalize_text

        meta = str(corpus.root / "metadata.csv")
        for utt, problem in zip(corpus.utterances, problems([normalize_text(u.text) for u in corpus.utterances],
                                                            phonemes)):
            if problem:
                unreadable += 1
                print(BadLine(meta, utt.line, utt.id, problem))
    print(f"{corpus.root}: {corpus.total_lines} lines, {len(corpus.utterances)} usable, {len(corpus.bad)} bad"
          + (f", {unreadable} that eSpeak NG ({phonemes}) cannot read" if phonemes else ""))
    corpus.check_bad_share(max_bad_share)
    return 0
