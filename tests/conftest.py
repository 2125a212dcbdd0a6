"""Shared fixtures: small real corpora (eSpeak NG speech through the real data path), tiny configs and tiny trained
checkpoints; the command line in this process (:func:`cli_main`) or, where a process is the point, in its own
(:func:`cli_process`); and :func:`require`, the one rule for tests that need something a machine may lack (a mount,
PostgreSQL, Chromium)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two processes of two threads would oversubscribe these 2-core machines; tests run one at a time.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from smart_tuner.config import build_config, merge
from smart_tuner.data.demo import build_demo_corpus


def in_ci() -> bool:
    """Whether this is CI (``.ci/run`` exports ``CI=true``), where every such test must run."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(condition: bool, what: str) -> None:
    """Skip the test when ``condition`` is false, except under CI: there a missing piece fails it, so that a
    test never hides what it claims behind a skip on the one machine that must run it."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"needed under CI (CI={os.environ.get('CI')!r}): {what}", pytrace=False)
    pytest.skip(what)


@contextmanager
def read_only_view(source: Path, target: Path):
    """``source`` bind-mounted read-only at ``target`` (made here) for the block: writes there fail with EROFS,
    even as root. Needs root: skipped elsewhere, a failure under CI."""
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], capture_output=True)
    require(mounted.returncode == 0, f"cannot bind-mount read-only here (needs root): "
            f"{mounted.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


TINY_MODEL = {
    "embedding_dim": 16, "encoder_channels": 16, "encoder_lstm_dim": 8, "attention_rnn_dim": 32,
    "decoder_rnn_dim": 32, "attention_dim": 16, "location_filters": 4, "location_kernel": 7,
    "prenet_dims": [16, 16], "postnet_channels": 16, "r": 4, "max_decoder_steps": 60,
}


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Nothing a test runs may write to the repository's mlflow/: runs that track go to a session store."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def corpus_en(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("corpus") / "en", lang="en", size=24)


@pytest.fixture(scope="session")
def corpus_ru(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("corpus") / "ru", lang="ru", size=16)


def tiny_config(corpus, tmp_path, **sections):
    """A config that trains in well under a second per step: tiny model, small batches, frequent evaluation."""
    base = {
        "preset": "demo",
        "data": {"corpus": str(corpus), "val_size": 4, "free_running_sentences": 2,
                 "cache_dir": str(tmp_path / "cache")},
        "model": dict(TINY_MODEL),
        "train": {"batch_size": 4, "max_steps": 8, "eval_every": 4, "seed": 3, "num_threads": 2},
        "tracking": {"enabled": False},  # tests that track turn it on
    }
    return build_config(merge(base, sections))


# ------------------------------------------------------------------------------------ tiny trained checkpoints
@dataclass(frozen=True)
class Trained:
    """A finished tiny training run: its config, its run directory and its ``last.pt``. Shared by the session:
    a test that changes anything in the run directory copies it to its own ``tmp_path`` first."""

    config: object
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def _train(config, run_dir: Path) -> Trained:
    from smart_tuner.train.trainer import Trainer

    Trainer(config, run_dir, progress=False).fit()
    return Trained(config, run_dir)


@pytest.fixture(scope="session")
def trained_en(corpus_en, tmp_path_factory) -> Trained:
    """The tiny model trained 4 steps (one evaluation) on the English demo corpus, on characters. Its stop gate
    never fires (threshold 1), so every sentence decodes several steps: an untrained gate may stop at the first
    step, where the prenet sees only the zero "go" frame and dropout (the seed) cannot show."""
    tmp = tmp_path_factory.mktemp("trained_en")
    return _train(tiny_config(corpus_en, tmp, train={"max_steps": 4, "eval_every": 4}, model={"gate_threshold": 1.0}),
                  tmp / "run")


@pytest.fixture(scope="session")
def trained_ru_phonemes(corpus_ru, tmp_path_factory) -> Trained:
    """The tiny model trained 2 steps (one evaluation) on the Russian demo corpus read as eSpeak NG phonemes."""
    tmp = tmp_path_factory.mktemp("trained_ru")
    return _train(tiny_config(corpus_ru, tmp, train={"max_steps": 2, "eval_every": 2},
                              data={"text": "phonemes", "phoneme_language": "ru"}), tmp / "run")


# ------------------------------------------------------------------------------------ the command line
def cli_process(*args, cwd, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m smart_tuner ARGS`` as a process of its own, for the tests where a process is the point (the
    list is in docs/tests.md); ``env``: variables set on top of this process's environment."""
    return subprocess.run([sys.executable, "-m", "smart_tuner", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})


@contextmanager
def _output_captured(into: dict[str, str]):
    """What the block writes to stdout and stderr, as a child's pipes would hold it: Python's streams and the file
    descriptors (what C libraries write) alike. ``into`` gets ``"out"`` and ``"err"`` when the block ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_streams = sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved_fds = [os.dup(1), os.dup(2)]
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                                       errors="backslashreplace", write_through=True) for fd in (1, 2))
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            for name, file in (("out", out), ("err", err)):
                file.seek(0)
                into[name] = file.read().decode("utf-8", errors="replace")


def _python_default_warning_filters() -> None:
    """The warning filters a fresh ``python`` has (a release build, no -W): shown once per place, deprecations
    only from ``__main__``."""
    warnings.resetwarnings()
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__", append=True)
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category, append=True)


def _main_in_process(*args, cwd=None, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    import torch

    from smart_tuner import cli
    from smart_tuner.watch.logs import LIBRARIES

    argv = [str(a) for a in args]
    saved_cwd, saved_env, threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    root = logging.getLogger()
    saved_root = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in [*root.manager.loggerDict, *LIBRARIES]}
    output: dict[str, str] = {}
    try:
        for name, value in (env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if cwd is not None:
            os.chdir(cwd)
        with _output_captured(output), warnings.catch_warnings(record=True) as caught:
            _python_default_warning_filters()
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's errors and --help, as the interpreter would end
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:  # what a process would print before it exits 1
                traceback.print_exc()
                code = 1
            for w in caught:
                sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    finally:
        os.chdir(saved_cwd)
        for name in set(os.environ) - set(saved_env):
            del os.environ[name]
        for name, value in saved_env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(argv, code, output["out"], output["err"])


@pytest.fixture(scope="session")
def cli_main():
    """``smart_tuner.cli.main`` in this process, as ``python -m smart_tuner`` would run it, without starting an
    interpreter (and importing torch) each time: ``cli_main(*args, cwd=None, env=None)`` returns a
    ``CompletedProcess`` with its exit status and what it wrote to stdout and stderr (file descriptors included;
    argparse's exits and an uncaught exception's traceback as the interpreter would end; the warnings a fresh
    interpreter would show). It runs in ``cwd`` with ``env`` set on top of the environment (None removes a
    variable); the working directory, the environment, the logging set-up and torch's thread count are restored
    afterwards. Session-scoped so that module- and session-scoped fixtures may call it too."""
    return _main_in_process
