"""What do the adapters and trackers cost? The same demo training steps, timed side by side:

  (a) the bare loop: the trainer with no hooks at all;
  (b) everything a study trial runs: the adapters, the preview writer, the debug reporter, Optuna reporting
      (a real trial in a SQLite study) and MLflow tracking (a real SQLite store, previews uploaded).

Runs alternate a, b, a, b, ... so that a noisy machine slows both alike; each run's fit() is timed (evaluations
included: their previews and uploads are part of the cost), and also its training steps alone (the trainer's own
count, evaluations out: the adapters change what the model learns, and free-running evaluation of a model that
has not learned to stop runs longer). Prints each pair and the ratios of the totals b/a. Goal: <= 1.03.

The default is one demo trial's budget (600 steps, an evaluation every 25); short runs overstate the fixed costs
(creating the MLflow run, the first previews), which a real trial spreads over hundreds of steps.

Usage: python benchmarks/overhead.py [--steps 600] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch

from smart_tuner.config import build_config, merge, parse_set_overrides
from smart_tuner.data.dataset import prepare_data
from smart_tuner.study.objective import OptunaReporter
from smart_tuner.study.objective_file import load_objective
from smart_tuner.train.runner import standard_hooks
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts import build_family
from smart_tuner.watch.tracking import StudyTracker, open_tracking


def timed_fit(config, run_dir: Path, hooks: list, data) -> tuple[float, float]:
    """(wall seconds of fit(), seconds of training steps alone as the trainer counts them: evaluations out)."""
    trainer = Trainer(config, run_dir, hooks=hooks, progress=False, data=data)
    start = time.perf_counter()
    result = trainer.fit()
    elapsed = time.perf_counter() - start
    assert result.status == "completed", result.reason
    return elapsed, result.last_eval.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="objectives/demo.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    spec = load_objective(args.objective)
    sets = [f"train.max_steps={args.steps}", f"train.eval_every={args.eval_every}",
            f"train.num_threads={args.threads}", *args.set]
    config = build_config(merge(spec.config, parse_set_overrides(sets)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = prepare_data(config, root / "data")  # once, outside the timings
        study = optuna.create_study(storage=f"sqlite:///{root}/study.db", study_name="overhead")
        tracker = StudyTracker(open_tracking(f"sqlite:///{root}/mlflow.db"), "overhead",
                               f"sqlite:///{root}/study.db", args.objective)
        timed_fit(config, root / "warmup", [], data)  # first-call costs (allocator, kernels) out of the way
        bare, full = [], []
        for repeat in range(args.repeats):
            bare.append(timed_fit(config, root / f"a{repeat}", [], data))
            trial = study.ask()
            reporter = OptunaReporter(trial, spec.score, build_family(config).output_loss)
            hooks = [*standard_hooks(config), reporter,
                     tracker.reporter(trial.number, config, {}, reporter.objective_value)]
            full.append(timed_fit(config, root / f"b{repeat}", hooks, data))
            study.tell(trial, reporter.value)
            print(f"pair {repeat}: (a) bare {bare[-1][0]:.2f} s (steps {bare[-1][1]:.2f} s)   (b) adapters+previews+"
                  f"debug+optuna+mlflow {full[-1][0]:.2f} s (steps {full[-1][1]:.2f} s)   ratio "
                  f"{full[-1][0] / bare[-1][0]:.3f}", flush=True)
        tracker.finish({"repeats": args.repeats})
    wall = sum(t for t, _ in full) / sum(t for t, _ in bare)
    steps = sum(s for _, s in full) / sum(s for _, s in bare)
    print(f"{args.repeats} pairs of {args.steps} steps (eval every {args.eval_every}), {args.threads} threads: "
          f"total (a) {sum(t for t, _ in bare):.1f} s, (b) {sum(t for t, _ in full):.1f} s; ratio b/a = {wall:.3f} "
          f"(goal <= 1.03); training steps alone (evaluations, whose length depends on what the model learned, "
          f"left out): {steps:.3f}")


if __name__ == "__main__":
    main()
