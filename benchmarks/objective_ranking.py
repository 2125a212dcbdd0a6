"""Does a study's value rank trials as they synthesize? The old objective against the new one, on finished studies.

Usage: python benchmarks/objective_ranking.py --study NAME [--study NAME ...] [--storage URL ...] [--sentences 16]
                                              [--held-out-seed 4321] [--seed 0] [--threads 2] [--out FILE.json]

For every trial that left a checkpoint (last.pt, the state of its last evaluation; else best.pt), --sentences
held-out sentences are decoded free-running from their text alone (as `synthesize` does), seeded (``--seed``:
the prenet's dropout stays on). Held out means disjoint from everything training saw or evaluated: they come
from a demo corpus of the trial's language and words per utterance built with another seed
(``--held-out-seed``), less any text the training corpus also holds; their mels are normalized with the
checkpoint's own statistics. Two errors are measured without any attention metric: the DTW error, each predicted
mel compared with the recording's by dynamic time warping (the mean Euclidean distance per frame pair along the
cheapest monotonic path, in normalized log-mel units, divided by the two lengths' sum), and the length error, the
mean |log(predicted frames / recorded frames)|. DTW warps any output onto the recording, so a babble that never
finds the text can still score well on it; the length error sees what DTW forgives (a decoder that never stops).
The trial's last evaluation gives its value under two formulas (smart_tuner.study.objective_file.Score): the
old one (teacher-forced diagonality, no stop term) and the new one (the worse of teacher-forced and free-running
diagonality, plus 0.5 x (1 - free-running stop rate)). Per study: the table, and Spearman's rank correlation of each
value with each error with a 95% bootstrap interval over the trials (1 means the value orders the trials exactly as they
synthesize), and the difference new - old with a paired-bootstrap interval.

The rule for the default objective (issue 21, item 4; written 2026-12-07 before the run on the three studies, after
a check run on the first of them): the default (``alignment: worse``, ``stop_penalty: 0.5``) changes to the old
formula only if, in at least two of the studies, the difference new - old is negative with its interval below 0 for
at least one error and above 0 for neither; otherwise it stays (the data then do not show the old formula ranking
trials better as they synthesize, and synthesis needs free-running alignment and a stop).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from harness import difference_interval, provenance, spearman_interval, write_results

from smart_tuner.config import build_config, merge
from smart_tuner.data.dataset import Collate, MelTextDataset, prepare_data
from smart_tuner.data.demo import build_demo_corpus
from smart_tuner.run_logs import BEST, CHECKPOINTS, LAST, read_metrics
from smart_tuner.study.objective_file import Score
from smart_tuner.study.storage import open_study_readonly
from smart_tuner.tts.inference import LoadedModel, load_for_inference

OLD = Score(alignment="teacher_forced", stop_penalty=0.0)  # the default until 2026-11-29
NEW = Score(alignment="worse", stop_penalty=0.5)  # the default since 2026-11-29


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """DTW of two (frames, channels) sequences, by anti-diagonals (each one vectorized)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for k in range(2, n + m + 1):  # cells (i, j), 1-based, with i + j = k
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        acc[i, j] = cost[i - 1, j - 1] + np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
    return float(acc[n, m] / (n + m))


def held_out(loaded: LoadedModel, count: int, seed: int, folder: Path) -> MelTextDataset:
    """``count`` utterances training never saw: a demo corpus of the checkpoint's language and word range built
    with ``seed``, less the texts of the training corpus and any the symbol table cannot read."""
    data = loaded.config.data
    if data.corpus:
        raise SystemExit(f"held-out sentences come from the demo corpus; this study trained on {data.corpus}")
    out = folder / f"held-out-{data.demo_lang}-{data.demo_words[0]}-{data.demo_words[1]}-{seed}"
    corpus = build_demo_corpus(out, lang=data.demo_lang, size=4 * count, seed=seed, words=tuple(data.demo_words))
    training = prepare_data(loaded.config)
    trained = set(training.train.texts) | set(training.val.texts)
    config = build_config(merge(loaded.config.to_dict(), {"data": {"corpus": str(corpus), "val_size": 2,
                                                                   "cache_dir": str(out / "cache")}}))
    prepared = prepare_data(config)
    rows = [(d, i) for d in (prepared.train, prepared.val) for i in range(len(d))
            if d.texts[i] not in trained and not loaded.symbols.missing(d.texts[i])][:count]
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} held-out sentences; raise the held-out corpus size")
    return MelTextDataset([d.ids[i] for d, i in rows], [d.texts[i] for d, i in rows],
                          [d.mel_paths[i] for d, i in rows], [d.frames[i] for d, i in rows], loaded.symbols,
                          loaded.stats)


