"""Command line: ``python -m smart_tuner <command>`` (also installed as ``smart-tuner``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from . import interrupts
from .errors import UserError
from .study.options import StudyOptions, add_arguments, at_least

log = logging.getLogger("smart_tuner")

DEFAULT_CONFIG = Path("objectives/demo.yaml")


class TqdmHandler(logging.Handler):
    """Log lines go through tqdm.write so that they never garble a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill a run
            self.handleError(record)


def setup_logging(level: str = "INFO") -> None:
    """One set-up for every command: our handler on the root logger, the level asked for, and the libraries'
    own handlers (MLflow's, Optuna's) routed through it, so that no line bypasses the progress bar."""
    # MLflow installs a handler of its own at import unless told not to; it must not have been imported yet.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak from WARNING up (from INFO when debugging), never below the level asked for.
    requested = logging.getLevelName(level.upper())
    libraries = logging.INFO if requested <= logging.DEBUG else max(requested, logging.WARNING)
    for name in ("matplotlib", "PIL", "urllib3", "mlflow", "alembic", "optuna", "httpx"):
        logging.getLogger(name).setLevel(libraries)


# ------------------------------------------------------------------------------------------------- train
def _resolve_run_dir(args: argparse.Namespace, config_path: Path | None) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    stem = config_path.stem if config_path else "demo"
    if args.resume:
        runs = sorted(Path("runs").glob(f"{stem}-*"))
        if not runs:
            from .train.trainer import TrainingError

            raise TrainingError(f"--resume: no earlier run under runs/{stem}-*; name it with --run-dir")
        return runs[-1]
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _launch_ranks(args: argparse.Namespace, run_dir: Path) -> int:
    """``train --nproc N``: this command again under torchrun, N ranks on this machine, one run directory."""
    import subprocess

    from .train.distributed import torchrun_command, torchrun_env

    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in ("--nproc", "--max-restarts", "--run-dir"):
            skip = "=" not in item
            continue
        argv.append(item)
    command = [*torchrun_command(args.nproc, args.max_restarts), "-m", "smart_tuner", *argv, "--run-dir", str(run_dir)]
    log.info("starting %d ranks with torchrun, run dir %s", args.nproc, run_dir)
    process = subprocess.Popen(command, env=torchrun_env(dict(os.environ)))
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too; let it stop its ranks
        return process.wait()


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, load_config_file, merge, parse_set_overrides
    from .train.runner import run_training

    sets = list(args.set or [])
    if args.corpus:
        sets.append(f"data.corpus={args.corpus}")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    if args.init_from:
        sets.append(f"train.init_from={json.dumps(args.init_from)}")  # a JSON string is a YAML string
    from_study = StudyOptions.from_args(args, "train")
    if from_study.study:
        if args.config:
            print("error: --config and --from-study exclude each other", file=sys.stderr)
            return 2
        from .study.storage import best_config, open_study_readonly

        study = open_study_readonly(from_study.study_name, from_study.storage)
        best, trial = best_config(study)
        origin = {"tracking": {"source_study": study.study_name, "source_trial": trial.number}}
        config = build_config(merge(merge(best.to_dict(), origin), parse_set_overrides(sets)))
        log.info("production run from study %s, trial %d (value %.4f)", study.study_name, trial.number, trial.value)
        config_path = Path(f"{study.study_name}-best")
    else:
        config_path = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        if config_path:
            config = load_config_file(config_path, sets)
        else:
            config = build_config(merge({}, parse_set_overrides(sets)))
    from .train.distributed import Group

    group = Group.from_env()  # rank 0 of 1 unless torchrun started this process
    if group.distributed and not args.run_dir:
        print("error: under torchrun, name the run directory with --run-dir: every rank, and every restart of the "
              "group, must write into the same one", file=sys.stderr)
        return 2
    run_dir = _resolve_run_dir(args, config_path)
    if args.nproc > 1 and not group.distributed:
        return _launch_ranks(args, run_dir)
    if not group.is_main:  # the other ranks print nothing but errors
        logging.getLogger().setLevel(logging.ERROR)
    hooks = []
    if config.tracking.enabled and group.is_main:
        from .watch.tracking import open_tracking, train_reporter

        hooks.append(train_reporter(open_tracking(args.tracking_uri), config, run_dir))
    try:
        with interrupts.handle_signals():
            result = run_training(config, run_dir, resume=args.resume, extra_hooks=hooks,
                                  progress=not args.no_progress)
    finally:
        group.stop()  # several ranks: leave the process group
    if group.is_main:
        last = result.last_eval
        summary = f"{result.status} at step {result.step}: {result.reason}; run dir {result.run_dir}"
        if last:
            summary += (f"\nvalidation loss {last.val_loss:.4f}, diagonality {last.diagonality:.3f} "
                        f"(free-running {last.infer_diagonality:.3f}), focus {last.focus:.3f}")
        print(summary)
        if result.status == "interrupted":
            print(f"checkpoint written at step {result.step}; resume with:\n  python -m smart_tuner train --config "
                  f"{result.run_dir / 'config.yaml'} --run-dir {result.run_dir} --resume", flush=True)
    if result.status == "interrupted":
        return interrupts.exit_code(interrupts.requested() or signal.SIGINT)
    return 0 if result.status == "completed" else 1


