"""``export-mels``: a corpus as a HiFi-GAN fine-tuning run reads it (jik876/hifi-gan's ``train.py --fine_tuning
True``): per utterance ``wavs/<id>.wav``, the audio exactly as its features were computed (resampled, silence
trimmed; 16-bit PCM at the checkpoint's rate), and ``mels/<id>.npy``, the checkpoint's teacher-forced mel of it
(``--ground-truth``: the features themselves) in the convention ``synthesize --mel`` writes (natural-log mel
magnitudes, unstandardized, ``(n_mels, frames)``); and ``training.txt`` / ``validation.txt``, the split training
used, as ``id|text|cleaned text`` lines like hifi-gan's LJSpeech lists.

Lengths. Our features are centred frames: ``1 + samples // hop`` of them. hifi-gan's own mel of a clip has
``samples // hop`` frames, and its fine-tuning cuts audio at ``frame x hop``, so each exported mel keeps its first
``samples // hop`` frames: ``frames x hop <= samples < (frames + 1) x hop``, the audio left exactly as it was.

Every file is written atomically; an export that stops is continued by running it again (an utterance whose two
files are there is skipped), and ``export.json`` refuses to mix files of another checkpoint or mode into one folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.audio import MelExtractor, wav_bytes
from ..data.corpus import Utterance, read_corpus
from ..data.dataset import CacheNotWritable, Collate, features, prepare_data
from ..errors import UserError
from ..files import remove_stale_temporaries, write_atomic
from .inference import LoadedModel, load_for_inference, pick_device

LISTS = {"train": "training.txt", "val": "validation.txt"}


class ExportError(UserError, ValueError):
    """The export cannot be made as asked; the message says which file and what to do."""


@dataclass
class Exported:
    utterance: Utterance
    split: str  # "train" or "val"
    frames: int  # the features' frames (1 + samples // hop)


def exported_frames(samples: int, hop: int) -> int:
    """The mel frames hifi-gan pairs with ``samples`` of audio: its own mel of them has ``samples // hop``."""
    return samples // hop


def export_mels(checkpoint: Path, corpus: Path, out: Path, *, ground_truth: bool = False, device: str = "auto",
                batch_size: int = 8, seed: int = 0, cache_dir: str | None = None, progress: bool = True) -> int:
    """Write the export of ``corpus`` under ``out`` (see the module's text); returns 0."""
    if batch_size < 1:
        raise ExportError(f"--batch-size {batch_size}: give 1 or more utterances per batch")
    torch_device = pick_device(device)
    loaded = load_for_inference(checkpoint, torch_device)
    items, skipped = _items(loaded, corpus, cache_dir, check_text=not ground_truth)
    mode = "ground-truth" if ground_truth else "teacher-forced"
    _claim(out, checkpoint, mode, loaded)
    todo = [e for e in items if not _done(out, e.utterance.id)]
    start = time.perf_counter()
    torch.manual_seed(seed)  # prenet dropout stays on (Tacotron 2): the seed fixes the teacher-forced mels
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="export-mels", disable=not progress,
               dynamic_ncols=True)
    extractor = MelExtractor.from_config(loaded.config.audio)
    for first in range(0, len(todo), batch_size):
        batch = todo[first:first + batch_size]
        computed = [features(e.utterance.wav_path, loaded.config.audio, extractor) for e in batch]
        mels = [m for _, m in computed] if ground_truth else _teacher_forced(loaded, batch, [m for _, m in computed],
                                                                             torch_device)
        for exported, (wav, _), mel in zip(batch, computed, mels):
            _write(out, exported.utterance.id, wav, mel, loaded.config.audio.hop_length,
                   loaded.config.audio.sample_rate)
            bar.update(1)
    bar.close()
    for split, name in LISTS.items():  # last: a list names only files that are there
        lines = [_list_line(loaded, e.utterance) for e in items if e.split == split]
        write_atomic(out / name, "".join(lines))
    took = time.perf_counter() - start
    left_out = f", {skipped} left out as training leaves them out (logged above)" if skipped else ""
    print(f"{len(items)} utterances ({mode} mels; {len(items) - len(todo)} were already there{left_out}) from "
          f"{checkpoint} in {out} [{took:.1f} s]")
    print(f"fine-tune HiFi-GAN on them, its config's sampling_rate, hop_size, win_size, n_fft, num_mels, fmin, fmax "
          f"set to {_audio_summary(loaded)}:\n  python train.py --fine_tuning True --config config.json "
          f"--input_wavs_dir {out / 'wavs'} --input_mels_dir {out / 'mels'} "
          f"--input_training_file {out / LISTS['train']} --input_validation_file {out / LISTS['val']}")
    return 0


