"""Command line: ``python -m smart_tuner <command>`` (also installed as ``smart-tuner``).

This module parses and dispatches: each command turns its arguments into plain values and calls its work in its
package (``train.command``, ``tts.speak``, ``study.storage``, ``view.dashboard``, ...), imported only when it runs,
so that ``report``, ``dashboard`` and ``best`` never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import interrupts
from .errors import UserError
from .study.options import StudyOptions, add_arguments, at_least
from .watch.logs import setup_logging

DEFAULT_CONFIG = Path("objectives/demo.yaml")
Parser = argparse.ArgumentParser


def work(target: str, *arguments: Any, **keywords: Any) -> Any:
    """Call ``module:function`` of this package, imported only now: a command loads only what it uses."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module, __package__), name)(*arguments, **keywords)


# ------------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """The config from --from-study, --config or the demo objective, the shorthands as --set items; then train."""
    from .config import build_config, load_config_file, merge, parse_set_overrides

    sets = list(args.set or [])
    if args.corpus:
        sets.append(f"data.corpus={args.corpus}")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    if args.init_from:
        sets.append(f"train.init_from={json.dumps(args.init_from)}")  # a JSON string is a YAML string
    if args.study and args.config:
        raise UserError("--config and --from-study exclude each other")
    config_path = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if args.study:
        from .study.storage import production_config

        config, stem = production_config(args.study, args.storage, sets), f"{args.study}-best"
    elif config_path:
        config, stem = load_config_file(config_path, sets), config_path.stem
    else:
        config, stem = build_config(merge({}, parse_set_overrides(sets))), "demo"
    return work(".train.command:train_command", config, stem, args.argv, run_dir=args.run_dir, resume=args.resume,
                nproc=args.nproc, max_restarts=args.max_restarts, tracking_uri=args.tracking_uri,
                progress=not args.no_progress)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from .tts.synthesis import SynthesisError, read_lines

    lines = read_lines(args.text, args.text_file)
    if bool(args.study) == bool(args.checkpoint):
        raise SynthesisError("name one checkpoint: --checkpoint CKPT or --from-study NAME")
    best = not args.checkpoint  # --from-study: its best trial's checkpoint
    checkpoint = work(".study.storage:best_checkpoint", args.study, args.storage) if best else Path(args.checkpoint)
    return work(".tts.speak:speak_to_files", checkpoint, lines, Path(args.out), origin=args.text_file or "--text",
                device=args.device, batch_size=args.batch_size, seed=args.seed, drop_missing=args.drop_missing,
                write_mel=args.mel, progress=not args.no_progress, vocoder=args.vocoder,
                vocoder_config=args.vocoder_config)


