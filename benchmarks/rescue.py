"""Do the adapters rescue runs that fixed settings lose?

Each start below fails under fixed settings (the demo preset, the demo objective's config); for several seeds it is
trained with the adapters off and on, for the start's step budget, and the table shows how many runs reach the
target diagonality, teacher-forced and free-running (the one synthesis needs), after the start's fault step.
Goal: adapters off reach free-running diagonality >= 0.8 in <= 20% of the seeds, adapters on in >= 80%.

Runs go in parallel processes; keep jobs x threads <= cores (oversubscription slows training several times).
Usage: python benchmarks/rescue.py [--seeds 5] [--jobs 2 --threads 1] [--starts NAME ...] [--out runs.json]
                                   [--reuse runs.json]
--reuse takes the runs of an earlier --out file instead of training them again (for example the adapters-off
arm, which no change to the adapters affects; keep only what still holds).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_tuner.adapters import build_adapters
from smart_tuner.config import load_config_file
from smart_tuner.data.dataset import prepare_data
from smart_tuner.hooks import Decision, Hook
from smart_tuner.train.trainer import Trainer


@dataclass(frozen=True)
class Start:
    """A bad start: config overrides, a step budget, and the step after which reaching the target counts (a fault
    that knocks an aligned run off its alignment happens there)."""

    sets: list[str]
    budget: int
    after: int = 0
    why: str = ""


STARTS = {
    "lr x100, no clip": Start(["train.lr=0.1", "train.grad_clip=1000000", "adapters.lr.max_lr=0"], 400,
                              why="a learning rate 100x the default, gradient clipping off"),
    "lr /30": Start(["train.lr=3.3e-5"], 500, why="a learning rate 1/30 of the default"),
    "ga_weight 0": Start(["loss.ga_weight=0"], 500, why="no guided attention"),
    "collapse": Start(["faults.perturb_at=[300]", "faults.perturb_scale=3.0"], 400, after=300,
                      why="aligned by step 300, then every weight perturbed by noise of 3x its tensor's standard "
                          "deviation (faults.perturb_at); counted from step 325"),
    "long sentences": Start(["data.demo_words=[15,30]"], 400,
                            why="utterances of 15-30 words (about 5 s): free-running alignment lags"),
}


class Watch(Hook):
    """Records every evaluation, and when each diagonality first reaches the target after ``after``; stops the run
    once both have."""

    name = "watch"

    def __init__(self, target: float, after: int):
        self.target = target
        self.after = after
        self.reached: dict[str, int] = {}
        self.evals: list[dict] = []

    def on_eval(self, stats):
        self.evals.append({"step": stats.step, "val_loss": stats.val_loss, "diagonality": stats.diagonality,
                           "free_running_diagonality": stats.free_running_diagonality, "lr": stats.lr,
                           "weight_change": stats.weight_change,
                           "ga_weight": stats.loss_weights.get("ga_weight")})
        if stats.step <= self.after:
            return []
        for key in ("diagonality", "free_running_diagonality"):
            if key not in self.reached and getattr(stats, key) >= self.target:
                self.reached[key] = stats.step
        if len(self.reached) == 2:
            return [Decision("stop", None, "both diagonalities reached the target")]
        return []


def one_run(job: tuple) -> dict:
    config_path, name, seed, adapters_on, threads, target, workdir, extra = job
    logging.basicConfig(level=logging.ERROR)
    start = STARTS[name]
    sets = start.sets + extra + [f"train.seed={seed}", f"train.max_steps={start.budget}",
                                 f"train.num_threads={threads}", "train.device=cpu", "tracking.enabled=false"]
    config = load_config_file(config_path, sets)
    watch = Watch(target, start.after)
    hooks = (build_adapters(config) if adapters_on else []) + [watch]
    began = time.perf_counter()
    run_dir = Path(workdir) / f"{name}-{seed}-{'on' if adapters_on else 'off'}".replace(" ", "_").replace(",", "")
    result = Trainer(config, run_dir, hooks=hooks, progress=False).fit()
    events = run_dir / "events.jsonl"
    decisions = [json.loads(line) for line in events.read_text().splitlines()] if events.is_file() else []
    return {"start": name, "seed": seed, "adapters": adapters_on, "reached": watch.reached, "evals": watch.evals,
            "status": result.status, "reason": result.reason, "steps": result.step,
            "seconds": time.perf_counter() - began,
            "decisions": [f"{d.get('step')}: {d.get('control')} {d.get('reason')}" for d in decisions
                          if d.get("applied")]}


def reached(rows: list[dict]) -> tuple[int, int]:
    """How many runs reached the target teacher-forced, and free-running."""
    return (sum("diagonality" in r["reached"] for r in rows),
            sum("free_running_diagonality" in r["reached"] for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="objectives/demo.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--starts", nargs="*", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--adapters", choices=("off", "on", "both"), default="both")
    parser.add_argument("--out", type=Path, help="write every run's evaluations and decisions here (JSON)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, e.g. adapters.lr.weight_change_high=1e9 to see one rule alone")
    parser.add_argument("--reuse", type=Path, help="runs of an earlier --out file to take instead of training them")
    args = parser.parse_args()
    began = time.perf_counter()
    arms = {"off": (False,), "on": (True,), "both": (False, True)}[args.adapters]
    with tempfile.TemporaryDirectory() as tmp:
        # Fail early, and build each corpus and its features once before the workers start.
        for name in args.starts:
            prepare_data(load_config_file(args.config, STARTS[name].sets + args.set))
        reused = json.loads(args.reuse.read_text()) if args.reuse else []
        done = {(r["start"], r["seed"], r["adapters"]) for r in reused}
        jobs = [(args.config, name, seed, on, args.threads, args.target, tmp, args.set)
                for name in args.starts for on in arms for seed in range(args.seeds) if (name, seed, on) not in done]
        results = [r for r in reused if r["start"] in args.starts and r["adapters"] in arms and r["seed"] < args.seeds]
        print(f"{len(results)} runs reused from {args.reuse}, {len(jobs)} to train", flush=True)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(one_run, jobs):
                results.append(r)
                last = r["evals"][-1] if r["evals"] else {}
                print(f"  {r['start']:<16} seed {r['seed']} adapters {'on ' if r['adapters'] else 'off'}: "
                      f"{r['status']} at step {r['steps']} ({r['seconds']:.0f} s), reached {r['reached']}, "
                      f"last: diagonality {last.get('diagonality', float('nan')):.2f} / "
                      f"{last.get('free_running_diagonality', float('nan')):.2f}, lr {last.get('lr')}, "
                      f"ga_weight {last.get('ga_weight')}", flush=True)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1))
    print(f"\ndemo preset ({args.config}), {args.seeds} seeds, target diagonality {args.target}, "
          f"{args.jobs} jobs x {args.threads} threads, {time.perf_counter() - began:.0f} s")
    print(f"{'start':<17}{'budget':>7}{'adapters':>10}{'teacher-forced':>16}{'free-running':>14}  "
          "steps to free-running")
    for name in args.starts:
        for on in arms:
            rows = [r for r in results if r["start"] == name and r["adapters"] == on]
            tf, fr = reached(rows)
            steps = ", ".join(str(r["reached"].get("free_running_diagonality", "-")) for r in rows)
            print(f"{name:<17}{STARTS[name].budget:>7}{'on' if on else 'off':>10}{tf:>10}/{len(rows)}"
                  f"{fr:>10}/{len(rows)}    {steps}")
    for on in arms:
        rows = [r for r in results if r["adapters"] == on]
        tf, fr = reached(rows)
        print(f"all, adapters {'on ' if on else 'off'}: teacher-forced {tf}/{len(rows)}, free-running {fr}/{len(rows)} "
              f"({fr / max(len(rows), 1):.0%})")
    for name in args.starts:
        print(f"  {name}: {STARTS[name].why}")
    for r in results:
        if r["status"] not in ("completed", "stopped"):
            print(f"  {r['start']} seed {r['seed']} adapters {r['adapters']}: {r['status']}: {r['reason']}")


if __name__ == "__main__":
    main()
