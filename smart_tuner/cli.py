"""Command line: ``python -m smart_tuner <command>`` (also installed as ``smart-tuner``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

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
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("matplotlib", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input: printed as one clear line, never as a traceback."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.audio import AudioError
    from .data.corpus import CorpusError
    from .data.espeak import EspeakError
    from .trainer import TrainingError

    return ConfigError, CorpusError, AudioError, CheckpointError, TrainingError, EspeakError


# ------------------------------------------------------------------------------------------------- train
def _resolve_run_dir(args: argparse.Namespace, config_path: Path | None) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    stem = config_path.stem if config_path else "demo"
    if args.resume:
        runs = sorted(Path("runs").glob(f"{stem}-*"))
        if not runs:
            from .trainer import TrainingError

            raise TrainingError(f"--resume: no earlier run under runs/{stem}-*; name it with --run-dir")
        return runs[-1]
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, load_config_file, merge, parse_set_overrides
    from .runner import run_training

    sets = list(args.set or [])
    if args.corpus:
        sets.append(f"data.corpus={args.corpus}")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    config_path = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if config_path:
        config = load_config_file(config_path, sets)
    else:
        config = build_config(merge({}, parse_set_overrides(sets)))
    run_dir = _resolve_run_dir(args, config_path)
    result = run_training(config, run_dir, resume=args.resume, progress=not args.no_progress)
    last = result.last_eval
    summary = f"{result.status} at step {result.step}: {result.reason}; run dir {result.run_dir}"
    if last:
        summary += (f"\nvalidation loss {last.val_loss:.4f}, diagonality {last.diagonality:.3f} "
                    f"(free-running {last.infer_diagonality:.3f}), focus {last.focus:.3f}")
    print(summary)
    return 0 if result.status == "completed" else 1


# ------------------------------------------------------------------------------------------------- data
def cmd_data_demo(args: argparse.Namespace) -> int:
    from .data.demo import build_demo_corpus, default_demo_dir

    out = Path(args.out) if args.out else default_demo_dir(args.lang, args.size)
    start = time.perf_counter()
    path = build_demo_corpus(out, lang=args.lang, size=args.size, seed=args.seed, force=args.force)
    print(f"demo corpus ({args.lang}, {args.size} sentences) in {path} [{time.perf_counter() - start:.1f} s]")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.corpus import read_corpus

    corpus = read_corpus(args.corpus)
    for bad in corpus.bad:
        print(bad)
    print(f"{corpus.root}: {corpus.total_lines} lines, {len(corpus.utterances)} usable, {len(corpus.bad)} bad")
    corpus.check_bad_share(args.max_bad_share)
    return 0


def cmd_debug(args: argparse.Namespace) -> int:
    from .debug import main_debug

    return main_debug(args.run_dir)


# ------------------------------------------------------------------------------------------------- parser
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
    train.set_defaults(func=cmd_train)

    data = sub.add_parser("data", help="corpus tools").add_subparsers(dest="data_command", required=True)
    demo = data.add_parser("demo", help="synthesize the demo corpus with eSpeak NG")
    demo.add_argument("--out", help="output directory (default data/demo-<lang>-<size>)")
    demo.add_argument("--lang", default="en", choices=["en", "ru"])
    demo.add_argument("--size", type=int, default=400, help="number of sentences")
    demo.add_argument("--seed", type=int, default=1234)
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.set_defaults(func=cmd_data_demo)
    check = data.add_parser("check", help="validate an LJSpeech-format corpus and list bad lines")
    check.add_argument("corpus")
    check.add_argument("--max-bad-share", type=float, default=0.1)
    check.set_defaults(func=cmd_data_check)

    debug = sub.add_parser("debug", help="print a readable summary of a run's health")
    debug.add_argument("run_dir")
    debug.set_defaults(func=cmd_debug)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
