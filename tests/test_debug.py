"""Debug bundles and run summaries, with hand-built hook messages and fake run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smart_tuner import cli
from smart_tuner.config import Config, DebugConfig
from smart_tuner.hooks import Event, RunInfo, TrainResult
from smart_tuner.watch.debug import BUNDLE_FILES, DebugReporter, RunDirError, summarize_run

from .stats import eval_stats as make_eval_stats
from .stats import step_stats as make_step_stats

PNG = b"\x89PNG\r\n\x1a\n"


def step_stats(step, **changes):
    values = dict(epoch=step // 10, loss=1.0 / step, mel=0.5, postnet=0.4, gate=0.1, ga=0.2, grad_norm=2.0 + step,
                  finite=True, step_time=0.01, diagonality=0.5,
                  module_grad_norms={"encoder": 1.0, "decoder": 1.5, "postnet": 0.5})
    values.update(changes)
    return make_step_stats(step, **values)


def eval_stats(step, diagonality=0.9, val_loss=1.0, alignment=None, **changes):
    values = dict(val_loss=val_loss, val_mel=0.5, val_postnet=0.4, val_gate=0.1, val_ga=0.2,
                  diagonality=diagonality, focus=0.6, monotonicity=0.95, coverage=0.9,
                  free_running_diagonality=diagonality - 0.1, free_running_focus=0.5, free_running_monotonicity=0.9,
                  free_running_coverage=0.8,
                  free_running_stop_rate=1.0, train_loss=1.1, elapsed=10.0, alignment=alignment)
    values.update(changes)
    return make_eval_stats(step, **values)


def event(step, control="lr", reason="emergency: loss is nan", applied=True, source="lr_adapter", old=1e-3,
          new=1e-4, alarm=None):
    """An event; an alarm unless told otherwise when its reason says emergency or it skips or rolls back."""
    if alarm is None:
        alarm = reason.startswith("emergency") or control in ("skip_update", "rollback")
    return Event(step, source, control, old, new, reason, float("nan"), applied, alarm)


def secret_config():
    config = Config().to_dict()
    config["alerts"]["telegram"]["token"] = "123:SECRET"  # as if a caller forgot to_dict's scrubbing
    return config


def start(tmp_path, buffer_steps=5, max_bundles=20, enabled=True):
    reporter = DebugReporter(DebugConfig(enabled=enabled, buffer_steps=buffer_steps, max_bundles=max_bundles))
    reporter.on_train_start(RunInfo(tmp_path / "run", secret_config(), "cpu", 1234, 100, 10, 0))
    return reporter


def bundles(tmp_path):
    root = tmp_path / "run" / "debug"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ------------------------------------------------------------------------------------------- ring buffer
def test_ring_buffer_keeps_the_last_steps_in_order_as_plain_values(tmp_path):
    reporter = start(tmp_path, buffer_steps=5)
    for step in range(1, 13):
        assert reporter.on_step(step_stats(step)) == []
    assert [entry["step"] for entry in reporter.buffer] == [8, 9, 10, 11, 12]
    entry = reporter.buffer[-1]
    assert entry["loss"] == pytest.approx(1 / 12) and entry["grad_norm"] == 14.0
    assert entry["module_grad_norms"] == {"encoder": 1.0, "decoder": 1.5, "postnet": 0.5}
    assert set(entry) == {"step", "epoch", "loss", "losses", "grad_norm", "module_grad_norms", "lr", "loss_weights",
                          "diagonality", "finite", "step_time", "frames"}
    assert entry["losses"] == {"mel": 0.5, "postnet": 0.4, "gate": 0.1, "ga": 0.2}
    assert entry["loss_weights"] == {"ga_weight": 2.0}
    assert json.loads(json.dumps(list(reporter.buffer))) == list(reporter.buffer)


def test_buffer_holds_no_tensor_and_touches_none(tmp_path, monkeypatch):
    """Cheapness without timing: with plain-float stats no tensor method runs (no host sync), nothing held is a
    tensor, and the per-module dict is a copy (the trainer may reuse its dict)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the debug buffer touched a tensor")

    for method in ("item", "tolist", "cpu", "__float__", "detach", "clone"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    reporter = start(tmp_path, buffer_steps=50)
    norms = {"encoder": 1.0, "decoder": 2.0, "postnet": 3.0}
    for step in range(1, 201):
        reporter.on_step(step_stats(step, module_grad_norms=norms))
    norms["encoder"] = 99.0

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and type(v) is float for k, v in value.items())
        return type(value) in (float, int, bool)

    assert len(reporter.buffer) == 50
    assert all(plain(v) for entry in reporter.buffer for v in entry.values())
    assert reporter.buffer[0]["module_grad_norms"]["encoder"] == 1.0


