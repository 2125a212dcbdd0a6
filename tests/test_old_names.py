"""Files and command lines written before a rename still load. Until 2026-12-03 free-running metrics were named
``infer_*`` in metrics.jsonl, and the adapters' ``metric`` said ``diagonality`` / ``infer_diagonality``. Until
2026-12-08 ``data.free_running_sentences`` was ``data.val_infer``, ``train.execution: stepwise`` was ``eager``, an
objective file's ``score:`` section was ``objective:`` with ``ga_penalty`` for ``alignment_penalty``, and
``optimize --workers`` / ``--sampler-startup-trials`` were ``--n-jobs`` / ``--startup-trials``.

The old-format run directory is made the way such a run was: trained today, then its checkpoint's config, its
config.yaml and its metrics.jsonl written back with the old names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from smart_tuner.cli.main import build_parser
from smart_tuner.config import (
    ConfigError,
    build_config,
    from_dict,
    load_config_file,
    parse_set_overrides,
    resume_changes,
)
from smart_tuner.hooks import OLD_METRIC_NAMES
from smart_tuner.run_logs import read_metrics
from smart_tuner.study.objective_file import SearchSpaceError, load_objective, params_to_overrides
from smart_tuner.study.options import StudyOptions
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts.inference import load_for_inference
from smart_tuner.watch.debug import summarize_run

from .conftest import tiny_config

OLD_ADAPTER_METRICS = {"ga": "infer_diagonality", "collapse": "diagonality"}
NEW_ADAPTER_METRICS = {"ga": "free_running", "collapse": "teacher_forced"}


def with_old_names(config: dict) -> dict:
    for adapter, old in OLD_ADAPTER_METRICS.items():
        config["adapters"][adapter]["metric"] = old
    config["data"]["val_infer"] = config["data"].pop("free_running_sentences")
    return config


def make_old(run_dir: Path) -> None:
    """Rewrite a run directory of today in the format of a run written before the rename."""
    for name in ("last.pt", "best.pt"):
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        with_old_names(state["config"])
        torch.save(state, path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(with_old_names(config)))
    new_to_old = {new: old for old, new in OLD_METRIC_NAMES.items()}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({new_to_old.get(k, k): v for k, v in m.items()}) + "\n" for m in lines))


def test_old_choice_names_load_as_the_new_ones():
    config = build_config({"adapters": {adapter: {"metric": old} for adapter, old in OLD_ADAPTER_METRICS.items()}})
    assert {adapter: getattr(config.adapters, adapter).metric for adapter in OLD_ADAPTER_METRICS} \
        == NEW_ADAPTER_METRICS
    with pytest.raises(ConfigError, match=r"adapters\.ga\.metric: 'infer' is not one of teacher_forced, "
                                          r"free_running, worse"):
        build_config({"adapters": {"ga": {"metric": "infer"}}})


def test_renamed_config_keys_load_as_their_names_now(tmp_path):
    config = build_config({"data": {"val_infer": 1}, "train": {"execution": "eager"}})
    assert config.data.free_running_sentences == 1 and config.train.execution == "stepwise"
    assert build_config(parse_set_overrides(["data.val_infer=0"])).data.free_running_sentences == 0
    # An old file with a new --set, and the other way round: one key, the --set wins.
    for file_key, set_key in (("val_infer", "free_running_sentences"), ("free_running_sentences", "val_infer")):
        path = tmp_path / f"{file_key}.yaml"
        path.write_text(yaml.safe_dump({"data": {file_key: 3}}))
        assert load_config_file(path, [f"data.{set_key}=1"]).data.free_running_sentences == 1
    with pytest.raises(ConfigError, match=r"^data\.val_infer is the old name of data\.free_running_sentences: "
                                          r"give only data\.free_running_sentences$"):
        build_config({"data": {"val_infer": 1, "free_running_sentences": 2}})
    with pytest.raises(ConfigError, match=r"^data\.free_running_sentences: -1 must be >= 0"):
        build_config({"data": {"val_infer": -1}})


def test_an_old_objective_file_and_old_trial_params_load(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"config": {"data": {"val_infer": 2}},
                                   "search_space": {"data.val_infer": {"type": "int", "low": 1, "high": 3}},
                                   "objective": {"ga_penalty": 2.0, "alignment": "free_running"}}))
    spec = load_objective(old)
    assert spec.score.alignment_penalty == 2.0 and spec.score.alignment == "free_running"
    assert [d.key for d in spec.space] == ["data.free_running_sentences"]
    assert params_to_overrides({"data.val_infer": 3}) == {"data": {"free_running_sentences": 3}}
    for both, where in (({"objective": {}, "score": {}}, "'objective' is the old name of 'score'"),
                        ({"score": {"ga_penalty": 1.0, "alignment_penalty": 2.0}},
                         "score: 'ga_penalty' is the old name of 'alignment_penalty'")):
        path = tmp_path / "both.yaml"
        path.write_text(yaml.safe_dump({"config": {}, **both}))
        with pytest.raises(SearchSpaceError, match=where):
            load_objective(path)


def test_old_optimize_flags_set_the_renamed_options_and_are_left_out_of_help(capsys):
    args = build_parser().parse_args(["optimize", "--n-jobs", "3", "--startup-trials", "2"])
    options = StudyOptions.from_args(args, "optimize")
    assert options.workers == 3 and options.sampler_startup_trials == 2
    defaults = StudyOptions.from_args(build_parser().parse_args(["optimize"]), "optimize")
    assert defaults.workers == 1 and defaults.sampler_startup_trials == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--help"])
    shown = capsys.readouterr().out
    assert "--workers" in shown and "--sampler-startup-trials" in shown
    assert "--n-jobs" not in shown and "--startup-trials" not in shown.replace("--sampler-startup-trials", "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--n-jobs", "0"])
    assert "argument --n-jobs: 0 is below the minimum of 1" in capsys.readouterr().err


def test_an_old_name_of_the_same_choice_is_no_change_on_resume():
    saved = with_old_names(build_config().to_dict())
    config = build_config({"adapters": {adapter: {"metric": new} for adapter, new in NEW_ADAPTER_METRICS.items()}})
    assert resume_changes(saved, config) == ([], [])
    config.adapters.ga.metric = "worse"
    assert resume_changes(saved, config) == ([], ["adapters.ga.metric: 'infer_diagonality' -> 'worse'"])


def test_an_old_run_directory_resumes_synthesizes_and_reads_under_both_names(corpus_en, tmp_path, caplog):
    run = tmp_path / "run"
    adapters = {adapter: {"metric": new} for adapter, new in NEW_ADAPTER_METRICS.items()}
    Trainer(tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4}, adapters=adapters), run,
            progress=False).fit()
    make_old(run)
    assert "infer_diagonality" in (run / "metrics.jsonl").read_text()

    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert from_dict(saved["config"]).adapters.ga.metric == "free_running"
    assert load_for_inference(run / "checkpoints" / "last.pt", device="cpu") is not None

    with caplog.at_level(logging.INFO):
        result = Trainer(tiny_config(corpus_en, tmp_path, train={"max_steps": 12, "eval_every": 4},
                                     adapters=adapters), run, resume=True, progress=False).fit()
    assert result.step == 12
    assert not [r.message for r in caplog.records if "adapters." in r.message and "metric" in r.message]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in records] == [4, 8, 12]
    assert "infer_diagonality" in records[0] and "free_running_diagonality" in records[-1]  # both, as written
    read = read_metrics(run)  # the run directory's reader gives today's names
    assert all(0 <= m["free_running_diagonality"] <= 1 and "infer_diagonality" not in m for m in read)

    # The summary reads the old lines too: make the first (old) one aligned, free-running included.
    records[0].update(diagonality=0.9, infer_diagonality=0.85)
    records[-1].update(diagonality=0.9)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in records))
    summary = summarize_run(run)
    assert "aligned (diagonality >= 0.8): step 4; free-running: step 4" in summary, summary
