"""From a corpus directory to normalized, length-bucketed training batches.

Log-mel features are computed once per utterance and cached on disk under a key of the audio settings, so a
change of any audio setting never reuses stale features. Mels are normalized per channel with the training
set's mean and std (``data.mel_standardize``; without it the model works on log-mels as computed, NVIDIA's
convention); padding uses the normalized log floor (the value of silence), not zero.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import AudioConfig, Config, DataConfig, phoneme_voice
from ..files import write_atomic
from ..paths import demo_corpus_dir
from ..seeds import derived_seed
from .arpabet import ARPABET, mix
from .arpabet import PREFIX as ARPABET_PREFIX
from .audio import LOG_MEL_FLOOR, AudioError, MelExtractor, load_wav, trim_silence
from .corpus import BadLine, Corpus, CorpusError, read_corpus, write_report
from .text import SymbolTable, clean

log = logging.getLogger(__name__)

LOG_FLOOR = math.log(LOG_MEL_FLOOR)  # the log-mel of silence


@dataclass
class MelStats:
    mean: torch.Tensor  # (n_mels,)
    std: torch.Tensor  # (n_mels,)

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mean[:, None]) / self.std[:, None]

    def denormalize(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.std.to(mel)[:, None] + self.mean.to(mel)[:, None]

    @property
    def pad_value(self) -> torch.Tensor:
        return (LOG_FLOOR - self.mean) / self.std

    @classmethod
    def identity(cls, n_mels: int) -> MelStats:
        """No standardization: normalized mels are the log-mels as computed."""
        return cls(torch.zeros(n_mels), torch.ones(n_mels))

    @property
    def is_identity(self) -> bool:
        return bool((self.mean == 0).all() and (self.std == 1).all())

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> MelStats:
        return cls(torch.tensor(data["mean"]), torch.tensor(data["std"]))


def audio_cache_key(config: Config) -> str:
    return hashlib.sha1(json.dumps(asdict(config.audio), sort_keys=True).encode()).hexdigest()[:12]


def _safe_name(uid: str) -> str:
    return uid if re.fullmatch(r"[\w.-]+", uid) else hashlib.sha1(uid.encode()).hexdigest()


def features(wav_path: Path, audio: AudioConfig, extractor: MelExtractor) -> tuple[np.ndarray, np.ndarray]:
    """The audio as the features see it (resampled to ``audio.sample_rate``, silence trimmed) and its log-mel
    ``(n_mels, 1 + samples // hop)``, float32; silent or too short audio is an :class:`AudioError`."""
    wav = trim_silence(load_wav(wav_path, audio.sample_rate), top_db=audio.trim_db, frame_length=audio.win_length,
                       hop_length=audio.hop_length)
    if wav.size == 0 or not np.any(wav):
        raise AudioError(f"{wav_path}: the audio is silent")
    if wav.size <= audio.n_fft // 2:
        raise AudioError(f"{wav_path}: too short after trimming silence ({wav.size} samples)")
    return wav, extractor(wav).numpy().astype(np.float32)


class FeatureCache:
    """``<cache_dir>/<audio settings key>/<id>.npy``; a manifest of wav size and mtime detects changed audio."""

    def __init__(self, cache_dir: Path, config: Config):
        self.dir = cache_dir / audio_cache_key(config)
        write_atomic(self.dir / "audio.json", json.dumps(asdict(config.audio), indent=1))
        self.manifest_path = self.dir / "manifest.json"
        try:
            self.manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.manifest = {}
        self.audio = config.audio
        self.extractor = MelExtractor.from_config(config.audio)
        self.dirty = False

    def path(self, uid: str) -> Path:
        return self.dir / f"{_safe_name(uid)}.npy"

    def get(self, uid: str, wav_path: Path) -> np.ndarray:
        stat = wav_path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        path = self.path(uid)
        if self.manifest.get(uid) == stamp and path.is_file():
            return np.load(path)
        _, mel = features(wav_path, self.audio, self.extractor)
        write_atomic(path, lambda handle: np.save(handle, mel))  # several processes may fill one cache at once
        self.manifest[uid] = stamp
        self.dirty = True
        return mel

    def save(self) -> None:
        if self.dirty:
            write_atomic(self.manifest_path, json.dumps(self.manifest))
            self.dirty = False


class MelTextDataset(torch.utils.data.Dataset):
    """(text ids, normalized mel (n_mels, frames)) pairs; mels are read from the feature cache on demand."""

    def __init__(self, ids: list[str], texts: list[str], mel_paths: list[Path], frames: list[int],
                 symbols: SymbolTable, stats: MelStats, p_arpabet: float = 0.0, seed: int = 0):
        self.ids, self.texts, self.mel_paths, self.frames = ids, texts, mel_paths, frames
        self.symbols, self.stats = symbols, stats
        self.encoded = [torch.tensor(symbols.encode(t), dtype=torch.long) for t in texts]
        self.p_arpabet, self.seed = p_arpabet, seed

    def item(self, index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` as training reads it in ``epoch``: with ``data.p_arpabet``, some of its words as their
        ARPAbet (data/arpabet.py), drawn from the seed, the epoch and the index alone (a resumed run draws the same)."""
        if not self.p_arpabet:
            return self[index]
        rng = random.Random(derived_seed(self.seed, epoch, index))
        text = mix(self.symbols.clean(self.texts[index]), self.p_arpabet, rng)
        return torch.tensor(self.symbols.encode(text), dtype=torch.long), self[index][1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mel = torch.from_numpy(np.load(self.mel_paths[index]))
        return self.encoded[index], self.stats.normalize(mel)


@dataclass
class Batch:
    text: torch.Tensor  # (B, N) long, padded with the pad id
    text_lengths: torch.Tensor  # (B,) long
    mel: torch.Tensor  # (B, n_mels, T) normalized, T a multiple of r, padded with the log floor
    mel_lengths: torch.Tensor  # (B,) long
    gate: torch.Tensor  # (B, T) 1.0 from the last real frame on
    frames: int = 0  # real (unpadded) mel frames, counted on the host when the batch is made

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.text, self.text_lengths, self.mel, self.mel_lengths, self.gate)), frames=self.frames)

    def __len__(self) -> int:
        return self.text.shape[0]


def length_grid(lengths: list[int], count: int, multiple: int = 1) -> list[int]:
    """At most ``count`` padded lengths that cover ``lengths``: the ``k / count`` quantiles (k = 1 .. count) rounded
    up to ``multiple``; the last one is the longest length. A batch is padded to the smallest one that holds it."""
    ordered = sorted(lengths)
    edges = {-(-ordered[min(len(ordered) - 1, math.ceil(k * len(ordered) / count) - 1)] // multiple) * multiple
             for k in range(1, count + 1)}
    return sorted(edges)


def padded_length(length: int, grid: list[int] | None, multiple: int) -> int:
    """``length`` rounded up to ``multiple``, then to the grid (a length beyond the grid keeps its own): what a
    batch whose longest item has ``length`` is padded to."""
    length = -(-length // multiple) * multiple
    return next((edge for edge in grid or [] if edge >= length), length)


class Collate:
    """Items -> a padded :class:`Batch`: texts padded with the pad id, mels with the log floor, frames to a
    multiple of ``r``; with grids, both to the smallest grid length that holds the batch (static shapes)."""

    def __init__(self, pad_id: int, pad_value: torch.Tensor, r: int, frame_grid: list[int] | None = None,
                 text_grid: list[int] | None = None):
        self.pad_id, self.pad_value, self.r = pad_id, pad_value, r
        self.frame_grid, self.text_grid = frame_grid, text_grid

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        text_lengths = torch.tensor([len(t) for t, _ in items], dtype=torch.long)
        mel_lengths = torch.tensor([m.shape[1] for _, m in items], dtype=torch.long)
        n_max = padded_length(int(text_lengths.max()), self.text_grid, 1)
        t_max = padded_length(int(mel_lengths.max()), self.frame_grid, self.r)
        text = torch.full((len(items), n_max), self.pad_id, dtype=torch.long)
        mel = self.pad_value[None, :, None].repeat(len(items), 1, t_max)
        for i, (t, m) in enumerate(items):  # a loop over batch items, not tensor elements
            text[i, : len(t)] = t
            mel[i, :, : m.shape[1]] = m
        frame = torch.arange(t_max)[None, :]
        gate = (frame >= (mel_lengths[:, None] - 1)).float()
        return Batch(text, text_lengths, mel, mel_lengths, gate, frames=int(mel_lengths.sum()))


class BucketBatchSampler:
    """Batches of similar length: shuffle, cut into pools of ``pool`` batches, sort each pool by length.

    The order of epoch ``e`` depends only on (seed, e), so a resumed run that knows its epoch and position
    replays exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, pool: int = 16):
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(derived_seed(self.seed, epoch))
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.pool
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def eval_batches(dataset: MelTextDataset, batch_size: int, rank: int = 0, ranks: int = 1) -> Iterator[list[int]]:
    """Batches of similar length over the dataset, shortest first; with several ranks, rank ``rank``'s share (every
    ``ranks``-th item of that order, so each share spans the lengths alike)."""
    order = sorted(range(len(dataset)), key=lambda i: dataset.frames[i])[rank::ranks]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@dataclass
class PreparedData:
    corpus_dir: Path
    symbols: SymbolTable
    stats: MelStats
    train: MelTextDataset
    val: MelTextDataset
    skipped: list[BadLine]
    report_path: Path | None


def resolve_corpus_dir(config: Config) -> Path:
    """The configured corpus, or the demo corpus (built on first use)."""
    if config.data.corpus:
        return Path(config.data.corpus)
    from .demo import build_demo_corpus

    words = tuple(config.data.demo_words)
    out = demo_corpus_dir(config.data.demo_lang, config.data.demo_size, words)
    if not (out / "metadata.csv").is_file():
        log.info("building the demo corpus in %s (once)", out)
    return build_demo_corpus(out, lang=config.data.demo_lang, size=config.data.demo_size, words=words)


def prepare_data(config: Config, run_dir: Path | None = None) -> PreparedData:
    """Read and validate the corpus, compute or load features, split, build symbols and mel statistics."""
    corpus_dir = resolve_corpus_dir(config)
    corpus: Corpus = read_corpus(corpus_dir)
    report_path = run_dir / "data_report.txt" if run_dir else None
    if report_path:
        write_report(report_path, corpus)
    corpus.check_bad_share(config.data.max_bad_share, report_path)

    cache = _open_cache(config, corpus_dir)
    usable, frames, extra = _measure(corpus, cache, config.data.max_frames)
    cache.save()
    corpus.bad += extra
    if report_path:
        write_report(report_path, corpus)
    kept = Corpus(corpus.root, usable, corpus.bad, corpus.total_lines)
    kept.check_bad_share(config.data.max_bad_share, report_path)
    for bad in corpus.bad:
        log.warning("skipped %s", bad)
    if len(usable) < 2:
        raise CorpusError(f"{corpus_dir / 'metadata.csv'}: need at least 2 usable utterances, found {len(usable)}")

    symbols = _symbol_table(config, cache.dir.parent, [u.text for u in usable])
    val_ids = validation_ids([u.id for u in usable], config.data)
    split = {True: ([], []), False: ([], [])}
    for utt, n in zip(usable, frames):
        split[utt.id in val_ids][0].append(utt)
        split[utt.id in val_ids][1].append(n)

    train_utts, train_frames = split[False]
    stats = mel_statistics([cache.path(u.id) for u in train_utts], config.audio.n_mels) \
        if config.data.mel_standardize else MelStats.identity(config.audio.n_mels)

    def dataset(utts: list, n: list[int], p_arpabet: float = 0.0) -> MelTextDataset:
        return MelTextDataset([u.id for u in utts], [u.text for u in utts], [cache.path(u.id) for u in utts],
                              n, symbols, stats, p_arpabet, config.train.seed)

    return PreparedData(corpus_dir, symbols, stats, dataset(train_utts, train_frames, config.data.p_arpabet),
                        dataset(*split[True]), corpus.bad, report_path)


def validation_ids(ids: list[str], data: DataConfig) -> set[str]:
    """The utterances held out for validation: ``data.val_size`` of them (at most a fifth), drawn with
    ``data.split_seed`` from the sorted ids, so the same corpus always splits the same way."""
    n_val = min(data.val_size, max(1, len(ids) // 5))
    return set(random.Random(data.split_seed).sample(sorted(ids), n_val))


def _symbol_table(config: Config, cache_dir: Path, texts: list[str]) -> SymbolTable:
    """The table of the training texts' characters, or of their phonemes (phonemized once, cached with the
    features)."""
    voice = phoneme_voice(config.data)
    if voice is not None:
        from .phonemes import PhonemeCache

        PhonemeCache(cache_dir, voice).save([clean(t, config.data.cleaner, config.data.lowercase) for t in texts])
    table = SymbolTable.from_texts(texts, lowercase=config.data.lowercase, cleaner=config.data.cleaner,
                                   phonemes=voice)
    if config.data.p_arpabet:  # the symbols that mixed-in pronunciations read as
        table = SymbolTable(table.symbols + [ARPABET_PREFIX + a for a in ARPABET], table.lowercase, table.cleaner)
    return table


class CacheNotWritable(CorpusError):
    """The feature cache's folder cannot be written. The message names the config key; a command with its own
    option for it (``export-mels --cache-dir``) puts its own hint after ``problem``."""

    def __init__(self, cache_dir: Path, why: str):
        self.problem = f"cannot write the feature cache in {cache_dir}: {why}"
        super().__init__(f"{self.problem}; set data.cache_dir to a writable directory, e.g. "
                         "--set data.cache_dir=/tmp/tts-cache")


def _open_cache(config: Config, corpus_dir: Path) -> FeatureCache:
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else corpus_dir / ".smart_tuner_cache"
    try:
        return FeatureCache(cache_dir, config)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = "the corpus directory is read-only" if not config.data.cache_dir else "it is not writable"
        raise CacheNotWritable(cache_dir, f"{where} ({exc.strerror})") from None


def _measure(corpus: Corpus, cache: FeatureCache, max_frames: int) -> tuple[list, list[int], list[BadLine]]:
    """The utterances whose features compute and fit ``max_frames``, their frame counts, and the rest as bad lines."""
    metadata = str(corpus.root / "metadata.csv")
    usable, frames, extra = [], [], []
    for utt in corpus.utterances:
        try:
            mel = cache.get(utt.id, utt.wav_path)
        except AudioError as exc:
            extra.append(BadLine(metadata, utt.line, utt.id, str(exc)))
            continue
        if mel.shape[1] > max_frames:
            extra.append(BadLine(metadata, utt.line, utt.id,
                                 f"too long: {mel.shape[1]} frames > data.max_frames={max_frames}"))
            continue
        usable.append(utt)
        frames.append(mel.shape[1])
    return usable, frames, extra


def mel_statistics(mel_paths: list[Path], n_mels: int) -> MelStats:
    """Per-channel mean and std of cached log-mels (sum and sum of squares, one pass)."""
    total = torch.zeros(n_mels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for path in mel_paths:
        mel = torch.from_numpy(np.load(path)).double()
        total += mel.sum(1)
        total_sq += (mel * mel).sum(1)
        count += mel.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-8).sqrt().clamp_min(1e-3)
    return MelStats(mean.float(), std.float())
