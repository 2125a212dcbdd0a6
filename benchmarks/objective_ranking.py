"""Does a study's value rank trials as they synthesize? The old objective against the new one, on a finished study.

Usage: python benchmarks/objective_ranking.py --study NAME [--storage URL] [--sentences 16] [--threads 2]

For every trial that left a checkpoint (last.pt, the state of its last evaluation; else best.pt), the first
--sentences validation sentences of its corpus are decoded free-running from their text alone (as `synthesize`
does). Two errors are measured without any attention metric: the DTW error, each predicted mel compared with the
recording's by dynamic time warping (the mean Euclidean distance per frame pair along the cheapest monotonic path,
in normalized log-mel units, divided by the two lengths' sum), and the length error, the mean |log(predicted frames
/ recorded frames)|. DTW warps any output onto the recording, so a babble that never finds the text can still score
well on it; the length error sees what DTW forgives (a decoder that never stops). The trial's last evaluation gives
its value under two formulas (smart_tuner.study.space.ObjectiveFormula): the old one (teacher-forced diagonality, no
stop term) and the new one (the worse of teacher-forced and free-running diagonality, plus 0.5 x (1 - free-running
stop rate)). Prints the table and Spearman's rank correlation of each value with each error: 1 means the value
orders the trials exactly as they synthesize.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.stats import spearmanr

from smart_tuner.data.dataset import Collate, prepare_data
from smart_tuner.hooks import current_metric_names
from smart_tuner.study.space import ObjectiveFormula
from smart_tuner.study.storage import open_study_readonly
from smart_tuner.tts.inference import load_for_inference

OLD = ObjectiveFormula(alignment="teacher_forced", stop_penalty=0.0)  # the default until 2026-11-29
NEW = ObjectiveFormula(alignment="worse", stop_penalty=0.5)  # the default since 2026-11-29


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


@torch.no_grad()
def synthesis_error(checkpoint: Path, sentences: int) -> tuple[float, float]:
    """(DTW error, length error): the mean DTW distance, and the mean |log(predicted frames / recorded frames)| (a
    decoder that never stops runs to twice the batch's longest recording). DTW warps any output onto the recording,
    so a babble that never finds the text can still score well on it; the length error sees what DTW forgives."""
    loaded = load_for_inference(checkpoint)
    data = prepare_data(loaded.config)
    collate = Collate(loaded.symbols.pad_id, loaded.stats.pad_value, loaded.family.frames_multiple)
    batch = collate([data.val[i] for i in range(min(sentences, len(data.val)))])
    out = loaded.family.synthesize(loaded.model, batch.text, batch.text_lengths, max_frames=2 * batch.mel.shape[-1])
    errors, lengths = [], []
    for i in range(len(batch)):
        predicted = out.mel[i, :, : int(out.mel_lengths[i])].T.numpy()
        target = batch.mel[i, :, : int(batch.mel_lengths[i])].T.numpy()
        errors.append(dtw_distance(predicted, target))
        lengths.append(abs(np.log(max(len(predicted), 1) / len(target))))
    return float(np.mean(errors)), float(np.mean(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", help="default studies/<study>.db")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = open_study_readonly(args.study, args.storage)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_dir = Path(trial.user_attrs.get("run_dir", ""))
        checkpoint = next((run_dir / "checkpoints" / n for n in ("last.pt", "best.pt")
                           if (run_dir / "checkpoints" / n).is_file()), None)
        if checkpoint is None or not (run_dir / "metrics.jsonl").is_file():
            continue
        last = current_metric_names(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1]))
        rows.append({"trial": trial.number, "state": trial.state.name, "step": last["step"],
                     "old": OLD.value(last["val_postnet"], last), "new": NEW.value(last["val_postnet"], last),
                     "tf": last["diagonality"], "fr": last["free_running_diagonality"],
                     "stop": last["free_running_stop_rate"],
                     **dict(zip(("error", "length"), synthesis_error(checkpoint, args.sentences)))})
        r = rows[-1]
        print(f"trial {r['trial']:3d} {r['state']:8s} step {r['step']:5d}: old {r['old']:.3f}  new {r['new']:.3f}  "
              f"diagonality {r['tf']:.3f} / free-running {r['fr']:.3f}, stop rate {r['stop']:.2f}  "
              f"DTW error {r['error']:.3f}, length error {r['length']:.3f}", flush=True)
    if len(rows) < 3:
        raise SystemExit(f"{len(rows)} trial(s) with a checkpoint: too few to rank")
    print(f"\n{len(rows)} trials of study {args.study}; Spearman rank correlation of each value with")
    for measure in ("error", "length"):
        truth = [r[measure] for r in rows]
        old = spearmanr([r["old"] for r in rows], truth).statistic
        new = spearmanr([r["new"] for r in rows], truth).statistic
        print(f"  the {'DTW' if measure == 'error' else 'length'} error: old value {old:.3f}, new value {new:.3f}")


if __name__ == "__main__":
    main()
