"""Several trials on one GPU (``--trials-per-gpu``): the worker slots, the divided CPU threads, and a real run."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from smart_tuner.cli import main
from smart_tuner.study.optimize import optimize

from .test_study import objective_file, options


def test_worker_slots_repeat_each_gpu(tmp_path):
    packed = options(tmp_path, "o.yaml", gpus="0, 1", trials_per_gpu=3)
    assert packed.worker_slots == ["0", "0", "0", "1", "1", "1"] and packed.worker_count == 6
    assert options(tmp_path, "o.yaml", workers=2).worker_slots == [None, None]
    assert options(tmp_path, "o.yaml", gpus="0").worker_slots == ["0"]


@pytest.mark.parametrize("args", [["--trials-per-gpu", "0", "--gpus", "0"], ["--trials-per-gpu", "2"]])
def test_a_bad_trials_per_gpu_is_one_error_line(tmp_path, capsys, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["optimize", "--trials", "1", *args])
    except SystemExit as exc:  # argparse's own check of the minimum
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--trials-per-gpu" in err[-1] and ("--gpus" in err[-1] or "below the minimum of 1" in err[-1])
    assert not (tmp_path / "studies").exists()  # refused before any database is made


@pytest.mark.slow
def test_two_trials_share_one_gpu_slot_and_the_cores(corpus_en, tmp_path):
    """On a CPU machine the GPU id only sets CUDA_VISIBLE_DEVICES, so this runs the real worker processes: two on
    "GPU 0", sharing the cores, side by side."""
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"},
                          train={"max_steps": 16, "eval_every": 8, "num_threads": 0})
    study = optimize(options(tmp_path, path, trials=2, gpus="0", trials_per_gpu=2), progress=False)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    # No fixed thread count: each worker takes its share of the cores (tests/test_cores.py).
    assert all(t.user_attrs["config"]["train"]["num_threads"] == 0 for t in complete)
    a, b = complete
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete  # side by side