def test_a_tensor_in_the_stats_is_stored_as_a_float(tmp_path):
    reporter = start(tmp_path)
    reporter.on_step(step_stats(1, grad_norm=torch.tensor(3.5), module_grad_norms={"encoder": torch.tensor(1.25)}))
    entry = reporter.buffer[-1]
    assert type(entry["grad_norm"]) is float and entry["grad_norm"] == 3.5
    assert type(entry["module_grad_norms"]["encoder"]) is float


# ------------------------------------------------------------------------------------------- bundles
def test_an_alarm_writes_one_complete_bundle(tmp_path):
    reporter = start(tmp_path, buffer_steps=4)
    for step in range(1, 8):
        reporter.on_step(step_stats(step))
        if step == 5:
            reporter.on_eval(eval_stats(5, alignment=torch.rand(20, 7)))
    reporter.on_event(event(6, "ga_weight", "diagonality low", new=2.4))  # not an alarm
    reporter.on_event(event(7))
    assert bundles(tmp_path) == ["7-emergency"]
    path = tmp_path / "run" / "debug" / "7-emergency"
    assert sorted(p.name for p in path.iterdir()) == sorted(BUNDLE_FILES)
    assert (path / "alignment.png").read_bytes().startswith(PNG)
    buffer = json.loads((path / "buffer.json").read_text())
    assert [entry["step"] for entry in buffer] == [4, 5, 6, 7]
    events = json.loads((path / "events.json").read_text())
    assert [(e["step"], e["control"]) for e in events] == [(6, "ga_weight"), (7, "lr")]
    config = json.loads((path / "config.json").read_text())
    assert config["alerts"]["telegram"]["token"] is None
    assert config["train"]["lr"] == Config().train.lr
    assert "SECRET" not in "".join(p.read_text(errors="replace") for p in path.iterdir())
    assert json.loads((path / "eval.json").read_text())["step"] == 5
    reason = (path / "reason.txt").read_text().splitlines()
    assert reason[0] == "emergency at step 7: lr_adapter lr: emergency: loss is nan"
    assert not [p for p in (tmp_path / "run" / "debug").iterdir() if p.name.startswith(".")]  # no temp dir left


def test_non_alarm_events_write_nothing(tmp_path):
    reporter = start(tmp_path)
    reporter.on_step(step_stats(1))
    reporter.on_event(event(1, "lr", "plateau: no improvement", new=5e-4))
    reporter.on_event(event(1, "lr", "emergency: overridden", applied=False))  # an emergency that lost
    reporter.on_event(event(1, "ga_weight", "diagonality low", new=3.0))
    assert not (tmp_path / "run" / "debug").exists()
    assert len(reporter.events) == 3


def test_each_alarm_kind_names_its_bundle_without_an_evaluation(tmp_path):
    reporter = start(tmp_path)
    reporter.on_step(step_stats(1))
    reporter.on_event(event(1, "skip_update", "non-finite loss or gradient", source="trainer", old=None, new=None))
    reporter.on_event(event(2, "rollback", "vanishing gradients", source="grad", old=None, new=None))
    assert bundles(tmp_path) == ["1-skip", "2-rollback"]
    path = tmp_path / "run" / "debug" / "1-skip"
    assert not (path / "alignment.png").exists()  # no evaluation yet: no image, the rest is there
    assert json.loads((path / "eval.json").read_text()) is None


