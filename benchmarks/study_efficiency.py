"""How many training steps does a study spend before one of its trials is good? Three arms, honest about adapters.

"Good": at some evaluation, validation diagonality >= 0.8 and validation loss <= (1 + tolerance) x the final
validation loss of the reference: the objective file's base config trained once first **without adapters** (the
threshold a study without adapters can be held to). The adapter-aided reference's loss is reported beside it.
Arms, each over ``--seeds`` seeds (8 by default; the sampler's seed and the trials' seeds differ per seed):
  (a) TPE + pruning + adapters   (b) TPE + pruning, no adapters at all   (c) random search, no pruning, no adapters
"No adapters" turns every adapter off (learning rate, guided attention, collapse, gradient health: the list is
read from the config's adapters section, so a new adapter cannot stay on by mistake). Steps are counted over
trials in the order they finished, up to the evaluation at which the first good trial became good; a study with
no good trial in ``--max-trials`` counts all its steps (censored: at least that much; the count is reported). The
reference trial is not enqueued (it would be good by definition).
Per arm: the median cost with a 95% bootstrap interval; the ratios of medians a/c and b/c with bootstrap
intervals, recorded in the results JSON under ``a_over_c`` and ``b_over_c``. Goal: a/c <= 1/3.

Usage: python benchmarks/study_efficiency.py [--seeds 8] [--max-trials 24] [--tolerance 0]
       [--set train.max_steps=150] [--arms abc] [--jobs 2 --threads 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import provenance, worker_pool, write_results
from optuna.trial import TrialState

from smart_tuner.config import AdaptersConfig, build_config, merge, parse_set_overrides
from smart_tuner.study.options import StudyOptions
from smart_tuner.study.space import load_objective
from smart_tuner.study.workers import optimize
from smart_tuner.train.runner import run_training

NO_ADAPTERS = [f"adapters.{name}.enabled=false" for name, section in vars(AdaptersConfig()).items()
               if hasattr(section, "enabled")]
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


def one_study(job: tuple) -> dict:
    """Trials one at a time until the first good one (or max_trials)."""
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
    return {"arm": arm, "seed": seed, "cost": found if found is not None else spent, "found": found is not None,
            "trials": len(study.trials), "pruned": pruned}


def median_interval(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The median and a 95% percentile-bootstrap interval of it."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return statistics.median(values), medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def ratio_interval(top: list[float], bottom: list[float], rounds: int = 2000, seed: int = 0) -> dict:
    """median(top) / median(bottom), with a 95% bootstrap interval (each arm resampled on its own)."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(top, k=len(top)))
                    / max(statistics.median(rng.choices(bottom, k=len(bottom))), 1) for _ in range(rounds))
    return {"ratio": statistics.median(top) / max(statistics.median(bottom), 1),
            "low": ratios[int(0.025 * rounds)], "high": ratios[int(0.975 * rounds) - 1]}


def reference_loss(spec, sets: list[str], threads: int, folder: Path) -> tuple[float, float, int]:
    config = build_config(merge(spec.config, parse_set_overrides(sets + [f"train.num_threads={threads}"])))
    result = run_training(config, folder, progress=False)
    return result.last_eval.val_loss, result.last_eval.diagonality, result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="objectives/demo.yaml")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--max-trials", type=int, default=24, help="trials per study at most")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="a good trial's validation loss may exceed the reference's by this share")
    parser.add_argument("--jobs", type=int, default=1, help="studies in parallel (jobs x threads <= cores)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per study (default cores / jobs)")
    parser.add_argument("--set", action="append", default=[], help="overrides for every run, e.g. a budget")
    parser.add_argument("--arms", default="abc", help="which arms to run")
    parser.add_argument("--out", type=Path, help="the results (JSON, with the commit and the command)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    spec = load_objective(args.objective)
    results: dict = {"provenance": provenance(), "target": args.target, "tolerance": args.tolerance,
                     "max_trials": args.max_trials, "studies": []}
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_diag, steps = reference_loss(spec, args.set + NO_ADAPTERS, threads, Path(tmp) / "reference")
        aided, aided_diag, _ = reference_loss(spec, args.set, threads, Path(tmp) / "reference-adapters")
        threshold = plain * (1.0 + args.tolerance)
        results["reference"] = {"no_adapters": {"val_loss": plain, "diagonality": plain_diag},
                                "adapters": {"val_loss": aided, "diagonality": aided_diag}, "steps": steps,
                                "threshold": threshold}
        print(f"reference without adapters: final validation loss {plain:.4f}, diagonality {plain_diag:.3f} after "
              f"{steps} steps (with adapters: {aided:.4f}, {aided_diag:.3f}); good: diagonality >= {args.target} "
              f"and validation loss <= {threshold:.4f}", flush=True)
        # Arms interleaved by seed, so that each sees the same machine load.
        jobs = [(arm, seed, args.objective, args.set, threads, args.max_trials, threshold, args.target, tmp)
                for seed in range(args.seeds) for arm in ARMS if arm[0] in args.arms]
        with worker_pool(args.jobs) as pool:
            for study in pool.map(one_study, jobs):
                results["studies"].append(study)
                write_results(args.out, results)
                print(f"{study['arm']:<26} seed {study['seed']}: "
                      f"{'good after' if study['found'] else 'no good trial in'} {study['cost']} steps "
                      f"({study['trials']} trials, {study['pruned']} pruned)", flush=True)
    costs = {arm: [s["cost"] for s in results["studies"] if s["arm"] == arm] for arm in ARMS if arm[0] in args.arms}
    results["arms"] = {}
    for arm, values in costs.items():
        median, low, high = median_interval(values)
        censored = sum(not s["found"] for s in results["studies"] if s["arm"] == arm)
        results["arms"][arm] = {"median": median, "low": low, "high": high, "censored": censored, "costs": values}
        print(f"{arm:<26} median steps until a good trial: {median:.0f} (95% interval {low:.0f}-{high:.0f}; "
              f"{censored} of {len(values)} studies found none)")
    c = costs.get("c: random")
    for arm, key in (("a: tpe+pruning+adapters", "a_over_c"), ("b: tpe+pruning", "b_over_c")):
        if c and arm in costs:
            results[key] = ratio_interval(costs[arm], c)
            print(f"{key}: {results[key]['ratio']:.3f} (95% interval {results[key]['low']:.3f}-"
                  f"{results[key]['high']:.3f})")
    print("goal: a/c <= 0.33; a study with no good trial counts all its steps, so its arm's median is a lower bound")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
