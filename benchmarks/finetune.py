"""Does a warm start pay? Steps to align on a small corpus of another language, from scratch and fine-tuned.

1. Pretrain the demo preset on the English demo corpus (or take --pretrained CKPT).
2. Train on a small Russian demo corpus (another voice, another script: every Cyrillic letter is a new symbol, so
   only the embedding rows of space and punctuation carry over) from scratch and with ``train.init_from`` the
   pretrained model, for each seed, alternating scratch and warm runs (the machine is noisy).
3. Print the first step at which free-running validation diagonality reaches the target, and the validation loss
   at equal steps; the goal is that the warm start needs <= 1/3 of the steps.

Both arms run with the online adapters, as a real run does. A run that never reaches the target counts as its
step budget (a lower bound), and the ratio is then marked as censored. With ``--stop-at-target`` a run stops at
its first evaluation at or above the target once it has trained ``--compare-steps`` steps (the validation losses
are compared up to there); ``--jobs 2`` runs two trainings at a time (give each ``--threads 1`` on 2 cores).

Usage: python benchmarks/finetune.py [--pretrain-steps 400] [--steps 400] [--seeds 3] [--threads 2] [--jobs 1]
                                     [--target-size 60] [--pretrained CKPT] [--stop-at-target --compare-steps 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import first_step, worker_pool

from smart_tuner.adapters import build_adapters
from smart_tuner.config import load_config_file
from smart_tuner.hooks import Decision, Hook
from smart_tuner.run_logs import read_metrics
from smart_tuner.train.trainer import Trainer

Evaluations = list[dict]  # the run's metrics.jsonl, one mapping per evaluation
COUNTED = "free_running_diagonality"  # what must reach the target


class StopAtTarget(Hook):
    """Stops a run at its first evaluation at or above the target once it has trained ``after`` steps."""

    name = "stop_at_target"

    def __init__(self, target: float, after: int):
        self.target, self.after = target, after

    def on_eval(self, stats):
        if stats.step >= self.after and stats.free_running_diagonality >= self.target:
            return [Decision("stop", None, "reached the target", stats.free_running_diagonality)]
        return []


def train(args, workdir: Path, label: str, sets: list[str], stop: bool = False) -> Evaluations:
    logging.basicConfig(level=logging.WARNING)
    config = load_config_file(args.config, [f"train.num_threads={args.threads}", "train.device=cpu",
                                            "tracking.enabled=false", f"train.eval_every={args.eval_every}", *sets])
    start = time.perf_counter()
    hooks = [*build_adapters(config), *([StopAtTarget(args.target, args.compare_steps)] if stop else [])]
    result = Trainer(config, workdir / label, hooks=hooks, progress=False).fit()
    evals = read_metrics(workdir / label)
    last, reached = evals[-1], first_step(evals, COUNTED, args.target)
    print(f"{label:>16}: {result.step} steps in {time.perf_counter() - start:6.1f} s; free-running diagonality >= "
          f"{args.target} at {f'step {reached}' if reached else 'never'}; final val loss {last['val_loss']:.4f}, "
          f"diagonality {last['diagonality']:.3f}, free-running {last['free_running_diagonality']:.3f}", flush=True)
    return evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="objectives/demo.yaml")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--pretrained", help="a pretrained checkpoint instead of pretraining here")
    parser.add_argument("--steps", type=int, default=400, help="step budget of each fine-tuning run")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--target-lang", default="ru", choices=["en", "ru"])
    parser.add_argument("--target-size", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for the fine-tuning runs")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    parser.add_argument("--stop-at-target", action="store_true", help="stop a fine-tuning run once it aligned")
    parser.add_argument("--compare-steps", type=int, default=100,
                        help="with --stop-at-target: steps every run trains at least")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.pretrained:
        args.pretrained = str(Path(args.pretrained).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        pretrained = args.pretrained
        if not pretrained:
            print(f"pretraining the demo preset on the English demo corpus (400 sentences), {args.pretrain_steps} "
                  f"steps, {args.threads} threads", flush=True)
            train(args, workdir, "pretrain", [f"train.max_steps={args.pretrain_steps}", "data.demo_lang=en",
                                              "data.demo_size=400"])
            pretrained = str(workdir / "pretrain" / "checkpoints" / "last.pt")
        print(f"fine-tuning on the {args.target_lang} demo corpus ({args.target_size} sentences), {args.steps} steps, "
              f"seeds 0..{args.seeds - 1}, eval every {args.eval_every}", flush=True)
        target = [f"data.demo_lang={args.target_lang}", f"data.demo_size={args.target_size}",
                  f"train.max_steps={args.steps}", *args.set]
        runs: dict[str, list[Evaluations]] = {"scratch": [], "warm": []}
        with worker_pool(args.jobs) as pool:
            futures = []
            for seed in range(args.seeds):
                for arm in ("scratch", "warm"):  # alternating, so both arms see the same machine load
                    init = [f"train.init_from={pretrained}"] if arm == "warm" else []
                    futures.append((arm, pool.submit(train, args, workdir, f"{arm}-seed{seed}",
                                                     [*target, f"train.seed={seed}", *init], args.stop_at_target)))
            for arm, future in futures:
                runs[arm].append(future.result())

        print(f"\nsteps to free-running diagonality >= {args.target} (budget {args.steps}; 'never' counts as the "
              f"budget)")
        means = {}
        for arm, logs in runs.items():
            steps = [first_step(evals, COUNTED, args.target) for evals in logs]
            counted = [s if s is not None else args.steps for s in steps]
            means[arm] = statistics.mean(counted)
            print(f"{arm:>8}: {', '.join(str(s) if s is not None else 'never' for s in steps)}; mean {means[arm]:.1f}")
        censored = any(first_step(evals, COUNTED, args.target) is None for evals in runs["scratch"])
        print(f"warm / scratch = {means['warm'] / means['scratch']:.3f}"
              f"{' (an upper bound: some scratch runs never aligned)' if censored else ''} (goal <= 0.333)")
        print("\nvalidation loss at equal steps (mean over seeds; steps every run reached)")
        common = min(len(evals) for logs in runs.values() for evals in logs)
        print(f"{'step':>6} {'scratch':>9} {'warm':>9}")
        for i in range(common):
            step = runs["scratch"][0][i]["step"]
            values = [statistics.mean(evals[i]["val_loss"] for evals in runs[arm]) for arm in ("scratch", "warm")]
            print(f"{step:>6} {values[0]:>9.4f} {values[1]:>9.4f}")
        print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