def test_several_alarms_in_one_step_write_one_bundle(tmp_path):
    reporter = start(tmp_path)
    reporter.on_step(step_stats(3))
    reporter.on_event(event(3))
    reporter.on_event(event(3, "skip_update", "non-finite loss or gradient", source="trainer", old=None, new=None))
    reporter.on_event(event(3, "rollback", "emergency: too many emergencies", source="lr_adapter", old=None,
                            new=None))
    # Named after the most severe alarm of the step.
    assert bundles(tmp_path) == ["3-rollback"]
    assert reporter.bundles == 1
    path = tmp_path / "run" / "debug" / "3-rollback"
    reason = (path / "reason.txt").read_text().splitlines()
    assert reason[0].startswith("emergency at step 3")
    assert reason[1].startswith("skip at step 3") and reason[2].startswith("rollback at step 3")
    assert len(json.loads((path / "events.json").read_text())) == 3  # updated with the later alarms


def test_max_bundles_is_respected_and_logged_once(tmp_path, caplog):
    reporter = start(tmp_path, max_bundles=2)
    for step in range(1, 6):
        reporter.on_step(step_stats(step))
        reporter.on_event(event(step))
    reporter.on_train_end(TrainResult("failed", 5, "too many rollbacks", tmp_path / "run", None, None))
    assert bundles(tmp_path) == ["1-emergency", "2-emergency"]
    assert reporter.bundles == 2
    assert sum("suppressed" in r.getMessage() for r in caplog.records) == 1


def test_a_failed_run_writes_a_failed_bundle_and_others_do_not(tmp_path):
    reporter = start(tmp_path)
    reporter.on_step(step_stats(9))
    reporter.on_event(event(9, "rollback", "vanishing gradients", source="grad", old=None, new=None))
    last = eval_stats(8, alignment=torch.rand(12, 5))
    reporter.on_train_end(TrainResult("failed", 9, "more than 3 rollbacks", tmp_path / "run", last, 1.0))
    assert bundles(tmp_path) == ["9-failed", "9-rollback"]
    path = tmp_path / "run" / "debug" / "9-failed"
    assert (path / "reason.txt").read_text().splitlines()[0] == "failed at step 9: more than 3 rollbacks"
    assert (path / "alignment.png").read_bytes().startswith(PNG)  # from the result's last evaluation

    for status in ("completed", "stopped"):
        other = start(tmp_path / status)
        other.on_train_end(TrainResult(status, 9, "done", tmp_path / status / "run", None, None))
        assert bundles(tmp_path / status) == []


def test_disabled_reporter_keeps_and_writes_nothing(tmp_path):
    reporter = start(tmp_path, enabled=False)
    reporter.on_step(step_stats(1))
    reporter.on_event(event(1))
    reporter.on_train_end(TrainResult("failed", 1, "boom", tmp_path / "run", None, None))
    assert len(reporter.buffer) == 0 and bundles(tmp_path) == []


def test_write_errors_never_raise(tmp_path, caplog):
    (tmp_path / "run").write_text("a file where the run directory should be")
    reporter = start(tmp_path)
    reporter.on_step(step_stats(1))
    reporter.on_event(event(1))
    reporter.on_train_end(TrainResult("failed", 1, "boom", tmp_path / "run", None, None))
    assert reporter.bundles == 0
    assert sum("could not write a bundle" in r.getMessage() for r in caplog.records) == 2


def test_a_full_disk_never_raises_and_leaves_no_half_bundle(tmp_path, monkeypatch):
    """Read-only or full disks fail at some write; root ignores chmod, so the failure is injected."""
    real_write = Path.write_text

    def failing_write(self, *args, **kwargs):
        if self.name == "events.json":
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write)
    reporter = start(tmp_path)
    reporter.on_step(step_stats(1))
    reporter.on_event(event(1))
    assert reporter.bundles == 0
    assert list((tmp_path / "run" / "debug").iterdir()) == []  # the temp dir is gone, no partial bundle
    monkeypatch.setattr(Path, "write_text", real_write)
    reporter.on_event(event(2))  # the next alarm, once there is room again, still gets its bundle
    assert bundles(tmp_path) == ["2-emergency"]


