"""A study and a production run as MLflow sees them: `optimize` on the demo objective (short budget, tiny model),
then `train --from-study` and its resume, read back from a real store with MlflowClient."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from smart_tuner import cli
from smart_tuner.watch.tracking import MLFLOW_RUN_FILE

from .conftest import TINY_MODEL

OBJECTIVE = Path(__file__).resolve().parents[1] / "objectives" / "demo.yaml"


def short_budget(corpus: Path, cache: Path) -> list[str]:
    sets = [f"data.corpus={corpus}", "data.val_size=4", "data.free_running_sentences=2", f"data.cache_dir={cache}",
            "train.max_steps=20", "train.eval_every=10", "train.num_threads=2"]
    sets += [f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "r"]  # r is searched
    return [item for s in sets for item in ("--set", s)]


@pytest.fixture(scope="module")
def study(corpus_en, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root}/mlflow.db"
    storage = f"sqlite:///{root}/study.db"
    code = cli.main(["optimize", "--trials", "4", "--objective", str(OBJECTIVE), "--study", "tracked",
                     "--storage", storage, "--tracking-uri", uri, "--artifact-dir", str(root / "artifacts"),
                     "--runs-dir", str(root / "runs"), "--seed", "1", "--no-progress",
                     *short_budget(corpus_en, root / "cache")])
    assert code == 0
    return {"root": root, "uri": uri, "storage": storage, "client": MlflowClient(tracking_uri=uri),
            "optuna": optuna.load_study(study_name="tracked", storage=storage)}


def names(client, run_id, path):
    return sorted(Path(f.path).name for f in client.list_artifacts(run_id, path))


def test_optimize_logs_a_parent_run_and_one_nested_run_per_trial(study):
    client = study["client"]
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("smart_tuner.role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study"] == "tracked" and parent.data.tags["objective"] == str(OBJECTIVE)
    assert parent.data.tags["storage"] == study["storage"]
    assert parent.data.metrics["trials"] == 4 and parent.data.metrics["trials_completed"] == 4
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1", "2", "3"]
    by_number = {t.number: t for t in study["optuna"].trials}
    for run in trials:
        trial = by_number[int(run.data.tags["trial"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "completed"
        params = run.data.params
        for key, value in trial.params.items():  # every sampled hyperparameter and adapter coefficient
            assert params[f"trial_params.{key}"] == str(value)
        assert float(params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert float(params["adapters.lr.factor"]) == pytest.approx(trial.params["adapters.lr.factor"])
        assert "alerts.telegram.token" not in params
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, 21))
        for key in ("grad_norm", "lr", "ga_weight"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 20, key
        objective = client.get_metric_history(run.info.run_id, "objective")
        assert sorted(m.step for m in objective) == [10, 20]
        assert sorted(objective, key=lambda m: m.step)[-1].value == pytest.approx(trial.value)
        for key in ("val_loss", "diagonality", "focus", "monotonicity", "coverage"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
        assert names(client, run.info.run_id, "logs") == ["events.jsonl", "metrics.jsonl"]
        assert names(client, run.info.run_id, "previews") == ["step_000010", "step_000020"]
        assert names(client, run.info.run_id, "previews/step_000020") == ["alignment.png", "audio.wav", "mel.png"]
    best = study["optuna"].best_trial
    assert names(client, best.user_attrs["mlflow_run_id"], "checkpoints") == ["last.pt"]
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)


def test_trials_upload_their_previews_to_the_optuna_artifact_store(study):
    for trial in study["optuna"].trials:
        metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study["optuna"]._storage)
        files = sorted(m.filename for m in metas)
        assert files == ["alignment_step000010.png", "alignment_step000020.png", "audio_step000020.wav",
                         "mel_step000020.png"]
        for meta in metas:
            assert (study["root"] / "artifacts" / meta.artifact_id).is_file()


def test_train_from_study_is_a_run_of_its_own_and_resume_continues_it(study):
    client, root = study["client"], study["root"]
    run_dir = root / "production"
    common = ["--storage", study["storage"], "--tracking-uri", study["uri"], "--run-dir", str(run_dir),
              "--no-progress"]
    assert cli.main(["train", "--from-study", "tracked", "--max-steps", "10", *common]) == 0
    run_id = (run_dir / MLFLOW_RUN_FILE).read_text().strip()
    run = client.get_run(run_id)
    best = study["optuna"].best_trial
    assert run.data.tags["smart_tuner.role"] == "production"
    assert run.data.tags["study"] == "tracked" and run.data.tags["trial"] == str(best.number)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.info.status == "FINISHED"
    assert names(client, run_id, "checkpoints") == ["best.pt"]
    assert cli.main(["train", "--from-study", "tracked", "--max-steps", "20", "--resume", *common]) == 0
    assert (run_dir / MLFLOW_RUN_FILE).read_text().strip() == run_id  # the same MLflow run, continued
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 21))
    assert client.get_run(run_id).data.tags["resumed_at_step"] == "10"


def test_an_unusable_tracking_store_is_a_clear_error_before_any_trial(corpus_en, tmp_path, capsys):
    (tmp_path / "not-a-dir").write_text("x")
    code = cli.main(["optimize", "--trials", "1", "--objective", str(OBJECTIVE), "--study", "bad",
                     "--storage", f"sqlite:///{tmp_path}/s.db", "--runs-dir", str(tmp_path / "runs"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/not-a-dir/mlflow.db", "--no-progress",
                     *short_budget(corpus_en, tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "MLflow tracking store" in err and "not-a-dir" in err and "tracking.enabled=false" in err
    assert not (tmp_path / "runs").exists()
