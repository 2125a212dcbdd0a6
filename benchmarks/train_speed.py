"""Training steps per second of a preset on this machine's device (CPU threads, or CUDA with bf16 / fp32).

Usage: python benchmarks/train_speed.py [--preset demo] [--steps 60] [--warmup 10] [--set key=value ...]
Prints one line per configuration: steps/s over the timed steps (wall clock between steps, optimizer included).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from smart_tuner.config import build_config, merge, parse_set_overrides  # noqa: E402
from smart_tuner.hooks import Hook  # noqa: E402
from smart_tuner.train.trainer import Trainer  # noqa: E402


class StepClock(Hook):
    name = "clock"

    def __init__(self):
        self.times: list[float] = []
        self.losses: list[float] = []

    def on_step(self, stats):
        self.times.append(time.perf_counter())
        self.losses.append(stats.loss)
        return []


def measure(overrides: dict, steps: int, warmup: int, workdir: Path, label: str) -> None:
    overrides = merge(overrides, {"train": {"max_steps": steps + warmup, "eval_every": 10**9}})
    config = build_config(overrides)
    clock = StepClock()
    trainer = Trainer(config, workdir / label, hooks=[clock], progress=False)
    trainer.fit()
    timed = clock.times[warmup:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    params = sum(p.numel() for p in trainer.model.parameters())
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if trainer.device.type == "cuda" else ""
    print(f"{label}: {rate:.2f} steps/s ({1000 / rate:.0f} ms/step), {params / 1e6:.2f}M parameters, "
          f"batch {config.train.batch_size}, r={config.model.r}, device {trainer.device}, "
          f"loss {clock.losses[0]:.3f} -> {clock.losses[-1]:.3f}{mem}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compare-fp32", action="store_true", help="on CUDA, also run without bf16 autocast")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = merge({"preset": args.preset}, parse_set_overrides(args.set))
    with tempfile.TemporaryDirectory() as tmp:
        measure(overrides, args.steps, args.warmup, Path(tmp), f"{args.preset}")
        if args.compare_fp32 and torch.cuda.is_available():
            measure(merge(overrides, {"train": {"bf16": False}}), args.steps, args.warmup, Path(tmp),
                    f"{args.preset} fp32")


if __name__ == "__main__":
    main()
