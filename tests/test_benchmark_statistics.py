"""The statistics the benchmarks' claims rest on (issue 21): how study_efficiency counts a study's steps until a
trial speaks, and objective_ranking's paired interval of new - old. A real Optuna study in SQLite and real
metrics files, as the trainer writes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from objective_ranking import difference_interval  # noqa: E402  (benchmarks/ is a folder of scripts)
from study_efficiency import ratio_interval, steps_until_good  # noqa: E402


def finished_trial(study: optuna.Study, folder: Path, evals: list[tuple[int, float, float, float]], pruned=False):
    """A trial whose run directory holds metrics.jsonl with (step, val_loss, diagonality, free-running) rows."""
    trial = study.ask()
    run_dir = folder / f"trial-{trial.number}"
    run_dir.mkdir()
    lines = [json.dumps({"step": s, "val_loss": v, "diagonality": d, "free_running_diagonality": f})
             for s, v, d, f in evals]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    trial.set_user_attr("run_dir", str(run_dir))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else None,
               values=None if pruned else 1.0)


def test_steps_are_counted_over_trials_until_the_first_evaluation_that_speaks(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    # aligned teacher-forced only, and a loss below the threshold: good for "teacher_forced", not for "speaks"
    finished_trial(study, tmp_path, [(50, 2.5, 0.3, 0.1), (100, 1.9, 0.9, 0.2), (150, 1.8, 0.95, 0.3)])
    # pruned at step 100 after speaking with a loss above the threshold: good for neither
    finished_trial(study, tmp_path, [(50, 2.5, 0.9, 0.9), (100, 2.1, 0.95, 0.95)], pruned=True)
    # speaks at step 125
    finished_trial(study, tmp_path, [(100, 2.2, 0.9, 0.9), (125, 1.95, 0.9, 0.85), (150, 1.9, 0.9, 0.9)])
    found, spent = steps_until_good(study, threshold=1.98, target=0.8)
    assert found == {"speaks": 150 + 100 + 125, "teacher_forced": 100}
    assert spent == 150 + 100 + 150


def test_a_study_where_no_trial_speaks_reports_none_and_all_its_steps(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    finished_trial(study, tmp_path, [(75, 1.5, 0.95, 0.79)])
    found, spent = steps_until_good(study, threshold=1.98, target=0.8)
    assert found == {"speaks": None, "teacher_forced": 75}
    assert spent == 75


def test_ratio_of_medians_and_its_interval():
    ratio = ratio_interval([150.0] * 8, [100, 150, 275, 300, 450, 700, 1175, 1475])
    assert ratio["ratio"] == pytest.approx(150 / 375)
    assert ratio["low"] < ratio["ratio"] < ratio["high"]
    assert ratio["high"] <= 1.0  # random search's median never resamples below 150


def test_difference_interval_is_paired():
    truth = [float(i) for i in range(10)]
    point, low, high = difference_interval(truth[::-1], truth, truth)  # old ranks backwards, new exactly
    assert (point, low, high) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    noisy = [0.0, 2.0, 1.0, 3.0, 5.0, 4.0, 6.0, 8.0, 7.0, 9.0]
    point, low, high = difference_interval(noisy, noisy, truth)  # the same value: no difference in any resample
    assert (point, low, high) == (0.0, 0.0, 0.0)
    point, low, high = difference_interval(noisy, truth, truth)
    assert 0 < point < 0.1 and low == 0.0 and high > 0
