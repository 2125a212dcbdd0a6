"""The one reader of a run directory (smart_tuner/run_logs.py) reads what its writer (RunDir) wrote: a run killed
while writing a line leaves a torn last line, which is left out; a broken line elsewhere is an error naming the file
and line; evaluations written under the old metric names read under today's."""

from __future__ import annotations

import json

import pytest

from smart_tuner import cli
from smart_tuner.config import Config
from smart_tuner.files import BrokenRecord
from smart_tuner.hooks import OLD_METRIC_NAMES, Event
from smart_tuner.run_logs import EVENTS, METRICS, read_config, read_events, read_metrics
from smart_tuner.train.distributed import Group
from smart_tuner.train.run_dir import RunDir

from .stats import eval_stats

FINITE = {"frames_per_second": 100.0, "steps_per_second": 2.0, "weight_change": 1e-4}  # NaN != NaN in a comparison


def written_run(tmp_path):
    """A run directory written by RunDir: its config, two evaluations and one event."""
    run = RunDir(tmp_path / "run", Group())
    run.write_config(Config())
    evals = [eval_stats(4, **FINITE), eval_stats(8, val_loss=0.5, free_running_diagonality=0.9, **FINITE)]
    for stats in evals:
        run.append_metrics(stats)
    event = Event(8, "lr_adapter", "lr", 1e-3, 5e-4, "plateau", 0.5, True)
    run.append_event(event)
    return run.path, [s.to_dict() for s in evals], [event.to_dict()]


def test_what_the_writer_wrote_reads_back(tmp_path):
    path, evals, events = written_run(tmp_path)
    assert read_metrics(path) == evals and read_metrics(path).torn is None
    assert read_events(path) == events
    assert read_config(path)["train"]["lr"] == Config().train.lr
    empty = tmp_path / "empty"  # a run that has not evaluated yet
    assert read_metrics(empty) == [] and read_events(empty) == []
    with pytest.raises(FileNotFoundError):
        read_config(empty)


def test_a_torn_last_line_is_left_out(tmp_path):
    path, evals, events = written_run(tmp_path)
    for name in (METRICS, EVENTS):  # killed half-way through a line, before lines were written whole
        with open(path / name, "a", encoding="utf-8") as log:
            log.write('{"step": 12, "val_lo')
    metrics = read_metrics(path)
    assert metrics == evals and metrics.torn == 3
    assert read_events(path) == events and read_events(path).torn == 2


def test_a_broken_line_within_a_log_is_an_error_naming_it(tmp_path, capsys):
    path, _, _ = written_run(tmp_path)
    lines = (path / METRICS).read_text().splitlines()
    (path / METRICS).write_text("\n".join([lines[0], lines[1][:20], lines[1]]) + "\n")
    with pytest.raises(BrokenRecord, match=r"metrics\.jsonl:2: not a JSON record; repair or remove that line"):
        read_metrics(path)
    (path / EVENTS).write_text('[1, 2]\n{"step": 9}\n')  # JSON, but not a record
    with pytest.raises(BrokenRecord, match=r"events\.jsonl:1: not a JSON record"):
        read_events(path)
    assert cli.main(["debug", str(path)]) == 2
    assert f"error: {path / METRICS}:2: not a JSON record" in capsys.readouterr().err


def test_evaluations_under_the_old_names_read_under_todays(tmp_path):
    path, evals, _ = written_run(tmp_path)
    new_to_old = {new: old for old, new in OLD_METRIC_NAMES.items()}
    first = json.loads((path / METRICS).read_text().splitlines()[0])
    # A run written before the rename and resumed after it: its first evaluation has the old names.
    (path / METRICS).write_text(json.dumps({new_to_old.get(k, k): v for k, v in first.items()}) + "\n"
                                + (path / METRICS).read_text().splitlines()[1] + "\n")
    assert "infer_diagonality" in (path / METRICS).read_text()
    metrics = read_metrics(path)
    assert metrics == evals
    assert not any(key.startswith("infer_") for record in metrics for key in record)