def _items(loaded: LoadedModel, corpus: Path, cache_dir: str | None, check_text: bool) -> tuple[list[Exported], int]:
    """The corpus's usable utterances (as training measures them: readable audio within ``data.max_frames``) with
    the split training made of them, shortest first, and how many lines were left out; text the checkpoint cannot
    encode is an error naming its line."""
    if not (corpus / "metadata.csv").is_file():
        raise ExportError(f"{corpus}: no metadata.csv; --corpus names an LJSpeech-format corpus directory")
    config = replace(loaded.config, data=replace(loaded.config.data, corpus=str(corpus), cache_dir=cache_dir))
    try:
        prepared = prepare_data(config)
    except CacheNotWritable as exc:
        raise ExportError(f"{exc.problem}; give --cache-dir a writable directory, e.g. --cache-dir /tmp/tts-cache"
                          ) from None
    by_id = {u.id: u for u in read_corpus(corpus).utterances}
    items = [Exported(by_id[uid], split, frames) for split, dataset in (("train", prepared.train),
                                                                         ("val", prepared.val))
             for uid, frames in zip(dataset.ids, dataset.frames)]
    if check_text:
        symbols = loaded.symbols
        symbols.clean_all([e.utterance.text for e in items])  # phonemized in one call (memoized)
        for e in sorted(items, key=lambda e: e.utterance.line):
            missing = symbols.missing(e.utterance.text)
            if missing:
                kind = f"phonemes (eSpeak NG, {symbols.phonemes})" if symbols.phonemes else "characters"
                raise ExportError(f"{corpus / 'metadata.csv'}:{e.utterance.line}: {kind} not in the checkpoint's "
                                  f"symbol table: {' '.join(map(repr, missing))}; a teacher-forced mel needs the text "
                                  "the model was trained on (or pass --ground-truth)")
    return sorted(items, key=lambda e: e.frames), len(prepared.skipped)


def _claim(out: Path, checkpoint: Path, mode: str, loaded: LoadedModel) -> None:
    """``out/export.json`` says what the files in ``out`` are; another checkpoint's or mode's export is refused."""
    mine = {"checkpoint": str(checkpoint.resolve()), "mode": mode, "audio": asdict(loaded.config.audio),
            "frontend": loaded.symbols.frontend}
    path = out / "export.json"
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ExportError(f"{path}: not an export-mels record; choose an empty --out") from None
        if theirs != mine:
            differs = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ExportError(f"{out} holds an export with another {', '.join(differs)} ({path}); choose another "
                              "--out or delete that folder")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder or an earlier export; choose another --out")
    for sub in ("wavs", "mels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / sub)
    write_atomic(path, json.dumps(mine, indent=1))


def _done(out: Path, uid: str) -> bool:
    return (out / "wavs" / f"{uid}.wav").is_file() and (out / "mels" / f"{uid}.npy").is_file()


def _teacher_forced(loaded: LoadedModel, batch: list[Exported], mels: list[np.ndarray],
                    device: torch.device) -> list[np.ndarray]:
    """The model's final mel of each utterance fed its own features (teacher forcing), unstandardized."""
    symbols, stats = loaded.symbols, loaded.stats
    collate = Collate(symbols.pad_id, stats.pad_value, loaded.family.frames_multiple)
    items = [(torch.tensor(symbols.encode(e.utterance.text), dtype=torch.long), stats.normalize(torch.from_numpy(m)))
             for e, m in zip(batch, mels)]
    with torch.inference_mode():
        out = loaded.family.training_forward(loaded.model, collate(items).to(device), loaded.family.loss_weights())
    prediction = stats.denormalize(out.prediction.float().cpu())
    return [prediction[i, :, :m.shape[1]].numpy().astype(np.float32) for i, m in enumerate(mels)]


def _write(out: Path, uid: str, wav: np.ndarray, mel: np.ndarray, hop: int, sample_rate: int) -> None:
    """The mel first, then the audio: an utterance counts as done when both are there."""
    frames = exported_frames(len(wav), hop)
    write_atomic(out / "mels" / f"{uid}.npy", partial(np.save, arr=np.ascontiguousarray(mel[:, :frames])))
    write_atomic(out / "wavs" / f"{uid}.wav", wav_bytes(wav, sample_rate))


def _list_line(loaded: LoadedModel, utterance: Utterance) -> str:
    return f"{utterance.id}|{utterance.text}|{loaded.symbols.clean(utterance.text)}\n"


def _audio_summary(loaded: LoadedModel) -> str:
    a = loaded.config.audio
    return f"{a.sample_rate}, {a.hop_length}, {a.win_length}, {a.n_fft}, {a.n_mels}, {a.fmin:g}, {a.fmax:g}"
