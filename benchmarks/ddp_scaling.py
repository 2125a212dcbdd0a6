"""Training throughput on 1..N ranks (torchrun): steps/s, mel frames/s and the scaling efficiency.

Usage: python benchmarks/ddp_scaling.py [--preset demo] [--ranks 1,2] [--batch 16] [--steps 40] [--warmup 10]
                                        [--rounds 2] [--device cpu|cuda] [--set key=value ...]

Each rank count runs ``python -m smart_tuner train --nproc N`` (our launcher of torchrun: gloo on CPU, NCCL on
GPUs) on the real data path (the demo corpus unless --set data.corpus), with the same global batch (--batch, each
rank takes batch / N). On CPU the cores are split evenly (``train.num_threads`` = cores / N); on CUDA each rank has
its own GPU. The run evaluates once after --warmup steps and once at the end, so its second ``metrics.jsonl``
record times exactly the last --steps steps (``steps_per_second``, ``frames_per_second``: real mel frames of all
ranks). Rank counts alternate for --rounds rounds (the machine is noisy); medians are printed with the scaling
efficiency, frames/s(N) / (N x frames/s(1)). On CPU the ranks share one machine's cores, so the efficiency says
what the collectives and the split batches cost, not what more hardware buys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_tuner.config import build_config, merge, parse_set_overrides
from smart_tuner.cores import machine_cores
from smart_tuner.run_logs import read_metrics


def run(args: argparse.Namespace, ranks: int, workdir: Path, label: str) -> dict:
    threads = max(1, machine_cores() // ranks) if args.device == "cpu" else 0
    sets = [f"train.batch_size={args.batch}", f"train.max_steps={args.warmup + args.steps}",
            f"train.eval_every={args.warmup}", f"train.device={args.device}", f"train.num_threads={threads}",
            "tracking.enabled=false", "debug.enabled=false", "data.free_running_sentences=0", *args.set]
    run_dir = workdir / label
    command = [sys.executable, "-m", "smart_tuner", "train", "--no-progress", "--run-dir", str(run_dir),
               "--nproc", str(ranks), "--set", f"preset={args.preset}"]
    for item in sets:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{label}: training failed:\n{result.stderr[-3000:]}")
    timed = read_metrics(run_dir)[-1]
    return {"steps_per_s": timed["steps_per_second"], "frames_per_s": timed["frames_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--batch", type=int, default=16, help="the global batch")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    counts = [int(n) for n in args.ranks.split(",")]
    # Build the corpus and its feature cache once, before anything is timed.
    from smart_tuner.data.dataset import prepare_data

    prepare_data(build_config(merge({"preset": args.preset}, parse_set_overrides(args.set))))
    found: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for n in counts:
                measured = run(args, n, Path(tmp), f"r{round_}-n{n}")
                found[n].append(measured)
                print(f"round {round_ + 1}, {n} rank(s): {measured['steps_per_s']:.2f} steps/s, "
                      f"{measured['frames_per_s']:,.0f} mel frames/s", flush=True)
    cores = machine_cores()
    where = f"{cores} CPU cores, threads split evenly" if args.device == "cpu" else "one GPU per rank"
    print(f"\npreset {args.preset}, global batch {args.batch}, {args.steps} timed steps, {where}; "
          f"medians of {args.rounds} rounds:")
    base = statistics.median(m["frames_per_s"] for m in found[counts[0]]) / counts[0]
    for n in counts:
        steps = statistics.median(m["steps_per_s"] for m in found[n])
        frames = statistics.median(m["frames_per_s"] for m in found[n])
        print(f"  {n} rank(s): {steps:6.2f} steps/s {frames:10,.0f} mel frames/s  "
              f"scaling efficiency {frames / (n * base):.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
