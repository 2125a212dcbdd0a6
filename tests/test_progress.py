"""What a person watching a study sees (issue 14, item 10): the running trial's step, loss and diagonality under
the trial bar, in this process and from worker processes, and a named objective in the dashboard."""

from __future__ import annotations

import optuna

from smart_tuner.hooks import EvalStats, StepStats
from smart_tuner.study.objective import ProgressReporter
from smart_tuner.study.workers import describe_progress, optimize

from .test_study import objective_file, options


def test_a_trial_in_this_process_shows_its_step_loss_and_diagonality_while_it_runs(corpus_en, tmp_path, capsys):
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 24, "eval_every": 8})
    study = optimize(options(tmp_path, path, trials=1), progress=True)
    shown = capsys.readouterr().err
    assert "trial 0: step " in shown and "/24, loss " in shown
    steps = [int(part.split("/")[0]) for part in shown.split("trial 0: step ")[1:]]
    assert steps == sorted(steps) and steps[-1] > steps[0]  # it moved during the trial
    assert any(c.isdigit() for c in shown.split("diagonality ")[-1][:4])  # a diagonality once evaluated
    assert "diagonality" in study.metric_names[0]  # the dashboard names the objective by its formula


def test_a_worker_publishes_its_progress_for_optimize_to_show():
    """In a worker process the reporter writes the trial's ``progress`` attribute (what optimize reads), at most
    every ``interval`` seconds but always at an evaluation."""
    study = optuna.create_study()
    trial = study.ask()
    reporter = ProgressReporter(trial, max_steps=600, interval=3600)
    step = StepStats(step=120, epoch=0, loss=1.2345, losses={}, grad_norm=1.0, lr=1e-3, loss_weights={},
                     finite=True, step_time=0.1)
    reporter.on_step(step)
    assert study.trials[0].user_attrs["progress"]["step"] == 120  # the first one is published
    reporter.on_step(StepStats(step=121, epoch=0, loss=1.0, losses={}, grad_norm=1.0, lr=1e-3, loss_weights={},
                               finite=True, step_time=0.1))
    assert study.trials[0].user_attrs["progress"]["step"] == 120  # within the interval: not yet
    evaluation = EvalStats(step=125, val_loss=1.0, val_losses={}, diagonality=0.456, focus=0, monotonicity=0,
                           coverage=0, free_running_diagonality=0, free_running_focus=0, free_running_monotonicity=0,
                           free_running_coverage=0,
                           free_running_stop_rate=0, lr=1e-3, loss_weights={}, train_loss=1.0, elapsed=1.0)
    reporter.on_eval(evaluation)
    progress = study.trials[0].user_attrs["progress"]
    assert describe_progress(progress) == "trial 0: step 121/600, loss 1.000, diagonality 0.46"
    assert describe_progress({"trial": 3, "step": 0, "max_steps": 10, "loss": float("nan")}) == \
        "trial 3: step 0/10, loss -, diagonality -"
