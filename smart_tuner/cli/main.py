"""Command line: ``python -m smart_tuner <command>`` (also installed as ``smart-tuner``).

This module parses and dispatches: each command turns its arguments into plain values and calls its work in its
package (``train.command``, ``tts.speak``, ``study.best``, ``view.dashboard``, ...), imported only when it runs,
so that ``report``, ``dashboard`` and ``best`` never load torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import interrupts
from ..errors import UserError
from ..study.options import StudyOptions
from ..watch.logs import setup_logging
from .flags import (
    DEFAULT_CONFIG,
    Parser,
    convert_flags,
    data_flags,
    export_flags,
    study_flags,
    synthesize_flags,
    train_flags,
    vocode_flags,
    work,
)


# ------------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """The config from --from-study, --config or the demo objective, the shorthands as --set items; then train."""
    from ..config import build_config, load_config_file, merge, parse_set_overrides

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
        from ..study.best import production_config

        config, stem = production_config(args.study, args.storage, sets), f"{args.study}-best"
    elif config_path:
        config, stem = load_config_file(config_path, sets), config_path.stem
    else:
        config, stem = build_config(merge({}, parse_set_overrides(sets))), "demo"
    return work(".train.command:train_command", config, stem, args.argv, run_dir=args.run_dir, resume=args.resume,
                nproc=args.nproc, max_restarts=args.max_restarts, tracking_uri=args.tracking_uri,
                progress=not args.no_progress)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..tts.synthesis import SynthesisError, read_lines

    lines = read_lines(args.text, args.text_file)
    if bool(args.study) == bool(args.checkpoint):
        raise SynthesisError("name one checkpoint: --checkpoint CKPT or --from-study NAME")
    best = not args.checkpoint  # --from-study: its best trial's checkpoint
    checkpoint = work(".study.best:best_checkpoint", args.study, args.storage) if best else Path(args.checkpoint)
    return work(".tts.speak:speak_to_files", checkpoint, lines, Path(args.out), origin=args.text_file or "--text",
                device=args.device, batch_size=args.batch_size, seed=args.seed, drop_missing=args.drop_missing,
                write_mel=args.mel, progress=not args.no_progress, vocoder=args.vocoder,
                vocoder_config=args.vocoder_config)


# name: (help, adds its flags, runs it); no help: a hidden command; no run: its sub-commands set theirs
COMMANDS: dict[str, tuple[str | None, Callable[[Parser], Any], Callable[[argparse.Namespace], int] | None]] = {
    "train": ("train Tacotron 2 from a config (or objective) file", train_flags, cmd_train),
    "synthesize": ("speech from text with a trained checkpoint (Griffin-Lim WAVs, alignment images, log-mels)",
                   synthesize_flags, cmd_synthesize),
    "vocode": ("log-mels (synthesize --mel) to speech through a HiFi-GAN generator", vocode_flags,
               lambda a: work(".tts.speak:vocode_command", [Path(m) for m in a.mels], Path(a.vocoder), Path(a.out),
                              vocoder_config=a.vocoder_config, device=a.device, batch_size=a.batch_size,
                              progress=not a.no_progress)),
    "export-mels": ("a corpus's audio and teacher-forced mels for HiFi-GAN fine-tuning", export_flags,
                    lambda a: work(".tts.export:export_mels", Path(a.checkpoint), Path(a.corpus), Path(a.out),
                                   ground_truth=a.ground_truth, device=a.device, batch_size=a.batch_size,
                                   seed=a.seed, cache_dir=a.cache_dir, progress=not a.no_progress)),
    "convert": ("import another project's checkpoint", convert_flags, None),
    "optimize": ("run an Optuna study: each trial trains with the adapters on", study_flags("optimize"),
                 lambda a: work(".study.optimize:optimize_command", StudyOptions.from_args(a, "optimize"),
                                progress=not a.no_progress)),
    "worker": (None, study_flags("worker"),  # started by optimize --workers / --gpus
               lambda a: work(".study.optimize:worker_command", StudyOptions.from_args(a, "worker"))),
    "best": ("write the full training config of a study's best trial", study_flags("best", out="best.yaml"),
             lambda a: work(".study.best:write_best_config", a.study, a.storage, a.out)),
    "data": ("corpus tools", data_flags, None),
    "dashboard": ("browse a study in optuna-dashboard (with the trials' images)", study_flags("dashboard", port=8080),
                  lambda a: work(".view.dashboard:serve_dashboard", a.study, a.storage, a.artifact_dir,
                                 host=a.host, port=a.port)),
    "mlflow-ui": ("open the MLflow UI on the store the runs used", study_flags("mlflow-ui", port=5000),
                  lambda a: work(".view.dashboard:serve_mlflow_ui", a.tracking_uri, host=a.host, port=a.port)),
    "report": ("write a self-contained HTML report of a study", study_flags("report", out="report.html"),
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
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def one_line(message: str) -> str:
    """An error message as the one line the command line promises (a library's text may hold several)."""
    return "; ".join(" ".join(line.split()) for line in message.splitlines() if line.strip())
