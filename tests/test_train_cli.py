"""`train` and `debug` end to end through the command line, with the standard hooks and a fault."""

from __future__ import annotations

import yaml

from smart_tuner.run_logs import read_events, read_metrics

from .conftest import TINY_MODEL


def test_train_with_a_fault_then_debug_then_resume(corpus_en, tmp_path, cli_main):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"config": {
        "preset": "demo", "model": TINY_MODEL,
        "data": {"corpus": str(corpus_en), "val_size": 4, "free_running_sentences": 2,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 4, "max_steps": 8, "eval_every": 4, "num_threads": 2},
        "faults": {"nan_loss_at": [6]}}}))
    run_dir = tmp_path / "run"
    result = cli_main("train", "--config", config, "--run-dir", run_dir, "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "completed at step 8" in result.stdout
    events = read_events(run_dir)
    assert {(e["source"], e["control"], e["step"]) for e in events if e["step"] == 6} == {
        ("lr", "skip_update", 6), ("lr", "lr", 6)}
    assert (run_dir / "debug" / "6-emergency" / "buffer.json").is_file()

    summary = cli_main("debug", run_dir, cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert "debug/6-emergency" in summary.stdout and "verdict:" in summary.stdout

    resumed = cli_main("train", "--config", config, "--run-dir", run_dir, "--resume", "--max-steps", 12,
                       "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "completed at step 12" in resumed.stdout
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == [4, 8, 12]

    not_a_run = cli_main("debug", tmp_path / "cache", cwd=tmp_path)
    assert not_a_run.returncode == 2 and "Traceback" not in not_a_run.stderr
