"""Characters against phonemes (``data.text``), and the HiFi-GAN generator's speed against Griffin-Lim's.

Usage: python benchmarks/frontends.py [--cases en,ru,en-long] [--seeds 0,1,2] [--threads 2] [--out FILE.json]
                                      [--skip-training] [--skip-vocoder]

The plan, fixed before the runs (issue 20, item 5):

- Training arms: ``data.text: characters`` and ``data.text: phonemes`` (eSpeak NG, the demo voice: en-us, ru), the
  only difference between them. Everything else is the demo objective's reference config
  (objectives/demo.yaml's ``config:``, adapters on as shipped), on three demo corpora of 400 utterances:
  ``en`` and ``ru`` (3-12 words, the demo corpus's default) and ``en-long`` (15-30 words, about 5 s each).
  Seeds 0, 1, 2 (``train.seed``; the validation split is the same in both arms). Budgets: 400 steps for en and ru,
  800 for en-long (the 3-12-word corpus aligns by 150-250 steps, the long one took about 500 without adapters).
  An evaluation every 25 steps on the same 16 held-out utterances, 4 of them decoded free-running.
- Measured per run: the first evaluated step with free-running diagonality >= 0.8 (a run that never gets there
  is reported as "not reached", counted as censored at its budget, never as a number), the final teacher-forced
  validation loss (the mel targets are the same audio in both arms, so the losses compare), the wall time.
  Per case and arm: the median and the range over the 3 seeds (3 seeds give no useful interval; the range is
  reported as it is).
- Vocoder: mels of 2 s (172 frames at 22050 Hz, hop 256) and 5 s (430 frames); Griffin-Lim (32 iterations, what
  synthesize and the previews use) against our HiFi-GAN generator built at V1 and V2 sizes (jik876/hifi-gan's
  config_v1/config_v2 fields) with random weights (speed does not depend on the values), batch 1, on this CPU with
  ``--threads`` threads, after one warm-up call; 5 repeats each. Real-time factor = seconds to vocode / seconds
  of audio (below 1: faster than real time); the median and the range of the 5 repeats.

Everything it measured goes to ``--out`` (JSON, with the commit and the command) and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from harness import EvalLog, first_step

from smart_tuner.config import AudioConfig, load_config_file
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts.hifigan import Generator, HifiGanConfig
from smart_tuner.tts.inference import vocode_griffin_lim

CASES = {  # name: (demo language, words per utterance, steps)
    "en": ("en", [3, 12], 400),
    "ru": ("ru", [3, 12], 400),
    "en-long": ("en", [15, 30], 800),
}
FRONTENDS = ("characters", "phonemes")
TARGET = 0.8
GENERATORS = {  # jik876/hifi-gan's config_v1.json and config_v2.json generator fields
    "V1": {"resblock": "1", "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
           "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
           "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]},
    "V2": {"resblock": "1", "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
           "upsample_initial_channel": 128, "resblock_kernel_sizes": [3, 7, 11],
           "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]},
}
AUDIO = {"num_mels": 80, "sampling_rate": 22050, "hop_size": 256, "n_fft": 1024, "win_size": 1024, "fmin": 0,
         "fmax": 8000}


def train_once(case: str, frontend: str, seed: int, threads: int, workdir: Path) -> dict:
    lang, words, steps = CASES[case]
    config = load_config_file(Path("objectives/demo.yaml"), [
        f"data.demo_lang={lang}", f"data.demo_words=[{words[0]}, {words[1]}]", "data.demo_size=400",
        f"data.text={frontend}", f"train.max_steps={steps}", "train.eval_every=25", f"train.seed={seed}",
        f"train.num_threads={threads}", "train.device=cpu", "tracking.enabled=false"])
    log = EvalLog(keys=("step", "free_running_diagonality", "diagonality", "val_loss"))
    start = time.perf_counter()
    result = Trainer(config, workdir / f"{case}-{frontend}-{seed}", hooks=[log], progress=False).fit()
    reached = first_step(log.evals, "free_running_diagonality", TARGET)
    return {"case": case, "frontend": frontend, "seed": seed, "budget": steps, "steps": result.step,
            "reached_step": reached, "final_val_loss": result.last_eval.val_loss,
            "final_free_running_diagonality": result.last_eval.free_running_diagonality,
            "wall_s": time.perf_counter() - start, "evals": log.evals}


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def training_table(runs: list[dict]) -> list[str]:
    lines = ["| case | text | budget | reached 0.8 (seeds) | step reached: median [range] | final val loss: median "
             "[range] | wall s per run |", "|---|---|---|---|---|---|---|"]
    for case in CASES:
        for frontend in FRONTENDS:
            mine = [r for r in runs if r["case"] == case and r["frontend"] == frontend]
            if not mine:
                continue
            got = [r["reached_step"] for r in mine if r["reached_step"] is not None]
            steps = (f"{statistics.median(got):.0f} [{min(got)}, {max(got)}]" if len(got) == len(mine) else
                     f"{sorted(got)} reached, {len(mine) - len(got)} not by {mine[0]['budget']}")
            lines.append(f"| {case} | {frontend} | {mine[0]['budget']} | {len(got)}/{len(mine)} | {steps} | "
                         f"{spread([r['final_val_loss'] for r in mine])} | "
                         f"{statistics.median(r['wall_s'] for r in mine):.0f} |")
    return lines


def vocoder_speed(threads: int, repeats: int = 5) -> list[dict]:
    torch.set_num_threads(threads)
    audio = AudioConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (172, 430):
            mel = torch.randn(audio.n_mels, frames) - 6.0
            seconds = frames * audio.hop_length / audio.sample_rate
            arms = {"Griffin-Lim (32 iterations)": lambda m=mel: vocode_griffin_lim(m, audio)}
            for name, fields in GENERATORS.items():
                path = Path(tmp) / f"{name}.json"
                path.write_text(json.dumps({**fields, **AUDIO}))
                torch.manual_seed(0)
                generator = Generator(HifiGanConfig.read(path)).eval()
                arms[f"HiFi-GAN {name} (random weights)"] = lambda m=mel, g=generator: g(m[None])
            for arm, call in arms.items():
                with torch.inference_mode():
                    call()  # warm-up
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - start)
                rows.append({"arm": arm, "frames": frames, "audio_s": seconds, "times_s": times,
                             "rtf": [t / seconds for t in times]})
    return rows


def vocoder_table(rows: list[dict]) -> list[str]:
    lines = ["| vocoder | audio | real-time factor: median [range of 5] |", "|---|---|---|"]
    lines += [f"| {r['arm']} | {r['audio_s']:.1f} s ({r['frames']} frames) | {spread(r['rtf'])} |" for r in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-vocoder", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    results: dict = {"command": " ".join(sys.argv), "commit": commit, "target": TARGET, "runs": [], "vocoder": []}
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))

    if not args.skip_vocoder:
        results["vocoder"] = vocoder_speed(args.threads)
        save()
        print("\n".join(vocoder_table(results["vocoder"])), flush=True)
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            for case in cases:
                for seed in (int(s) for s in args.seeds.split(",")):
                    for frontend in FRONTENDS:  # the two arms side by side, seed by seed
                        run = train_once(case, frontend, seed, args.threads, Path(tmp))
                        results["runs"].append(run)
                        save()
                        print(f"{case} {frontend} seed {seed}: reached 0.8 at {run['reached_step']}, final val loss "
                              f"{run['final_val_loss']:.4f}, {run['wall_s']:.0f} s", flush=True)
        print("\n".join(training_table(results["runs"])))


if __name__ == "__main__":
    main()
