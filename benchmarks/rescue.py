"""Do the adapters rescue runs that fixed settings lose?

For several seeds and bad starts of the demo preset (learning rate x10; guided-attention weight 0; weight 1),
train with the adapters on and off for a fixed step budget and print the share of runs whose validation
diagonality reaches the target (teacher-forced, and free-running) within the budget.

Runs go in parallel processes; keep jobs x threads <= cores (oversubscription slows training several times).
Usage: python benchmarks/rescue.py [--seeds 5] [--budget 500] [--jobs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_tuner.adapters import build_adapters  # noqa: E402
from smart_tuner.config import load_config_file  # noqa: E402
from smart_tuner.data.dataset import prepare_data  # noqa: E402
from smart_tuner.hooks import Decision, Hook  # noqa: E402
from smart_tuner.train.trainer import Trainer  # noqa: E402

BAD_STARTS = {
    "lr x10": lambda lr: [f"train.lr={lr * 10}"],
    "ga_weight 0": lambda lr: ["loss.ga_weight=0"],
    "ga_weight 1": lambda lr: ["loss.ga_weight=1"],
}


class Watch(Hook):
    """Records when each diagonality first reaches the target; stops the run once both have."""

    name = "watch"

    def __init__(self, target: float):
        self.target = target
        self.reached: dict[str, int] = {}

    def on_eval(self, stats):
        for key in ("diagonality", "infer_diagonality"):
            if key not in self.reached and getattr(stats, key) >= self.target:
                self.reached[key] = stats.step
        if len(self.reached) == 2:
            return [Decision("stop", None, "both diagonalities reached the target")]
        return []


def one_run(job: tuple) -> dict:
    config_path, start, seed, adapters_on, budget, threads, target, workdir = job
    logging.basicConfig(level=logging.ERROR)
    base = load_config_file(config_path)
    sets = BAD_STARTS[start](base.train.lr) + [
        f"train.seed={seed}", f"train.max_steps={budget}", f"train.num_threads={threads}", "train.device=cpu"]
    config = load_config_file(config_path, sets)
    watch = Watch(target)
    hooks = (build_adapters(config) if adapters_on else []) + [watch]
    began = time.perf_counter()
    result = Trainer(config, Path(workdir) / f"{start}-{seed}-{adapters_on}".replace(" ", "_"), hooks=hooks,
                     progress=False).fit()
    return {"start": start, "seed": seed, "adapters": adapters_on, "reached": watch.reached,
            "status": result.status, "steps": result.step, "seconds": time.perf_counter() - began,
            "final_lr": result.last_eval.lr if result.last_eval else None,
            "final_ga": result.last_eval.loss_weights["ga_weight"] if result.last_eval else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="objectives/demo.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=500, help="training steps per run")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--starts", nargs="*", default=list(BAD_STARTS))
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # Fail early, and build the demo corpus and its features once before the workers start.
        prepare_data(load_config_file(args.config))
        jobs = [(args.config, start, seed, on, args.budget, args.threads, args.target, tmp)
                for start in args.starts for on in (False, True) for seed in range(args.seeds)]
        results = []
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(one_run, jobs):
                results.append(r)
                print(f"  {r['start']:<12} seed {r['seed']} adapters {'on ' if r['adapters'] else 'off'}: "
                      f"{r['status']} at step {r['steps']} ({r['seconds']:.0f} s), reached {r['reached']}, "
                      f"final lr {r['final_lr']}, ga_weight {r['final_ga']}", flush=True)
    print(f"demo preset, {args.seeds} seeds, budget {args.budget} steps, target diagonality {args.target}, "
          f"{args.jobs} jobs x {args.threads} threads, {time.perf_counter() - began:.0f} s")
    print(f"{'bad start':<14}{'adapters':<10}{'teacher-forced':>16}{'free-running':>14}  steps to free-running")
    totals = {False: [0, 0], True: [0, 0]}
    for start in args.starts:
        for on in (False, True):
            rows = [r for r in results if r["start"] == start and r["adapters"] == on]
            tf = sum("diagonality" in r["reached"] for r in rows)
            fr = sum("infer_diagonality" in r["reached"] for r in rows)
            totals[on][0] += tf
            totals[on][1] += fr
            steps = ", ".join(str(r["reached"].get("infer_diagonality", "-")) for r in rows)
            print(f"{start:<14}{'on' if on else 'off':<10}{tf:>10}/{len(rows)}{fr:>10}/{len(rows)}    {steps}")
    n = len(args.starts) * args.seeds
    for on in (False, True):
        print(f"all, adapters {'on ' if on else 'off'}: teacher-forced {totals[on][0] / n:.0%}, "
              f"free-running {totals[on][1] / n:.0%} of {n} runs")
    for r in results:
        if r["status"] != "completed" and r["status"] != "stopped":
            print(f"  {r['start']} seed {r['seed']} adapters {r['adapters']}: {r['status']}")


if __name__ == "__main__":
    main()
