"""How many training steps does a study spend before one of its trials is good?

"Good": at some evaluation, validation diagonality >= 0.8 and validation loss <= (1 + tolerance) x the final
validation loss of the reference defaults (the objective file's base config, trained once first). With tolerance 0
random search rarely finds one at all (0 of 72 trials on the demo); a small tolerance makes its cost a number.
Arms, each over several seeds:
  (a) TPE + pruning + adapters   (b) TPE + pruning, no adapters   (c) random search, no pruning, no adapters
Steps are counted over trials in the order they finished, up to the evaluation at which the first good trial
became good. The reference trial is not enqueued (it would be good by definition). Prints the ratios a/c, b/c.
Goal: (a) needs <= 1/3 of (c).

Usage: python benchmarks/study_efficiency.py [--seeds 3] [--max-trials 12] [--tolerance 0.05]
       [--set train.max_steps=300] [--arms abc]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState

from smart_tuner.config import build_config, merge, parse_set_overrides
from smart_tuner.study.options import StudyOptions
from smart_tuner.study.space import load_objective
from smart_tuner.study.workers import optimize
from smart_tuner.train.runner import run_training

NO_ADAPTERS = ["adapters.lr.enabled=false", "adapters.ga.enabled=false", "adapters.grad.enabled=false"]
# Counting steps needs no MLflow runs (and parallel studies would share the repository's store).
NO_TRACKING = ["tracking.enabled=false"]
ARMS = {
    "a: tpe+pruning+adapters": ("tpe", None, []),
    "b: tpe+pruning": ("tpe", None, NO_ADAPTERS),
    "c: random": ("random", "none", NO_ADAPTERS),
}


def steps_until_good(study, threshold: float, target: float) -> tuple[int | None, int]:
    """(steps spent until the first good evaluation, or None; steps spent in all)."""
    trials = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished()),
                    key=lambda t: t.datetime_complete)
    spent = 0
    found = None
    for trial in trials:
        metrics_path = Path(trial.user_attrs.get("run_dir", "")) / "metrics.jsonl"
        evals = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
        good = [m["step"] for m in evals if m["diagonality"] >= target and m["val_loss"] <= threshold]
        if found is None and good:
            found = spent + good[0]
        spent += evals[-1]["step"] if evals else 0
    return found, spent


def one_study(job: tuple) -> tuple[str, int, int, bool, int, int]:
    """Trials one at a time until the first good one (or max_trials); returns (arm, seed, cost, found, ...)."""
    arm, seed, objective, sets, threads, max_trials, threshold, target, tmp = job
    logging.basicConfig(level=logging.WARNING)
    sampler, pruner, extra = ARMS[arm]
    options = StudyOptions(objective=Path(objective), study=f"eff-{arm[0]}-{seed}",
                           storage=f"sqlite:///{tmp}/eff-{arm[0]}-{seed}.db", sampler=sampler, pruner=pruner,
                           seed=seed, trials=1, sets=sets + extra + NO_TRACKING, runs_dir=Path(tmp) / "runs",
                           enqueue_reference=False, threads=threads)
    found, spent = None, 0
    for _ in range(max_trials):
        study = optimize(options, progress=False)
        found, spent = steps_until_good(study, threshold, target)
        if found is not None:
            break
    pruned = len(study.get_trials(states=(TrialState.PRUNED,)))
    cost = found if found is not None else spent  # censored when nothing was good: at least this much
    return arm, seed, cost, found is not None, len(study.trials), pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objective", default="objectives/demo.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-trials", type=int, default=12, help="trials per study at most")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="a good trial's validation loss may exceed the reference's by this share")
    parser.add_argument("--jobs", type=int, default=1, help="studies in parallel (jobs x threads <= cores)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per study (default cores / jobs)")
    parser.add_argument("--set", action="append", default=[], help="overrides for every run, e.g. a budget")
    parser.add_argument("--arms", default="abc", help="which arms to run, e.g. c to extend the random baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    spec = load_objective(args.objective)
    with tempfile.TemporaryDirectory() as tmp:
        reference = build_config(merge(spec.config, parse_set_overrides(args.set + [f"train.num_threads={threads}"])))
        result = run_training(reference, Path(tmp) / "reference", progress=False)
        threshold = result.last_eval.val_loss * (1.0 + args.tolerance)
        print(f"reference defaults: final validation loss {result.last_eval.val_loss:.4f}, diagonality "
              f"{result.last_eval.diagonality:.3f} after {result.step} steps; good: diagonality >= {args.target} and "
              f"validation loss <= {threshold:.4f}", flush=True)
        jobs = [(arm, seed, args.objective, args.set, threads, args.max_trials, threshold, args.target, tmp)
                for arm in ARMS if arm[0] in args.arms for seed in range(args.seeds)]
        totals: dict[str, list[int]] = {}
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for arm, seed, cost, found, trials, pruned in pool.map(one_study, jobs):
                totals.setdefault(arm, []).append(cost)
                print(f"{arm:<26} seed {seed}: {'good after' if found else 'no good trial in'} {cost} steps "
                      f"({trials} trials, {pruned} pruned)", flush=True)
        means = {arm: sum(v) / len(v) for arm, v in totals.items()}
        for arm, mean in means.items():
            print(f"{arm:<26} mean steps until a good trial: {mean:.0f}")
        c = means.get("c: random")
        ratios = [f"{arm[0]}/c = {mean / c:.3f}" for arm, mean in means.items() if c and arm != "c: random"]
        if ratios:
            print(f"ratio {', '.join(ratios)} (goal: a/c <= 0.33; a study with no good trial counts all its steps, "
                  "so its arm's mean is a lower bound)")


if __name__ == "__main__":
    main()