# ------------------------------------------------------------------------------------------------- parser
def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def word_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` -> (low, high), checked as the demo corpus checks it."""
    from .data.demo import check_words

    try:
        low, high = (int(part) for part in text.split("-"))
        return check_words((low, high))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "words" in str(exc) else
                                         f"{text!r}: give LOW-HIGH, e.g. 15-30") from None


def _train_flags(train: Parser) -> None:
    train.add_argument("--config", help=f"YAML config or objective file (default {DEFAULT_CONFIG})")
    train.add_argument("--corpus", help="LJSpeech-format corpus directory (default: the demo corpus)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=5e-4")
    train.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    train.add_argument("--run-dir", help="where checkpoints and logs go (default runs/<config>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir (default: the latest)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--init-from", metavar="CKPT", help="warm start: model weights from a smart_tuner or NVIDIA "
                       "checkpoint (shorthand for --set train.init_from=CKPT)")
    add_arguments(train, "train")  # --from-study NAME, --storage, --tracking-uri
    train.add_argument("--nproc", type=at_least(1, int), default=1, metavar="N",
                       help="train on N ranks of this machine (starts torchrun: N GPUs, or N CPU processes with gloo)")
    train.add_argument("--max-restarts", type=at_least(0, int), default=0, metavar="R",
                       help="with --nproc: restart the group up to R times after a rank dies; it resumes from last.pt")


def _synthesize_flags(speak: Parser) -> None:
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
    _vocoder_flags(speak, required=False)


def _vocoder_flags(parser: Parser, required: bool) -> None:
    parser.add_argument("--vocoder", metavar="CKPT", required=required,
                        help="a HiFi-GAN generator checkpoint (jik876/hifi-gan's layout); without it, Griffin-Lim")
    parser.add_argument("--vocoder-config", metavar="JSON", help="its config (default: config.json beside it)")


def _vocode_flags(vocode: Parser) -> None:
    vocode.add_argument("mels", nargs="+", metavar="MEL.npy", help="log-mels as synthesize --mel writes them")
    _vocoder_flags(vocode, required=True)
    vocode.add_argument("--out", required=True, metavar="DIR", help="where <stem>.wav go")
    vocode.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    vocode.add_argument("--batch-size", type=int, default=8, help="mels vocoded together")


def _convert_flags(convert: Parser) -> None:
    nvidia = convert.add_subparsers(dest="convert_command", required=True).add_parser(
        "nvidia", help="an NVIDIA/tacotron2 or DeepLearningExamples Tacotron 2 checkpoint")
    nvidia.add_argument("checkpoint", metavar="IN.pt")
    nvidia.add_argument("--out", required=True, metavar="OUT.pt")
    nvidia.set_defaults(func=lambda a: work(".tts.nvidia:convert_command", a.checkpoint, a.out))


def _data_flags(data: Parser) -> None:
    sub = data.add_subparsers(dest="data_command", required=True)
    demo = sub.add_parser("demo", help="synthesize the demo corpus with eSpeak NG")
    demo.add_argument("--out", help="output directory (default data/demo-<lang>-<size>)")
    demo.add_argument("--lang", default="en", choices=["en", "ru"])
    demo.add_argument("--size", type=at_least(1, int), default=400, help="number of sentences")
    demo.add_argument("--seed", type=int, default=1234)
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.add_argument("--words", type=word_range, default=(3, 12), metavar="LOW-HIGH",
                      help="words per utterance (default 3-12, one sentence); more makes utterances of several "
                           "sentences, e.g. 15-30 (about 5 s each), for harder alignment")
    demo.set_defaults(func=lambda a: work(".data.demo:demo_command", a.out, a.lang, a.size, a.seed, a.force,
                                          a.words))
    check = sub.add_parser("check", help="validate an LJSpeech-format corpus and list bad lines")
    check.add_argument("corpus")
    check.add_argument("--max-bad-share", type=float, default=0.1)
    check.add_argument("--phonemes", metavar="VOICE", help="also list the lines eSpeak NG cannot read as this voice "
                                                           "(data.text: phonemes), e.g. en-us or ru")
    check.set_defaults(func=lambda a: work(".data.corpus:check_command", a.corpus, a.max_bad_share, a.phonemes))


def _flags(command: str, *, out: str | None = None, port: int | None = None) -> Callable[[Parser], None]:
    """A study or server command's flags: its study options (study/options.py), then --out, or --port and --host."""
    def add(parser: Parser) -> None:
        add_arguments(parser, command)
        if out:
            parser.add_argument("--out", default=out)
        if port:
            parser.add_argument("--port", type=port_number, default=port)
            parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
        if command == "optimize":
            parser.add_argument("--no-progress", action="store_true")
    return add


# name: (help, adds its flags, runs it); no help: a hidden command; no run: its sub-commands set theirs
COMMANDS: dict[str, tuple[str | None, Callable[[Parser], Any], Callable[[argparse.Namespace], int] | None]] = {
    "train": ("train Tacotron 2 from a config (or objective) file", _train_flags, cmd_train),
    "synthesize": ("speech from text with a trained checkpoint (Griffin-Lim WAVs, alignment images, log-mels)",
                   _synthesize_flags, cmd_synthesize),
    "vocode": ("log-mels (synthesize --mel) to speech through a HiFi-GAN generator", _vocode_flags,
               lambda a: work(".tts.speak:vocode_command", [Path(m) for m in a.mels], Path(a.vocoder), Path(a.out),
                              vocoder_config=a.vocoder_config, device=a.device, batch_size=a.batch_size)),
    "convert": ("import another project's checkpoint", _convert_flags, None),
    "optimize": ("run an Optuna study: each trial trains with the adapters on", _flags("optimize"),
                 lambda a: work(".study.workers:optimize_command", StudyOptions.from_args(a, "optimize"),
                                progress=not a.no_progress)),
    "worker": (None, _flags("worker"),  # started by optimize --n-jobs / --gpus
               lambda a: work(".study.workers:worker_command", StudyOptions.from_args(a, "worker"))),
    "best": ("write the full training config of a study's best trial", _flags("best", out="best.yaml"),
             lambda a: work(".study.storage:write_best_config", a.study, a.storage, a.out)),
    "data": ("corpus tools", _data_flags, None),
    "dashboard": ("browse a study in optuna-dashboard (with the trials' images)", _flags("dashboard", port=8080),
                  lambda a: work(".view.dashboard:serve_dashboard", a.study, a.storage, a.artifact_dir,
                                 host=a.host, port=a.port)),
    "mlflow-ui": ("open the MLflow UI on the store the runs used", _flags("mlflow-ui", port=5000),
                  lambda a: work(".view.dashboard:serve_mlflow_ui", a.tracking_uri, host=a.host, port=a.port)),
    "report": ("write a self-contained HTML report of a study", _flags("report", out="report.html"),
               lambda a: work(".view.report:write_report", a.study, a.storage, a.out)),
    "debug": ("print a readable summary of a run's health", lambda p: p.add_argument("run_dir"),
              lambda a: work(".watch.debug:debug_command", a.run_dir)),
}


def build_parser() -> Parser:
    parser = argparse.ArgumentParser(prog="smart_tuner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    shown = [name for name, (text, _, _) in COMMANDS.items() if text is not None]
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(shown) + "}")
    for name, (text, add_flags, run) in COMMANDS.items():
        command = sub.add_parser(name, help=text) if text is not None else sub.add_parser(name)
        add_flags(command)
        if run is not None:
            command.set_defaults(func=run)
    # help=SUPPRESS would still list a hidden command (as "==SUPPRESS=="); made without a help, it has no line.
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
