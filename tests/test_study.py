"""The study end to end on a real SQLite storage: trials, reporting, pruning, failures, best config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from smart_tuner import cli
from smart_tuner.config import ConfigError
from smart_tuner.study.best import best_config
from smart_tuner.study.objective_file import SAMPLERS, load_objective, reference_params
from smart_tuner.study.optimize import open_study, optimize
from smart_tuner.study.options import StudyOptions
from smart_tuner.study.storage import open_storage, storage_url

from .conftest import TINY_MODEL


def objective_file(tmp_path, corpus, space=None, pruning=None, train=None, extra=None, name="tiny"):
    config = {"preset": "demo", "model": TINY_MODEL,
              "data": {"corpus": str(corpus), "val_size": 4, "free_running_sentences": 2,
                       "cache_dir": str(tmp_path / "cache")},
              "train": {"batch_size": 4, "max_steps": 20, "eval_every": 10, "num_threads": 2, **(train or {})},
              "tracking": {"enabled": False},  # MLflow is tested in test_tracking_study.py
              **(extra or {})}
    data = {"config": config,
            "search_space": space if space is not None else {
                "train.lr": {"type": "float", "low": 5e-4, "high": 5e-3, "log": True},
                "loss.ga_weight": {"type": "float", "low": 1.0, "high": 5.0}},
            "score": {"alignment_penalty": 1.0},
            "pruning": pruning or {"pruner": "median", "warmup_steps": 10, "startup_trials": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def options(tmp_path, path, **kw):
    return StudyOptions(objective=path, study=kw.pop("study", "s"), storage=f"sqlite:///{tmp_path}/s.db",
                        runs_dir=tmp_path / "runs", seed=0, **kw)


def test_trials_report_intermediate_values_and_the_first_is_the_reference(corpus_en, tmp_path):
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 8, "eval_every": 4})
    study = optimize(options(tmp_path, path, trials=3), progress=False)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == [4, 8] for t in trials)
    assert trials[0].params == pytest.approx(reference_params(load_objective(path))[0])
    assert trials[0].user_attrs["reference"] is True
    for t in trials:
        assert 0 <= t.user_attrs["diagonality"] <= 1 and Path(t.user_attrs["run_dir"]).is_dir()
        assert t.value == pytest.approx(t.intermediate_values[8])
    # Re-running continues the same study.
    study = optimize(options(tmp_path, path, trials=2), progress=False)
    assert len(study.get_trials()) == 5
    assert not study.get_trials(states=(TrialState.WAITING,))  # the reference is enqueued once


def test_a_deliberately_bad_range_gets_trials_pruned(corpus_en, tmp_path):
    # Learning rates of 1 and 2 (adapters off): the weights jump around, so the median pruner stops those trials
    # after the warm-up, compared with the reference (3e-3, the first trial).
    path = objective_file(tmp_path, corpus_en, train={"max_steps": 40, "lr": 3e-3},
                          space={"train.lr": {"type": "categorical", "choices": [3e-3, 1.0, 2.0]}},
                          pruning={"pruner": "median", "warmup_steps": 10, "startup_trials": 1},
                          extra={"adapters": {"lr": {"enabled": False}, "ga": {"enabled": False}}})
    study = optimize(options(tmp_path, path, trials=5, sampler="random"), progress=False)
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE and trials[0].params["train.lr"] == pytest.approx(3e-3)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "no trial of the bad range was pruned"
    for t in pruned:
        assert t.params["train.lr"] >= 1.0
        assert min(t.intermediate_values) >= 10  # never before the warm-up
        assert max(t.intermediate_values) < 40  # stopped early: its run ended at the pruned step
        run_dir = Path(t.user_attrs["run_dir"])  # a pruned trial keeps what it logged
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()


def test_failed_runs_and_exceptions_fail_their_trial_not_the_study(corpus_en, tmp_path):
    space = {"faults.nan_loss_at": {"type": "categorical", "choices": [[3, 4, 5, 6, 7, 8]]},
             "data.corpus": {"type": "categorical", "choices": [str(corpus_en), str(tmp_path / "missing")]}}
    path = objective_file(tmp_path, corpus_en, space=space, extra={"adapters": {"max_rollbacks": 0}})
    study = optimize(options(tmp_path, path, trials=4, sampler="random", enqueue_reference=False), progress=False)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    rollback_failures = [t for t in trials if "rollback budget spent" in t.user_attrs.get("failure", "")]
    crashes = [t for t in trials if "CorpusError" in t.user_attrs.get("traceback", "")]
    assert rollback_failures and crashes and len(rollback_failures) + len(crashes) == 4
    assert all(t.user_attrs["status"] == "failed" for t in rollback_failures)


def test_best_then_train_then_resume(corpus_en, tmp_path, cli_main):
    path = objective_file(tmp_path, corpus_en, pruning={"pruner": "none"}, train={"max_steps": 6, "eval_every": 3})
    study = optimize(options(tmp_path, path, trials=2), progress=False)
    config, trial = best_config(study)
    assert trial.value == min(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))
    storage = f"sqlite:///{tmp_path}/s.db"
    out = tmp_path / "best.yaml"
    result = cli_main("best", "--study", "s", "--storage", storage, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = yaml.safe_load(out.read_text())
    assert written["train"]["lr"] == pytest.approx(trial.params["train.lr"])
    assert written["loss"]["ga_weight"] == pytest.approx(trial.params["loss.ga_weight"])
    assert written["adapters"]["lr"]["patience"] == config.adapters.lr.patience
    first = cli_main("train", "--config", out, "--max-steps", 4, "--run-dir", tmp_path / "prod",
                     "--no-progress", cwd=tmp_path)
    assert first.returncode == 0 and "completed at step 4" in first.stdout, first.stderr
    again = cli_main("train", "--config", out, "--max-steps", 8, "--run-dir", tmp_path / "prod",
                     "--resume", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and "completed at step 8" in again.stdout, again.stderr
    direct = cli_main("train", "--from-study", "s", "--storage", storage, "--max-steps", 4,
                      "--run-dir", tmp_path / "direct", "--no-progress", cwd=tmp_path)
    assert direct.returncode == 0 and "completed at step 4" in direct.stdout, direct.stderr
    missing = cli_main("best", "--study", "nope", "--storage", storage, cwd=tmp_path)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("dimension,message", [
    ({"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "search_space.train.lrr"),
    ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}, "low (0.01) must be < high (0.001)"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "search_space.train.lr"),
    ({"train.batch_size": {"type": "categorical", "choices": []}}, "search_space.train.batch_size"),
])
def test_malformed_search_spaces_are_clear_cli_errors(corpus_en, tmp_path, dimension, message, cli_main):
    path = objective_file(tmp_path, corpus_en, space=dimension)
    result = cli_main("optimize", "--objective", path, "--trials", 1, "--storage", f"sqlite:///{tmp_path}/s.db",
                      "--no-progress", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(path) in error[0] and message in error[0]
    assert not (tmp_path / "runs").exists()


def test_unknown_sampler_or_storage_is_a_clear_error(corpus_en, tmp_path, capsys):
    path = objective_file(tmp_path, corpus_en)
    storage = f"sqlite:///{tmp_path}/s.db"
    # The command line offers the sampler names there are, and refuses any other with exit status 2.
    with pytest.raises(SystemExit) as exited:
        cli.main(["optimize", "--objective", str(path), "--storage", storage, "--sampler", "bayes", "--no-progress"])
    assert exited.value.code == 2
    assert "invalid choice: 'bayes'" in capsys.readouterr().err
    # Through the API it is a config error naming the choices, before any database or run directory exists.
    with pytest.raises(ConfigError, match=f"--sampler 'bayes': choose one of {', '.join(SAMPLERS)}"):
        optimize(options(tmp_path, path, sampler="bayes"), progress=False)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()
    # A storage that cannot be opened (a real connection attempt to a closed port) is one error line, exit 2, and
    # the password stays out of it.
    code = cli.main(["optimize", "--objective", str(path), "--storage", "postgresql://u:secret@127.0.0.1:1/x",
                     "--trials", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "postgresql://u:***@127.0.0.1:1/x: cannot open it" in line and "secret" not in err
    assert not (tmp_path / "runs").exists()


def test_the_default_storage_directory_is_made_only_when_a_database_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert storage_url("s", None) == "sqlite:///studies/s.db"
    assert cli.main(["best", "--study", "s"]) == 2  # reading a study that is not there creates nothing
    assert "no study storage at studies/s.db" in capsys.readouterr().err
    assert not (tmp_path / "studies").exists()
    open_storage(storage_url("s", None)).engine.dispose()  # opening it for writing creates the file and its folder
    assert (tmp_path / "studies" / "s.db").is_file()


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_study_opened_again_goes_on_instead_of_replaying_its_first_suggestions(corpus_en, tmp_path, sampler):
    path = objective_file(tmp_path, corpus_en)
    spec = load_objective(path)

    def first_params(study_name):
        study = open_study(options(tmp_path, path, study=study_name, sampler=sampler, enqueue_reference=False), spec)
        trial = study.ask()
        params = (trial.suggest_float("train.lr", 5e-4, 5e-3, log=True), trial.suggest_float("loss.ga_weight", 1, 5))
        study.tell(trial, 1.0)
        return params

    opened = [first_params("again") for _ in range(3)]  # three processes, one trial each, one seed
    assert len(set(opened)) == 3
    # Still reproducible: the same seed on another study in the same state suggests the same values.
    assert [first_params("twin") for _ in range(3)] == opened
