"""``data.free_running_sentences: 0`` (no free-running evaluation; ``data.val_infer`` until 2026-12-08): the
free-running metrics are not measured, so they are NaN, and every reader leaves them out. Until 2026-12-07 they
were 0.0, and a real run then read "free-running alignment failed": the learning-rate adapter's lag rule raised the
rate, the guided-attention adapter on ``metric: worse`` boosted, and the objective charged the full alignment and
stop penalties."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml

from smart_tuner.config import ConfigError, build_config
from smart_tuner.hooks import Hook
from smart_tuner.run_logs import read_metrics
from smart_tuner.study.objective import OptunaReporter
from smart_tuner.study.objective_file import Score, SearchSpaceError, load_objective
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
    config = tiny_config(corpus_en, tmp_path, data={"free_running_sentences": 0}, adapters=adapters,
                         train={"max_steps": 8, "eval_every": 4})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="no-free-running")
    trial = study.ask()
    formula = Score()  # the default: alignment worse, stop_penalty 0.5
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
        expected = stats.val_losses["postnet"] + formula.alignment_penalty * (1.0 - stats.diagonality)
        assert reported[stats.step] == pytest.approx(expected)


@pytest.mark.parametrize("adapter", ["ga", "collapse"])
def test_an_adapter_on_free_running_alignment_without_free_running_sentences_is_refused(adapter):
    with pytest.raises(ConfigError, match=rf"^adapters\.{adapter}\.metric: free_running reads the free-running "
                                          r"diagonality, which data\.free_running_sentences: 0 does "
                                          r"not measure"):
        build_config({"data": {"free_running_sentences": 0},
                      "adapters": {adapter: {"enabled": True, "metric": "free_running"}}})
    # What the message offers works: either choice is accepted.
    build_config({"data": {"free_running_sentences": 1},
                  "adapters": {adapter: {"enabled": True, "metric": "free_running"}}})
    build_config({"data": {"free_running_sentences": 0},
                  "adapters": {adapter: {"enabled": True, "metric": "teacher_forced"}}})
    build_config({"data": {"free_running_sentences": 0},
                  "adapters": {adapter: {"enabled": False, "metric": "free_running"}}})


def test_an_objective_on_free_running_alignment_without_free_running_sentences_is_refused(tmp_path):
    def objective(free_running_sentences, alignment):
        path = tmp_path / f"o-{free_running_sentences}-{alignment}.yaml"
        path.write_text(yaml.safe_dump({"config": {"data": {"free_running_sentences": free_running_sentences}},
                                        "search_space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
                                        "score": {"alignment": alignment}}))
        return load_objective(path)

    with pytest.raises(SearchSpaceError, match="score.alignment: free_running") as refused:
        objective(0, "free_running")
    assert "data.free_running_sentences: 0 does not measure" in str(refused.value)
    assert objective(0, "teacher_forced").score.alignment == "teacher_forced"
    assert objective(2, "free_running").score.alignment == "free_running"
