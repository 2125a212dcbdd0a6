"""Training steps and mel frames per second of a preset on this machine's device, with execution paths side by side.

Usage: python benchmarks/train_speed.py [--preset demo] [--steps 60] [--warmup 10] [--rounds 2]
                                        [--compare stepwise,fast] [--compare-fp32] [--set key=value ...]
Each configuration trains ``warmup + steps`` steps of the real data path (the demo corpus unless --set data.corpus)
and is timed over the last ``steps``: steps/s (wall clock between steps, batching, hooks and optimizer included)
and real (unpadded) mel frames/s, as NVIDIA DeepLearningExamples counts throughput. With --compare the
configurations alternate for --rounds rounds (the machine is noisy: compare numbers from one run) and the ratio of
the medians is printed.
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

import torch

from smart_tuner.config import build_config, merge, parse_set_overrides
from smart_tuner.hooks import Hook
from smart_tuner.train.trainer import Trainer


class StepClock(Hook):
    name = "clock"

    def __init__(self):
        self.times: list[float] = []
        self.frames: list[int] = []
        self.losses: list[float] = []

    def on_step(self, stats):
        self.times.append(time.perf_counter())
        self.frames.append(stats.frames)
        self.losses.append(stats.loss)
        return []


def measure(overrides: dict, steps: int, warmup: int, workdir: Path, label: str) -> tuple[float, float]:
    """(steps/s, mel frames/s) over the timed steps."""
    overrides = merge(overrides, {"train": {"max_steps": steps + warmup, "eval_every": 10**9}})
    config = build_config(overrides)
    clock = StepClock()
    trainer = Trainer(config, workdir / f"{label}-{time.monotonic_ns()}", hooks=[clock], progress=False)
    trainer.fit()
    timed = clock.times[warmup:]
    seconds = timed[-1] - timed[0]
    rate = (len(timed) - 1) / seconds
    frames = sum(clock.frames[warmup + 1:]) / seconds  # the frames of the steps that end inside the window
    params = sum(p.numel() for p in trainer.model.parameters())
    cuda = trainer.device.type == "cuda"
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
    print(f"{label}: {rate:.2f} steps/s ({1000 / rate:.0f} ms/step), {frames:,.0f} mel frames/s, "
          f"{params / 1e6:.2f}M parameters, batch {config.train.batch_size}, r={config.model.r}, "
          f"device {trainer.device}, loss {clock.losses[0]:.3f} -> {clock.losses[-1]:.3f}{mem}", flush=True)
    return rate, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compare", default="", help="train.execution paths side by side, e.g. stepwise,fast")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the compared paths")
    parser.add_argument("--compare-fp32", action="store_true", help="on CUDA, also run without bf16 autocast")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = merge({"preset": args.preset}, parse_set_overrides(args.set))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [p.strip() for p in args.compare.split(",") if p.strip()]
        if not paths:
            measure(overrides, args.steps, args.warmup, Path(tmp), args.preset)
        else:
            results: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
            for _ in range(args.rounds):
                for path in paths:
                    results[path].append(measure(merge(overrides, {"train": {"execution": path}}), args.steps,
                                                 args.warmup, Path(tmp), f"{args.preset} {path}"))
            medians = {path: statistics.median(rate for rate, _ in runs) for path, runs in results.items()}
            base = paths[0]
            for path in paths[1:]:
                print(f"{path} / {base}: {medians[path] / medians[base]:.2f}x steps/s (medians of {args.rounds})")
        if args.compare_fp32 and torch.cuda.is_available():
            measure(merge(overrides, {"train": {"bf16": False}}), args.steps, args.warmup, Path(tmp),
                    f"{args.preset} fp32")


if __name__ == "__main__":
    main()