@torch.no_grad()
def synthesis_error(checkpoint: Path, sentences: int, held_out_seed: int, seed: int,
                    folder: Path) -> tuple[float, float]:
    """(DTW error, length error) on held-out sentences: the mean DTW distance, and the mean |log(predicted frames
    / recorded frames)| (a decoder that never stops runs to twice the batch's longest recording)."""
    loaded = load_for_inference(checkpoint)
    data = held_out(loaded, sentences, held_out_seed, folder)
    collate = Collate(loaded.symbols.pad_id, loaded.stats.pad_value, loaded.family.frames_multiple)
    batch = collate([data[i] for i in range(len(data))])
    torch.manual_seed(seed)
    out = loaded.family.synthesize(loaded.model, batch.text, batch.text_lengths, max_frames=2 * batch.mel.shape[-1])
    errors, lengths = [], []
    for i in range(len(batch)):
        predicted = out.mel[i, :, : int(out.mel_lengths[i])].T.numpy()
        target = batch.mel[i, :, : int(batch.mel_lengths[i])].T.numpy()
        errors.append(dtw_distance(predicted, target))
        lengths.append(abs(np.log(max(len(predicted), 1) / len(target))))
    return float(np.mean(errors)), float(np.mean(lengths))


def rank_study(name: str, storage: str | None, args: argparse.Namespace, folder: Path) -> dict:
    study = open_study_readonly(name, storage)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_dir = Path(trial.user_attrs.get("run_dir", ""))
        checkpoint = next((run_dir / CHECKPOINTS / n for n in (LAST, BEST)
                           if (run_dir / CHECKPOINTS / n).is_file()), None)
        evals = read_metrics(run_dir) if checkpoint is not None else []
        if not evals:
            continue
        last = evals[-1]
        error, length = synthesis_error(checkpoint, args.sentences, args.held_out_seed, args.seed, folder)
        rows.append({"trial": trial.number, "state": trial.state.name, "step": last["step"],
                     "old": OLD.value(last["val_postnet"], last), "new": NEW.value(last["val_postnet"], last),
                     "tf": last["diagonality"], "fr": last["free_running_diagonality"],
                     "stop": last["free_running_stop_rate"], "error": error, "length": length})
        r = rows[-1]
        print(f"{name} trial {r['trial']:3d} {r['state']:8s} step {r['step']:5d}: old {r['old']:.3f}  new "
              f"{r['new']:.3f}  diagonality {r['tf']:.3f} / free-running {r['fr']:.3f}, stop rate {r['stop']:.2f}  "
              f"DTW error {r['error']:.3f}, length error {r['length']:.3f}", flush=True)
    if len(rows) < 3:
        raise SystemExit(f"study {name}: {len(rows)} trial(s) with a checkpoint, too few to rank")
    result: dict = {"study": name, "trials": rows, "spearman": {}}
    print(f"\n{len(rows)} trials of study {name}; Spearman rank correlation of each value with")
    for measure, label in (("error", "DTW"), ("length", "length")):
        truth = [r[measure] for r in rows]
        result["spearman"][label] = {}
        parts = []
        for formula in ("old", "new"):
            point, low, high = spearman_interval([r[formula] for r in rows], truth)
            result["spearman"][label][formula] = {"rho": point, "low": low, "high": high}
            parts.append(f"{formula} value {point:.3f} [{low:.3f}, {high:.3f}]")
        point, low, high = difference_interval([r["old"] for r in rows], [r["new"] for r in rows], truth)
        result["spearman"][label]["new_minus_old"] = {"difference": point, "low": low, "high": high}
        print(f"  the {label} error: {', '.join(parts)}; new - old {point:+.3f} [{low:+.3f}, {high:+.3f}]")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", action="append", required=True, help="a finished study (repeat for several)")
    parser.add_argument("--storage", action="append", default=[],
                        help="the studies' storage: once for all, or once per --study in their order "
                             "(default studies/<study>.db)")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--held-out-seed", type=int, default=4321, help="the held-out demo corpus's seed")
    parser.add_argument("--seed", type=int, default=0, help="torch's seed before each trial's synthesis")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="the results (JSON, with the commit and the command)")
    args = parser.parse_args()
    if len(args.storage) > 1 and len(args.storage) != len(args.study):
        parser.error(f"{len(args.storage)} --storage for {len(args.study)} --study: give one storage for all "
                     "studies, or one per study in the same order")
    storages = args.storage if len(args.storage) > 1 else (args.storage or [None]) * len(args.study)
    torch.set_num_threads(args.threads)
    results = {"provenance": provenance(), "sentences": args.sentences, "held_out_seed": args.held_out_seed,
               "seed": args.seed, "studies": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, storage in zip(args.study, storages):
            results["studies"].append(rank_study(name, storage, args, Path(tmp)))
            write_results(args.out, results)


if __name__ == "__main__":
    main()
