"""Several trainings on one machine at once: does their summed throughput hold up against one alone?

Usage: python benchmarks/shared_cores.py [--preset demo] [--steps 40] [--warmup 5] [--rounds 2]
                                         [--counts 1,2,4,8] [--set key=value ...]

Default: runs, alternated for --rounds rounds, one training alone (``train.num_threads: 0``: it is the only member
of the share, so it takes every core); two started together, each with every core (``train.num_threads`` = the
core count: what each process did before the share); and two started together with ``train.num_threads: 0`` (the
share: each takes half). Goal: a pair's sum >= 80% of one alone.

With --counts K1,K2,...: K trainings started together for each K, sharing the cores; on a GPU machine add
``--set train.device=cuda`` and this is trial packing on one GPU (``optimize --trials-per-gpu K``): the summed
steps/s against K = 1 (goal on a GPU: >= 4x at the best K).

Each training is its own process on the real data path (the demo corpus unless --set data.corpus) and is timed
over its last ``steps`` steps (see train_speed.py). Prints each process's steps/s and mel frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import die_with_parent

from smart_tuner.config import build_config, merge, parse_set_overrides
from smart_tuner.cores import machine_cores


def child(args: argparse.Namespace) -> None:
    """One training; prints its throughput as the last line."""
    from train_speed import measure  # the same clock as train_speed.py (this directory is on sys.path)

    overrides = merge({"preset": args.preset, "tracking": {"enabled": False}}, parse_set_overrides(args.set))
    overrides = merge(overrides, {"train": {"num_threads": args.threads}})
    rate, frames = measure(overrides, args.steps, args.warmup, Path(args.workdir), args.label)
    print("RESULT " + json.dumps({"steps_per_s": rate, "frames_per_s": frames}), flush=True)


def run_together(args: argparse.Namespace, threads: int, count: int, workdir: Path, label: str) -> list[dict]:
    """``count`` trainings started at once, each with ``threads`` torch threads (0: the share), in a share of
    their own (a directory under ``workdir``), so that processes outside the benchmark do not change the split."""
    env_share = workdir / f"share-{label}"
    procs = []
    for i in range(count):
        argv = [sys.executable, __file__, "--child", "--threads", str(threads), "--label", f"{label}-{i}",
                "--workdir", str(workdir), "--preset", args.preset, "--steps", str(args.steps),
                "--warmup", str(args.warmup)] + [x for item in args.set for x in ("--set", item)]
        env = {**os.environ, "SMART_TUNER_CORE_SHARE": str(env_share)}
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent))
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{label}: a training process failed (exit {p.returncode})")
        line = next(x for x in reversed(out.splitlines()) if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--counts", help="K trainings at once for each K (default: the three cases above)")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cores = machine_cores()
    # Build the corpus and its feature cache before anything is timed.
    from smart_tuner.data.dataset import prepare_data

    prepare_data(build_config(merge({"preset": args.preset}, parse_set_overrides(args.set))))
    if args.counts:
        cases = {f"{k} at once": (0, k) for k in (int(c) for c in args.counts.split(","))}
    else:
        cases = {"one alone": (0, 1), f"two, {cores} threads each": (cores, 2), "two, sharing the cores": (0, 2)}
    sums: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for index, (name, (threads, count)) in enumerate(cases.items()):
                results = run_together(args, threads, count, Path(tmp), f"r{round_}c{index}")
                rates = [r["steps_per_s"] for r in results]
                frames = sum(r["frames_per_s"] for r in results)
                sums[name].append(sum(rates))
                print(f"round {round_ + 1}, {name}: steps/s {' + '.join(f'{r:.2f}' for r in rates)} = "
                      f"{sum(rates):.2f}; {frames:,.0f} mel frames/s", flush=True)
    first = statistics.median(next(iter(sums.values())))
    print(f"\n{cores} cores, preset {args.preset}, {args.steps} timed steps, medians of {args.rounds} rounds:")
    for name, values in sums.items():
        print(f"  {name:28s} {statistics.median(values):6.2f} steps/s in all = "
              f"{statistics.median(values) / first:.2f} x {next(iter(sums))}")


if __name__ == "__main__":
    main()
