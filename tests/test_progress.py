"""What a person watching a study sees (issue 14, item 10): the running trial's step, loss and diagonality under
the trial bar, in this process and from worker processes, and a named objective in the dashboard. What a person
watching a run sees: the training bar, which only displays the counts of train/since_eval.py."""

from __future__ import annotations

import math

import optuna

from smart_tuner.hooks import EvalStats, StepStats
from smart_tuner.study.objective import ProgressReporter
from smart_tuner.study.optimize import describe_progress, optimize
from smart_tuner.train.progress import Progress
from smart_tuner.train.since_eval import SinceEval

from .stats import eval_stats, step_stats
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


def test_the_steps_since_an_evaluation_add_up_to_its_train_loss_and_throughput():
    since = SinceEval()
    assert math.isnan(since.mean_loss()) and math.isnan(since.frames_per_second())
    assert math.isnan(since.steps_per_second())
    since.add(step_stats(1, loss=2.0, frames=300), wall=0.5)
    since.add(step_stats(2, loss=float("nan"), frames=100), wall=0.5)  # counted, but a non-finite loss is no mean's
    since.add(step_stats(3, loss=1.0, frames=200), wall=1.0)
    assert since.mean_loss() == 1.5
    assert since.frames_per_second() == 300 and since.steps_per_second() == 1.5


def test_the_training_bar_shows_the_counts_it_is_given_and_counts_nothing():
    bar = Progress(total=10, initial=0, enabled=False)
    since = SinceEval()
    since.add(step_stats(1, loss=1.25, frames=400), wall=2.0)
    bar.update()
    bar.show(step_stats(1, loss=1.25), None, 1e-3, "", since)
    assert bar.bar.postfix == "loss=1.250, diag=-, lr=1.00e-03, mel/s=200"
    bar.show(step_stats(1, loss=1.25), None, 1e-3, "", since)
    assert since.steps == 1 and since.frames == 400  # showing again counts nothing
    # Just after an evaluation nothing is counted yet: the evaluation's own throughput is shown.
    evaluation = eval_stats(1, diagonality=0.75, frames_per_second=123.0)
    bar.show(step_stats(1, loss=1.25), evaluation, 1e-3, "1:lr_adapter lr", SinceEval())
    assert bar.bar.postfix == "loss=1.250, diag=0.75, lr=1.00e-03, mel/s=123, event=1:lr_adapter lr"
    bar.close()