# ------------------------------------------------------------------------------------------------- speech
def cmd_convert_nvidia(args: argparse.Namespace) -> int:
    from .tts.nvidia import convert

    done = convert(args.checkpoint, args.out)
    print(f"converted {done['tensors']} tensors ({done['parameters']:,} parameters) into {done['out']}: NVIDIA's "
          f"symbols, English cleaning and unstandardized log-mels")
    return 0


def _checkpoint_to_speak(args: argparse.Namespace) -> Path:
    options = StudyOptions.from_args(args, "synthesize")
    if bool(options.study) == bool(args.checkpoint):
        from .tts.synthesis import SynthesisError

        raise SynthesisError("name one checkpoint: --checkpoint CKPT or --from-study NAME")
    if args.checkpoint:
        return Path(args.checkpoint)
    from .study.storage import best_checkpoint, open_study_readonly

    return best_checkpoint(open_study_readonly(options.study_name, options.storage))


def cmd_synthesize(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .data.audio import wav_bytes
    from .data.dataset import LOG_FLOOR
    from .files import write_atomic
    from .tts.inference import load_for_inference, min_vocodable_frames, pick_device, vocode
    from .tts.synthesis import encode_lines, read_lines, synthesize
    from .watch.plots import alignment_png

    lines = read_lines(args.text, args.text_file)
    path = _checkpoint_to_speak(args)
    device = pick_device(args.device)
    loaded = load_for_inference(path, device)
    sentences = encode_lines(loaded, lines, args.drop_missing, origin=args.text_file or "--text")
    audio = loaded.config.audio
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(sentences), desc="synthesize", disable=args.no_progress, dynamic_ncols=True)
    start = time.perf_counter()
    for spoken in synthesize(loaded, sentences, device, args.batch_size, args.seed):
        name = out / f"{spoken.sentence.number:03d}"
        mel = spoken.mel
        if mel.shape[1] < min_vocodable_frames(audio):  # too short to vocode: pad with silence
            floor = mel.new_full((mel.shape[0], min_vocodable_frames(audio) - mel.shape[1]), LOG_FLOOR)
            mel = torch.cat([mel, floor], 1)
        write_atomic(name.with_suffix(".wav"), wav_bytes(vocode(mel, audio), audio.sample_rate))
        if spoken.alignment is not None:
            write_atomic(name.with_suffix(".png"),
                         alignment_png(spoken.alignment, title=f"sentence {spoken.sentence.number}"))
        if args.mel:
            write_atomic(name.with_suffix(".npy"), partial(np.save, arr=spoken.mel.numpy().astype(np.float32)))
        frames = spoken.mel.shape[1]
        bar.update(1)
        seconds = frames * audio.hop_length / audio.sample_rate
        tqdm.write(f"{spoken.sentence.number:03d}: {frames} frames, {seconds:.2f} s, "
                   f"{'stopped' if spoken.stopped else 'hit the step limit'}, diagonality {spoken.diagonality:.3f}: "
                   f"{spoken.sentence.text[:60]}")
    bar.close()
    print(f"{len(sentences)} sentences from {path} in {out} [{time.perf_counter() - start:.1f} s]")
    return 0


