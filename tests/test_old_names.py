"""Files written before the vocabulary was made one (2026-12-03) still load: free-running metrics were named
``infer_*`` in metrics.jsonl, and the adapters' ``metric`` said ``diagonality`` / ``infer_diagonality``.

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

from smart_tuner.config import ConfigError, build_config, from_dict, resume_changes
from smart_tuner.hooks import OLD_METRIC_NAMES
from smart_tuner.run_logs import read_metrics
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts.inference import load_for_inference
from smart_tuner.watch.debug import summarize_run

from .conftest import tiny_config

OLD_ADAPTER_METRICS = {"ga": "infer_diagonality", "collapse": "diagonality"}
NEW_ADAPTER_METRICS = {"ga": "free_running", "collapse": "teacher_forced"}


def with_old_names(config: dict) -> dict:
    for adapter, old in OLD_ADAPTER_METRICS.items():
        config["adapters"][adapter]["metric"] = old
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
