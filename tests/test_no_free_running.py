"""``data.val_infer: 0`` (no free-running evaluation): the free-running metrics are not measured, so they are NaN,
and every reader leaves them out. Until 2026-12-07 they were 0.0, and a real run then read "free-running alignment
failed": the learning-rate adapter's lag rule raised the rate, the guided-attention adapter on ``metric: worse``
boosted, and the objective charged the full alignment and stop penalties."""

from __future__ import annotations

import math

import optuna
import pytest

from smart_tuner.hooks import Hook
from smart_tuner.run_logs import read_metrics
from smart_tuner.study.objective import OptunaReporter
from smart_tuner.study.objective_file import ObjectiveFormula
from smart_tuner.train.runner import run_training

from .conftest import tiny_config

FREE_RUNNING = ("free_running_diagonality", "free_running_focus", "free_running_monotonicity",
                "free_running_coverage", "free_running_stop_rate")


class Recorder(Hook):
    name = "recorder"

    def __init__(self):
        self.evals, self.events = [], []

    def on_eval(self, stats):
        self.evals.append(stats)
        return []

    def on_event(self, event):
        self.events.append(event)


def test_without_free_running_sentences_adapters_and_objective_read_teacher_forced_alone(corpus_en, tmp_path):
    adapters = {
        # The lag rule acts from the first evaluation on any gap: a free-running 0.0 would raise the rate at once.
        "lr": {"plateau_from_diagonality": 0.0, "lag_gap": 0.01, "lag_patience": 1, "weight_change_low": 0.0},
        # Every diagonality is "low": each evaluation boosts, and the event records the diagonality it read.
        "ga": {"metric": "worse", "critical": 0.0, "low": 1.0, "high": 1.0},
        "collapse": {"enabled": False},
    }
    config = tiny_config(corpus_en, tmp_path, data={"val_infer": 0}, adapters=adapters,
                         train={"max_steps": 8, "eval_every": 4})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="no-free-running")
    trial = study.ask()
    formula = ObjectiveFormula()  # the default: alignment worse, stop_penalty 0.5
    recorder = Recorder()
    result = run_training(config, tmp_path / "run", extra_hooks=[OptunaReporter(trial, formula, "postnet"),
                                                                  recorder], progress=False)
    assert result.status == "completed"
    assert [s.step for s in recorder.evals] == [4, 8]

    # Not measured: NaN in the statistics and in metrics.jsonl, not 0.0.
    for stats in recorder.evals:
        assert all(math.isnan(getattr(stats, name)) for name in FREE_RUNNING)
        assert 0.0 < stats.diagonality < 1.0
    logged = read_metrics(tmp_path / "run")
    assert all(math.isnan(m[name]) for m in logged for name in FREE_RUNNING)

    # The learning rate: no free-running lag was seen, so the rate was never raised.
    lr_events = [e for e in recorder.events if e.control == "lr"]
    assert not [e for e in lr_events if "free-running" in e.reason], lr_events
    assert all(s.lr == pytest.approx(config.train.lr) for s in recorder.evals)

    # Guided attention on `worse`: the worse of teacher-forced and "not measured" is teacher-forced.
    ga_events = [e for e in recorder.events if e.source == "ga"]
    assert [e.step for e in ga_events] == [4, 8]
    for event, stats in zip(ga_events, recorder.evals):
        assert event.trigger == pytest.approx(stats.diagonality)
        assert f"low diagonality {stats.diagonality:.3f}" in event.reason

    # The objective: the output loss and the teacher-forced alignment penalty, no stop penalty.
    reported = study.trials[0].intermediate_values
    assert sorted(reported) == [4, 8]
    for stats in recorder.evals:
        expected = stats.val_losses["postnet"] + formula.ga_penalty * (1.0 - stats.diagonality)
        assert reported[stats.step] == pytest.approx(expected)
