"""How fast does the demo preset learn to align on the demo corpus, with and without guided attention?

Trains the demo preset from scratch (2 CPU threads by default), evaluates every --eval-every steps and prints
the step and time at which validation diagonality first reaches the target, teacher-forced and free-running,
then the final validation loss. The same run with guided-attention weight 0 is the baseline the adapters must
beat. Usage: python benchmarks/align_demo.py [--steps 400] [--threads 2] [--target 0.8]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import EvalLog, first_reaching

from smart_tuner.config import load_config_file, parse_set_overrides
from smart_tuner.train.trainer import Trainer


def reached(evals: list[dict], key: str, target: float) -> str:
    found = first_reaching(evals, key, target)
    if found is None:
        return "never"
    return f"step {found['step']:4d} ({found['elapsed']:5.1f} s train, {found['wall']:5.1f} s wall)"


def run(label: str, sets: list[str], args, workdir: Path) -> None:
    config = load_config_file(args.config, sets + [f"train.max_steps={args.steps}",
                                                   f"train.eval_every={args.eval_every}",
                                                   f"train.num_threads={args.threads}",
                                                   f"train.seed={args.seed}", f"train.device={args.device}"])
    log = EvalLog()
    start = time.perf_counter()
    result = Trainer(config, workdir / label, hooks=[log], progress=False).fit()
    final = result.last_eval
    evals = [{**record, "wall": now - start} for record, now in zip(log.evals, log.times)]
    teacher_forced = reached(evals, "diagonality", args.target)
    free_running = reached(evals, "free_running_diagonality", args.target)
    print(f"{label:>16}: diagonality >= {args.target}: teacher-forced {teacher_forced}; free-running {free_running}")
    print(f"{'':>16}  after {result.step} steps ({final.elapsed:.1f} s train, {time.perf_counter() - start:.1f} s "
          f"wall): val loss {final.val_loss:.4f}, val mel {final.val_losses['mel']:.4f}, diagonality "
          f"{final.diagonality:.3f}, free-running {final.free_running_diagonality:.3f}, focus {final.focus:.3f}, "
          f"stop rate "
          f"{final.free_running_stop_rate:.2f}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="objectives/demo.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--device", default="cpu", help="cpu (the reference), cuda, or auto")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for both runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    parse_set_overrides(args.set)  # fail early on a malformed --set
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config_file(args.config, args.set)
        print(f"demo preset, {args.steps} steps, batch {config.train.batch_size}, lr {config.train.lr}, "
              f"r={config.model.r}, device {args.device}, {args.threads} threads, eval every {args.eval_every}")
        run(f"ga_weight={config.loss.ga_weight:g}", args.set, args, Path(tmp))
        run("ga_weight=0", args.set + ["loss.ga_weight=0"], args, Path(tmp))


if __name__ == "__main__":
    main()
