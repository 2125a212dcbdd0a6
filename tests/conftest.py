"""Shared fixtures: small real corpora (eSpeak NG speech through the real data path) and tiny configs; and
:func:`require`, the one rule for tests that need something a machine may lack (a mount, PostgreSQL, Chromium)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
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
        "data": {"corpus": str(corpus), "val_size": 4, "val_infer": 2, "cache_dir": str(tmp_path / "cache")},
        "model": dict(TINY_MODEL),
        "train": {"batch_size": 4, "max_steps": 8, "eval_every": 4, "seed": 3, "num_threads": 2},
        "tracking": {"enabled": False},  # tests that track turn it on
    }
    return build_config(merge(base, sections))