def test_a_broken_alignment_still_writes_the_rest(tmp_path):
    reporter = start(tmp_path)
    reporter.on_eval(eval_stats(1, alignment="not a tensor"))
    reporter.on_event(event(1))
    path = tmp_path / "run" / "debug" / "1-emergency"
    assert sorted(p.name for p in path.iterdir()) == sorted(set(BUNDLE_FILES) - {"alignment.png"})


def test_events_are_capped(tmp_path):
    reporter = DebugReporter(DebugConfig(), max_events=10)
    for step in range(1, 26):
        reporter.on_event(event(step, "ga_weight", "diagonality low"))
    assert [e["step"] for e in reporter.events] == list(range(16, 26))


def test_state_dict_round_trip_keeps_the_bundle_budget(tmp_path):
    reporter = start(tmp_path, max_bundles=3)
    for step in (1, 2):
        reporter.on_event(event(step))
    state = json.loads(json.dumps(reporter.state_dict()))
    assert state == {"bundles": 2}
    resumed = DebugReporter(DebugConfig(max_bundles=3))
    resumed.load_state_dict(state)  # the trainer loads hook states before on_train_start
    resumed.on_train_start(RunInfo(tmp_path / "run", {}, "cpu", 1, 1, 1, 2))
    for step in (3, 4):
        resumed.on_event(event(step))
    assert resumed.bundles == 3
    assert bundles(tmp_path) == ["1-emergency", "2-emergency", "3-emergency"]


# ------------------------------------------------------------------------------------------- summary
def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def fake_run(tmp_path, diagonalities=(0.2, 0.5, 0.85, 0.9), events=(), with_config=True):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    if with_config:
        (run / "config.yaml").write_text("preset: demo\ntrain: {lr: 0.001, batch_size: 16, max_steps: 200, "
                                         "eval_every: 25}\nloss: {ga_weight: 2.0}\n")
    write_jsonl(run / "metrics.jsonl", [
        eval_stats(25 * (i + 1), diagonality=d, val_loss=2.0 - i * 0.3, lr=1e-3 / (i + 1), ga_weight=2.0 + i)
        .to_dict() for i, d in enumerate(diagonalities)])
    write_jsonl(run / "events.jsonl", [e.to_dict() for e in events])
    return run


def test_summary_of_a_healthy_run(tmp_path):
    run = fake_run(tmp_path, events=[
        event(50, "ga_weight", "diagonality low", source="ga", old=2.0, new=3.0),
        event(50, "lr", "plateau", source="lr_adapter", new=5e-4),
        event(50, "lr", "other", source="other", new=9e-4, applied=False),
    ])
    (run / "data_report.json").write_text(json.dumps({"corpus": "c", "lines": 30, "skipped": [
        {"file": "metadata.csv", "line": 7, "id": "LJ007", "reason": "empty text"}]}))
    text = summarize_run(run)
    assert f"run: {run}" in text
    assert "config: preset demo, lr 0.001, batch size 16, ga weight 2" in text
    assert "steps: 100 of 200 trained" in text and "4 evaluations" in text
    assert "aligned (diagonality >= 0.8): step 75; free-running: step 100" in text
    assert "validation loss: best 1.1 at step 100, last 1.1 at step 100" in text
    assert "lr: 0.001 -> min 0.00025 / max 0.001 -> end 0.00025" in text
    assert "ga weight: 2 -> min 2 / max 5 -> end 5" in text
    assert "events: 3 (2 applied, 1 overridden)" in text
    assert "  lr_adapter/lr: 1 applied, 0 overridden" in text and "  other/lr: 0 applied, 1 overridden" in text
    assert "data: 1 of 30 corpus lines skipped" in text and "line 7: LJ007: empty text" in text
    assert "debug bundles: none" in text and "alarms:" not in text
    assert text.splitlines()[-1] == "verdict: healthy: aligned at step 75 (free-running at step 100)"