# ------------------------------------------------------------------------------------------------- data
def cmd_data_demo(args: argparse.Namespace) -> int:
    from .data.demo import build_demo_corpus
    from .paths import demo_corpus_dir

    out = Path(args.out) if args.out else demo_corpus_dir(args.lang, args.size, args.words)
    start = time.perf_counter()
    path = build_demo_corpus(out, lang=args.lang, size=args.size, seed=args.seed, force=args.force, words=args.words)
    print(f"demo corpus ({args.lang}, {args.size} utterances of {args.words[0]}-{args.words[1]} words) in {path} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0


def word_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` -> (low, high), checked as the demo corpus checks it."""
    from .data.demo import check_words

    try:
        low, high = (int(part) for part in text.split("-"))
        return check_words((low, high))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "words" in str(exc) else
                                         f"{text!r}: give LOW-HIGH, e.g. 15-30") from None


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.corpus import read_corpus

    corpus = read_corpus(args.corpus)
    for bad in corpus.bad:
        print(bad)
    print(f"{corpus.root}: {corpus.total_lines} lines, {len(corpus.utterances)} usable, {len(corpus.bad)} bad")
    corpus.check_bad_share(args.max_bad_share)
    return 0


# ------------------------------------------------------------------------------------------------- study
def cmd_optimize(args: argparse.Namespace) -> int:
    from .study.storage import summary
    from .study.workers import optimize

    with interrupts.handle_signals():
        study = optimize(StudyOptions.from_args(args, "optimize"), progress=not args.no_progress)
    print(summary(study))
    signum = interrupts.requested()
    if signum is not None:
        print("interrupted: the running trial was failed as interrupted and re-queued; run the same command again "
              "to continue the study (the re-queued trial resumes from its last checkpoint)", flush=True)
        return interrupts.exit_code(signum)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .study.workers import run_worker

    with interrupts.handle_signals():
        run_worker(StudyOptions.from_args(args, "worker"))
    signum = interrupts.requested()
    return 0 if signum is None else interrupts.exit_code(signum)


def cmd_best(args: argparse.Namespace) -> int:
    from .config import to_yaml
    from .files import write_atomic
    from .study.storage import best_config, open_study_readonly

    options = StudyOptions.from_args(args, "best")
    study = open_study_readonly(options.study_name, options.storage)
    config, trial = best_config(study)
    config.tracking.source_study, config.tracking.source_trial = study.study_name, trial.number
    header = (f"# best trial {trial.number} of study {study.study_name}: value {trial.value:.6g}, diagonality "
              f"{trial.user_attrs.get('diagonality', float('nan')):.3f}\n"
              f"# train it: python -m smart_tuner train --config {args.out} --max-steps 100000\n")
    out = write_atomic(args.out, header + to_yaml(config))
    print(f"wrote the config of trial {trial.number} (value {trial.value:.4f}) to {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .view.dashboard import cmd_dashboard as run

    return run(args)


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from .view.dashboard import cmd_mlflow_ui as run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .view.report import cmd_report as run

    return run(args)


def cmd_debug(args: argparse.Namespace) -> int:
    from .watch.debug import main_debug

    return main_debug(args.run_dir)


# ------------------------------------------------------------------------------------------------- parser
def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smart_tuner", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train Tacotron 2 from a config (or objective) file")
    train.add_argument("--config", help=f"YAML config or objective file (default {DEFAULT_CONFIG})")
    train.add_argument("--corpus", help="LJSpeech-format corpus directory (default: the demo corpus)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=5e-4")
    train.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    train.add_argument("--run-dir", help="where checkpoints and logs go (default runs/<config>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir (default: the latest)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--init-from", metavar="CKPT", help="warm start: model weights from a smart_tuner or NVIDIA "
                       "checkpoint (shorthand for --set train.init_from=CKPT)")
    add_arguments(train, "train")  # --from-study NAME, --storage
    train.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db)")
    train.add_argument("--nproc", type=at_least(1, int), default=1, metavar="N",
                       help="train on N ranks of this machine (starts torchrun: N GPUs, or N CPU processes with gloo)")
    train.add_argument("--max-restarts", type=at_least(0, int), default=0, metavar="R",
                       help="with --nproc: restart the group up to R times after a rank dies; it resumes from last.pt")
    train.set_defaults(func=cmd_train)

    speak = sub.add_parser("synthesize", help="speech from text with a trained checkpoint (Griffin-Lim WAVs, "
                           "alignment images, log-mels)")
    speak.add_argument("--checkpoint", metavar="CKPT", help="a smart_tuner checkpoint (converted NVIDIA ones too)")
    add_arguments(speak, "synthesize")  # --from-study NAME, --storage
    said = speak.add_mutually_exclusive_group(required=True)
    said.add_argument("--text", help="one sentence")
    said.add_argument("--text-file", metavar="FILE", help="UTF-8 text, one sentence per line")
    speak.add_argument("--out", required=True, metavar="DIR", help="where NNN.wav, NNN.png (and NNN.npy) go")
    speak.add_argument("--mel", action="store_true", help="also write each log-mel as NNN.npy (n_mels x frames)")
    speak.add_argument("--seed", type=int, default=0, help="prenet dropout stays on at inference: the seed fixes it")
    speak.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    speak.add_argument("--batch-size", type=int, default=8, help="sentences decoded together")
    speak.add_argument("--drop-missing", action="store_true",
                       help="drop characters the checkpoint's symbol table lacks instead of stopping")
    speak.add_argument("--no-progress", action="store_true", help="no progress bar")
    speak.set_defaults(func=cmd_synthesize)

    convert = sub.add_parser("convert", help="import another project's checkpoint").add_subparsers(
        dest="convert_command", required=True)
    nvidia = convert.add_parser("nvidia", help="an NVIDIA/tacotron2 or DeepLearningExamples Tacotron 2 checkpoint")
    nvidia.add_argument("checkpoint", metavar="IN.pt")
    nvidia.add_argument("--out", required=True, metavar="OUT.pt")
    nvidia.set_defaults(func=cmd_convert_nvidia)

    opt = sub.add_parser("optimize", help="run an Optuna study: each trial trains with the adapters on")
    add_arguments(opt, "optimize")
    opt.add_argument("--no-progress", action="store_true")
    opt.set_defaults(func=cmd_optimize)

    worker = sub.add_parser("worker", help=argparse.SUPPRESS)  # started by optimize --n-jobs / --gpus
    add_arguments(worker, "worker")
    worker.set_defaults(func=cmd_worker)

    best = sub.add_parser("best", help="write the full training config of a study's best trial")
    add_arguments(best, "best")
    best.add_argument("--out", default="best.yaml")
    best.set_defaults(func=cmd_best)

    data = sub.add_parser("data", help="corpus tools").add_subparsers(dest="data_command", required=True)
    demo = data.add_parser("demo", help="synthesize the demo corpus with eSpeak NG")
    demo.add_argument("--out", help="output directory (default data/demo-<lang>-<size>)")
    demo.add_argument("--lang", default="en", choices=["en", "ru"])
    demo.add_argument("--size", type=at_least(1, int), default=400, help="number of sentences")
    demo.add_argument("--seed", type=int, default=1234)
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.add_argument("--words", type=word_range, default=(3, 12), metavar="LOW-HIGH",
                      help="words per utterance (default 3-12, one sentence); more makes utterances of several "
                           "sentences, e.g. 15-30 (about 5 s each), for harder alignment")
    demo.set_defaults(func=cmd_data_demo)
    check = data.add_parser("check", help="validate an LJSpeech-format corpus and list bad lines")
    check.add_argument("corpus")
    check.add_argument("--max-bad-share", type=float, default=0.1)
    check.set_defaults(func=cmd_data_check)

    dash = sub.add_parser("dashboard", help="browse a study in optuna-dashboard (with the trials' images)")
    dash.add_argument("--study", help="study name: its default storage sqlite:///studies/<study>.db")
    dash.add_argument("--storage", help="Optuna storage URL (instead of --study)")
    dash.add_argument("--port", type=port_number, default=8080)
    dash.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    dash.add_argument("--artifact-dir", help="the study's artifact store, where its trials uploaded their images "
                      "(default: artifacts/ next to a SQLite study file, else studies/artifacts)")
    dash.set_defaults(func=cmd_dashboard)

    ui = sub.add_parser("mlflow-ui", help="open the MLflow UI on the store the runs used")
    ui.add_argument("--tracking-uri", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db")
    ui.add_argument("--port", type=port_number, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    ui.set_defaults(func=cmd_mlflow_ui)

    report = sub.add_parser("report", help="write a self-contained HTML report of a study")
    add_arguments(report, "report")
    report.add_argument("--out", default="report.html")
    report.set_defaults(func=cmd_report)

    debug = sub.add_parser("debug", help="print a readable summary of a run's health")
    debug.add_argument("run_dir")
    debug.set_defaults(func=cmd_debug)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupts.exit_code(interrupts.requested() or signal.SIGINT)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, UserError):
            # A path the user named cannot be written or read (a directory, a missing folder, a full disk).
            print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        if not isinstance(exc, UserError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
