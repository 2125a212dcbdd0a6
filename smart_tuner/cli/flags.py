"""The command line's flags: one function per command adds its flags to its parser (argparse only, no torch);
:func:`work` calls a command's work in its package, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..seeds import MAX_SEED
from ..study.options import add_arguments, at_least

DEFAULT_CONFIG = Path("objectives/demo.yaml")
Parser = argparse.ArgumentParser
SEED = at_least(0, int, MAX_SEED)


def work(target: str, *arguments: Any, **keywords: Any) -> Any:
    """Call ``module:function`` of this package, imported only now: a command loads only what it uses."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module, "smart_tuner"), name)(*arguments, **keywords)


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def word_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` -> (low, high), checked as the demo corpus checks it."""
    from ..data.demo import check_words

    try:
        low, high = (int(part) for part in text.split("-"))
        return check_words((low, high))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "words" in str(exc) else
                                         f"{text!r}: give LOW-HIGH, e.g. 15-30") from None


def train_flags(train: Parser) -> None:
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


def synthesize_flags(speak: Parser) -> None:
    speak.add_argument("--checkpoint", metavar="CKPT", help="a smart_tuner checkpoint (converted NVIDIA ones too)")
    add_arguments(speak, "synthesize")  # --from-study NAME, --storage
    said = speak.add_mutually_exclusive_group(required=True)
    said.add_argument("--text", help="one sentence")
    said.add_argument("--text-file", metavar="FILE", help="UTF-8 text, one sentence per line")
    speak.add_argument("--out", required=True, metavar="DIR", help="where NNN.wav, NNN.png (and NNN.npy) go")
    speak.add_argument("--mel", action="store_true", help="also write each log-mel as NNN.npy (n_mels x frames)")
    speak.add_argument("--seed", type=SEED, default=0, help="prenet dropout stays on at inference: the seed fixes it")
    _device_flags(speak, "sentences decoded")
    speak.add_argument("--drop-missing", action="store_true",
                       help="drop characters the checkpoint's symbol table lacks instead of stopping")
    _vocoder_flags(speak, required=False)


def _device_flags(parser: Parser, together: str) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=at_least(1, int), default=8, help=f"{together} together")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _vocoder_flags(parser: Parser, required: bool) -> None:
    parser.add_argument("--vocoder", metavar="CKPT", required=required,
                        help="a HiFi-GAN generator checkpoint (jik876/hifi-gan's layout); without it, Griffin-Lim")
    parser.add_argument("--vocoder-config", metavar="JSON", help="its config (default: config.json beside it)")


def vocode_flags(vocode: Parser) -> None:
    vocode.add_argument("mels", nargs="+", metavar="MEL.npy", help="log-mels as synthesize --mel writes them")
    _vocoder_flags(vocode, required=True)
    vocode.add_argument("--out", required=True, metavar="DIR", help="where <stem>.wav go")
    _device_flags(vocode, "mels vocoded")


def export_flags(export: Parser) -> None:
    export.add_argument("--checkpoint", required=True, metavar="CKPT", help="the Tacotron 2 checkpoint")
    export.add_argument("--corpus", required=True, metavar="DIR", help="LJSpeech-format corpus (metadata.csv, wavs/)")
    export.add_argument("--out", required=True, metavar="DIR", help="where wavs/, mels/ and the file lists go")
    export.add_argument("--ground-truth", action="store_true", help="the features themselves, not teacher-forced mels")
    export.add_argument("--cache-dir", help="feature cache (default: the corpus's .smart_tuner_cache, as training)")
    export.add_argument("--seed", type=SEED, default=0, help="prenet dropout stays on: the seed fixes the mels")
    _device_flags(export, "utterances teacher-forced")


def convert_flags(convert: Parser) -> None:
    nvidia = convert.add_subparsers(dest="convert_command", required=True).add_parser(
        "nvidia", help="an NVIDIA/tacotron2 or DeepLearningExamples Tacotron 2 checkpoint")
    nvidia.add_argument("checkpoint", metavar="IN.pt")
    nvidia.add_argument("--out", required=True, metavar="OUT.pt")
    nvidia.add_argument("--force", action="store_true", help="replace OUT.pt if it exists (never IN.pt)")
    nvidia.set_defaults(func=lambda a: work(".tts.nvidia:convert_command", a.checkpoint, a.out, a.force))


def data_flags(data: Parser) -> None:
    sub = data.add_subparsers(dest="data_command", required=True)
    demo = sub.add_parser("demo", help="synthesize the demo corpus with eSpeak NG")
    demo.add_argument("--out", help="output directory (default data/demo-<lang>-<size>)")
    demo.add_argument("--lang", default="en", choices=["en", "ru"])
    demo.add_argument("--size", type=at_least(1, int), default=400, help="number of sentences")
    demo.add_argument("--seed", type=SEED, default=1234)
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


def study_flags(command: str, *, out: str | None = None, port: int | None = None) -> Callable[[Parser], None]:
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