def test_summary_lists_bundles_and_counts_emergencies(tmp_path):
    alarms = [event(s) for s in (30, 31, 32)] + [event(33, "rollback", "too many", old=None, new=None)]
    run = fake_run(tmp_path, diagonalities=(0.2, 0.3), events=alarms)
    reporter = DebugReporter()
    reporter.on_train_start(RunInfo(run, {}, "cpu", 1, 1, 1, 0))
    for e in alarms:
        reporter.on_event(e)
    text = summarize_run(run)
    assert "steps: 50 of 200 trained" in text
    assert "aligned (diagonality >= 0.8): never; free-running: never" in text
    assert "debug bundles: 4" in text
    assert "  debug/30-emergency: emergency at step 30: lr_adapter lr: emergency: loss is nan" in text
    assert "  debug/33-rollback: rollback at step 33: lr_adapter rollback: too many" in text
    assert text.index("debug/32-emergency") < text.index("debug/33-rollback")
    assert "alarms: 3 emergency, 0 skip, 1 rollback" in text
    assert "last events:" in text and "  step 33 lr_adapter rollback (applied): too many" in text
    assert "  step 32 lr_adapter lr 0.001 -> 0.0001 (applied): emergency: loss is nan" in text
    assert text.splitlines()[-1] == "verdict: unstable: 3 emergencies, 1 rollbacks"


def test_summary_verdicts(tmp_path):
    assert summarize_run(fake_run(tmp_path / "a", diagonalities=(0.2, 0.4))).endswith(
        "verdict: not aligned yet (diagonality 0.40 at step 50)")
    assert summarize_run(fake_run(tmp_path / "b", diagonalities=(0.85, 0.5))).endswith(
        "verdict: alignment lost: reached 0.8 at step 25, now 0.50 at step 50")
    failed = fake_run(tmp_path / "c")
    reporter = DebugReporter()
    reporter.on_train_start(RunInfo(failed, {}, "cpu", 1, 1, 1, 0))
    reporter.on_train_end(TrainResult("failed", 100, "more than 3 rollbacks", failed, None, None))
    assert summarize_run(failed).endswith("verdict: failed: more than 3 rollbacks")


def test_summary_of_a_run_that_just_started(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: demo\ntrain: {lr: 0.002}\n")
    (run / "metrics.jsonl").write_text('{"step": 25, "val_loss": 1.0, "diagonality": 0.3}\n{"step": 5')  # half-written
    text = summarize_run(run)
    assert "1 evaluations, torn last line 2 of metrics.jsonl left out" in text
    assert "events: 0 (0 applied, 0 overridden)" in text
    assert "lr: 0.002 -> min 0.002 / max 0.002 -> end 0.002" in text
    assert "verdict: not aligned yet" in text


def test_summary_without_config(tmp_path):
    text = summarize_run(fake_run(tmp_path, with_config=False))
    assert "config: config.yaml missing" in text and "steps: 100 trained" in text


def test_summary_of_a_non_run_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(RunDirError, match="is not a run directory.*config.yaml or metrics.jsonl"):
        summarize_run(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        summarize_run(tmp_path / "missing")
    assert cli.main(["debug", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error:") and "is not a run directory" in line


def test_debug_command_prints_the_summary(tmp_path, capsys):
    run = fake_run(tmp_path)
    assert cli.main(["debug", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run: {run}") and "verdict: healthy" in out


def test_trajectory_ends_with_a_change_made_after_the_last_evaluation(tmp_path):
    # The trainer writes an evaluation, then applies what the hooks ask at that same step.
    run = fake_run(tmp_path, events=[event(100, "lr", "plateau", new=1e-5)])
    assert "lr: 0.001 -> min 1e-05 / max 0.001 -> end 1e-05" in summarize_run(run)
