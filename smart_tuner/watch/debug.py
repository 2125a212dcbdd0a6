"""Debug bundles and run summaries: what a person needs to see after something went wrong.

:class:`DebugReporter` is a hook that remembers the last ``debug.buffer_steps`` training steps as plain numbers
(a ring buffer, no tensors) and, when the trainer applies an emergency, a skipped update or a rollback, or when
the run fails, writes a bundle to ``<run_dir>/debug/<step>-<kind>/``::

    buffer.json    the last steps: losses, gradient norms (total and per module), lr, ga weight, diagonality
    events.json    the control events of this run so far (the last 500)
    config.json    the run's config (secret-free)
    eval.json      the last evaluation
    alignment.png  the last validation alignment, if there was an evaluation
    reason.txt     why the bundle was written (first line), then the alarms of that step

:func:`summarize_run` reads a run directory alone (finished, failed or still running) and says in a few lines
how it went; ``python -m smart_tuner debug RUN_DIR`` prints it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import Counter, deque
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import DebugConfig
from ..errors import UserError
from ..files import JsonLog, atomic_dir, write_atomic
from ..hooks import EvalStats, Event, Hook, RunInfo, StepStats, TrainResult
from ..numeric import is_number
from ..run_logs import CONFIG, EVENTS, METRICS, read_config, read_events, read_metrics
from .text import fmt

log = logging.getLogger(__name__)

ALIGNED = 0.8  # diagonality from which a run counts as aligned
MAX_EVENTS = 500  # events kept for bundles: enough context, bounded memory on long unstable runs
BUNDLE_FILES = ("buffer.json", "events.json", "config.json", "eval.json", "alignment.png", "reason.txt")


class RunDirError(UserError, ValueError):
    """The path is not a run directory; the message says which path and what was expected."""


SEVERITY = ("skip", "emergency", "rollback")  # a step's bundle is named after its most severe alarm


def _alarm_kind(control: str) -> str:
    """What an alarm did: skipped an update, rolled back, or otherwise acted in an emergency (cut the rate)."""
    return {"rollback": "rollback", "skip_update": "skip"}.get(control, "emergency")


def _is_alarm(event: dict[str, Any]) -> bool:
    """:attr:`Event.is_alarm` for an event read back from events.jsonl."""
    return bool(event.get("applied")) and bool(event.get("alarm"))


def _scrub(value: Any) -> Any:
    """A copy with every ``token`` value blanked: config.json must never carry a secret, even if one slipped in."""
    if isinstance(value, dict):
        return {k: (None if k == "token" else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """Python numbers, dicts of them recursively: a tensor passed by mistake is never kept alive here."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bool, int)):
        return value
    return float(value)


def _dumps(data: Any) -> str:
    # NaN stays NaN, as in metrics.jsonl; default=str keeps odd values (paths) from failing a bundle.
    return json.dumps(data, indent=1, default=str)


class DebugReporter(Hook):
    """Keeps the recent past cheaply and writes it out when the run is in trouble. Never asks for a decision."""

    name = "debug"
    priority = 0

    def __init__(self, config: DebugConfig | None = None, max_events: int = MAX_EVENTS):
        self.config = config or DebugConfig()
        self.buffer: deque[dict[str, Any]] = deque(maxlen=self.config.buffer_steps)
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.info: RunInfo | None = None
        self.last_eval: dict[str, Any] | None = None
        self.alignment: Any = None  # (D, N) CPU tensor of the last evaluation
        self.bundles = 0  # written in this run, resumed runs included (see state_dict)
        self.suppressed = False
        self._open: tuple[int, Path, list[str]] | None = None  # this step's alarm bundle: step, dir, reasons

    # ------------------------------------------------------------------------------------------- hook
    def on_train_start(self, info: RunInfo) -> None:
        self.info = info

    def on_step(self, stats: StepStats) -> list:
        if self.config.enabled:
            self.buffer.append({f.name: _plain(getattr(stats, f.name)) for f in fields(stats)})
        return []

    def on_eval(self, stats: EvalStats) -> list:
        self.last_eval = stats.to_dict()
        self.alignment = stats.alignment
        return []

    def on_event(self, event: Event) -> None:
        if not self.config.enabled:
            return
        self.events.append(event.to_dict())
        if event.is_alarm:
            kind = _alarm_kind(event.control)
            line = f"{kind} at step {event.step}: {event.source} {event.control}: {event.reason}"
            self._bundle(event.step, kind, line)

    def on_train_end(self, result: TrainResult) -> None:
        if not self.config.enabled or result.status != "failed":
            return
        if self.last_eval is None and result.last_eval is not None:
            self.on_eval(result.last_eval)
        if self.info is None:  # a failure before on_train_start still deserves a bundle
            self.info = RunInfo(result.run_dir, {}, "", 0, 0, 0, 0)
        self._open = None  # the failure gets its own bundle, even in a step that had alarms
        self._bundle(result.step, "failed", f"failed at step {result.step}: {result.reason}")

    def state_dict(self) -> dict[str, Any]:
        return {"bundles": self.bundles}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bundles = int(state.get("bundles", 0))

    # ------------------------------------------------------------------------------------------- bundles
    def _bundle(self, step: int, kind: str, line: str) -> None:
        """Write (or, for a further alarm of the same step, update) a bundle; log instead of raising."""
        try:
            if self._open is not None and self._open[0] == step:
                _, path, reasons = self._open
                reasons.append(line)
                old_kind = path.name.split("-", 1)[1]
                if SEVERITY.index(kind) > SEVERITY.index(old_kind):
                    renamed = path.with_name(f"{step}-{kind}")
                    if renamed.exists():  # left by a resumed run's lost future
                        shutil.rmtree(renamed)
                    os.rename(path, renamed)
                    path = renamed
                    self._open = (step, path, reasons)
                write_atomic(path / "reason.txt", self._reason_text(reasons))
                write_atomic(path / "events.json", _dumps(list(self.events)))
                return
            if self.bundles >= self.config.max_bundles:
                if not self.suppressed:
                    log.warning("debug: %d bundles written (debug.max_bundles); further bundles are suppressed",
                                self.bundles)
                    self.suppressed = True
                return
            if self.info is None:
                log.warning("debug: %s, but no run directory is known (on_train_start not called)", line)
                return
            path = self._write_bundle(Path(self.info.run_dir) / "debug", f"{step}-{kind}", line)
            self.bundles += 1
            self._open = (step, path, [line]) if kind != "failed" else None
            log.warning("debug bundle written: %s (%s)", path, line)
        except Exception as exc:
            log.warning("debug: could not write a bundle for %r: %s", line, exc)

    def _reason_text(self, reasons: list[str]) -> str:
        """The alarms first (the first line names the bundle's cause), then where the run stood."""
        info = self.info
        last = f"last evaluation at step {self.last_eval['step']}" if self.last_eval else "no evaluation yet"
        context = [f"run dir: {info.run_dir}", f"device: {info.device}, parameters: {info.parameters:,}, "
                   f"started at step {info.start_step}", last]
        return "\n".join(reasons + [""] + context) + "\n"

    def _write_bundle(self, root: Path, name: str, line: str) -> Path:
        """All files into a temporary directory, then one rename: a bundle is either complete or absent. A bundle
        of the same name left by a resumed run's lost future (steps after its checkpoint) is replaced."""
        final = root / name
        with atomic_dir(final) as tmp:
            info = self.info
            (tmp / "reason.txt").write_text(self._reason_text([line]), encoding="utf-8")
            (tmp / "buffer.json").write_text(_dumps(list(self.buffer)), encoding="utf-8")
            (tmp / "events.json").write_text(_dumps(list(self.events)), encoding="utf-8")
            (tmp / "config.json").write_text(_dumps(_scrub(info.config)), encoding="utf-8")
            (tmp / "eval.json").write_text(_dumps(self.last_eval), encoding="utf-8")
            if self.alignment is not None:
                try:
                    from ..tts.plots import alignment_png  # matplotlib: only imported when a bundle is written

                    title = f"step {self.last_eval['step']}" if self.last_eval else ""
                    (tmp / "alignment.png").write_bytes(alignment_png(self.alignment, title))
                except Exception as exc:
                    log.warning("debug: no alignment image in %s: %s", final, exc)
        return final


# ----------------------------------------------------------------------------------------------- summary
def _num(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def _fmt(value: Any, spec: str = ".4g") -> str:
    """A number of a run's files (an int reads as a float here), anything else as ``-``."""
    return fmt(_num(value), spec)


def _at(step: int | None) -> str:
    return "never" if step is None else f"step {step}"


def _first_step(metrics: list[dict[str, Any]], key: str) -> int | None:
    for m in metrics:
        value = _num(m.get(key))
        if value is not None and value >= ALIGNED:
            return m.get("step")
    return None


def _trajectory(start: Any, metrics: list[dict], events: list[dict], control: str) -> str:
    """``start -> min .. max -> end`` of a control, from the config, evaluations and applied events."""
    points = [(-1, 0, _num(start))]
    points += [(m.get("step", 0), 0, _num(m.get(control))) for m in metrics]
    # An event at an evaluation step follows that evaluation's record (the trainer writes metrics first).
    points += [(e.get("step", 0), 1, _num(e.get("new"))) for e in events if e.get("control") == control
               and e.get("applied")]
    values = [v for _, _, v in sorted(points, key=lambda p: (p[0], p[1])) if v is not None]
    if not values:
        return "-"
    finite = [v for v in values if math.isfinite(v)] or values
    return f"{values[0]:.3g} -> min {min(finite):.3g} / max {max(finite):.3g} -> end {values[-1]:.3g}"


def _bundles(run_dir: Path) -> list[tuple[str, str]]:
    """(name, first line of reason.txt) of each complete bundle, in step order."""
    root = run_dir / "debug"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step, _, kind = path.name.partition("-")
        if not path.is_dir() or path.name.startswith(".") or not step.isdigit():
            continue
        try:
            reason = (path / "reason.txt").read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            reason = "(no reason.txt)"
        found.append((int(step), kind, path.name, reason))
    return [(name, reason) for _, _, name, reason in sorted(found)]


def summarize_run(run_dir: Path | str) -> str:
    """A readable health summary of a run, from its files alone; missing files and a torn last line (a run killed
    while writing it) are reported, not fatal; a broken line within a log is a BrokenRecord naming it."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file() and not (run_dir / METRICS).is_file():
        what = "does not exist" if not run_dir.exists() else "is not a run directory"
        raise RunDirError(f"{run_dir} {what}: expected a run directory written by `smart_tuner train` "
                          f"(with config.yaml or metrics.jsonl)")
    config, lines = _read_config(run_dir)
    lines.insert(0, f"run: {run_dir}")
    train, loss = config.get("train") or {}, config.get("loss") or {}
    metrics, events = read_metrics(run_dir), read_events(run_dir)  # old metric names read as today's
    bundles = _bundles(run_dir)
    steps = [m.get("step") for m in metrics] + [e.get("step") for e in events]
    steps += [int(name.partition("-")[0]) for name, _ in bundles]
    last_step = max((s for s in steps if isinstance(s, int)), default=0)
    of = f" of {train['max_steps']}" if "max_steps" in train else ""
    lines.append(f"steps: {last_step}{of} trained (last recorded), {len(metrics)} evaluations"
                 + _torn(metrics, METRICS))
    aligned = _first_step(metrics, "diagonality")
    aligned_free_running = _first_step(metrics, "free_running_diagonality")
    lines += _evaluation_lines(metrics, aligned, aligned_free_running)
    lines.append(f"lr: {_trajectory(train.get('lr'), metrics, events, 'lr')}")
    lines.append(f"ga weight: {_trajectory(loss.get('ga_weight'), metrics, events, 'ga_weight')}")
    lines += _event_lines(events)
    lines += _data_lines(run_dir)
    lines.append(f"debug bundles: {len(bundles)}" if bundles else "debug bundles: none")
    lines += [f"  debug/{name}: {reason}" for name, reason in bundles]
    lines.append("verdict: " + _verdict(metrics, events, bundles, aligned, aligned_free_running))
    return "\n".join(lines)


def _read_config(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The run's config.yaml as a dict (empty when missing or unreadable) and the summary's line on it."""
    try:
        config = read_config(run_dir)
    except FileNotFoundError:
        return {}, ["config: config.yaml missing"]
    except Exception as exc:
        return {}, [f"config: config.yaml unreadable ({exc})"]
    if not config:
        return config, []
    train, loss = config.get("train") or {}, config.get("loss") or {}
    return config, [f"config: preset {config.get('preset', '-')}, lr {_fmt(train.get('lr'))}, "
                    f"batch size {train.get('batch_size', '-')}, ga weight {_fmt(loss.get('ga_weight'))}, "
                    f"max steps {train.get('max_steps', '-')}, eval every {train.get('eval_every', '-')}"]


def _evaluation_lines(metrics: list[dict[str, Any]], aligned: int | None,
                      aligned_free_running: int | None) -> list[str]:
    """When the run aligned, its best and last validation loss, and the last evaluation's alignment."""
    if not metrics:
        return ["evaluations: none yet (metrics.jsonl missing or empty)"]
    last = metrics[-1]
    finite = [m for m in metrics if _num(m.get("val_loss")) is not None and math.isfinite(m["val_loss"])]
    best = min(finite, key=lambda m: m["val_loss"]) if finite else None
    best_text = f"{_fmt(best['val_loss'])} at step {best.get('step')}" if best else "- (none finite)"
    return [f"aligned (diagonality >= {ALIGNED}): {_at(aligned)}; free-running: {_at(aligned_free_running)}",
            f"validation loss: best {best_text}, last {_fmt(last.get('val_loss'))} at step {last.get('step')}",
            "last alignment: " + ", ".join(
                f"{k} {_fmt(last.get(k), '.3f')}" for k in ("diagonality", "focus", "monotonicity", "coverage"))
            + f"; free-running diagonality {_fmt(last.get('free_running_diagonality'), '.3f')}, "
              f"stop rate {_fmt(last.get('free_running_stop_rate'), '.2f')}"]


def _torn(log: JsonLog, name: str) -> str:
    """The summary's note on a log whose torn last line was left out."""
    return f", torn last line {log.torn} of {name} left out" if log.torn is not None else ""


def _event_lines(events: JsonLog) -> list[str]:
    """The events counted per source and control, the last five, and the alarms by kind."""
    applied = sum(1 for e in events if e.get("applied"))
    lines = [f"events: {len(events)} ({applied} applied, {len(events) - applied} overridden)" + _torn(events, EVENTS)]
    counts = Counter((e.get("source"), e.get("control"), bool(e.get("applied"))) for e in events)
    for source, control in sorted({(s, c) for s, c, _ in counts}, key=str):
        lines.append(f"  {source}/{control}: {counts[(source, control, True)]} applied, "
                     f"{counts[(source, control, False)]} overridden")
    if events:
        lines.append("last events:")
        for e in events[-5:]:
            change = "" if e.get("new") is None else f" {_fmt(e.get('old'))} -> {_fmt(e.get('new'))}"
            lines.append(f"  step {e.get('step')} {e.get('source')} {e.get('control')}{change} "
                         f"({'applied' if e.get('applied') else 'overridden'}): {e.get('reason')}")
    alarms = Counter(_alarm_kind(str(e.get("control"))) for e in events if _is_alarm(e))
    if alarms:
        lines.append("alarms: " + ", ".join(f"{alarms[k]} {k}" for k in ("emergency", "skip", "rollback")))
    return lines


def _data_lines(run_dir: Path) -> list[str]:
    path = run_dir / "data_report.json"
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        skipped = report.get("skipped") or []
    except (OSError, ValueError, AttributeError) as exc:
        return [f"data: data_report.json unreadable ({exc})"]
    lines = [f"data: {len(skipped)} of {report.get('lines', '?')} corpus lines skipped (data_report.txt)"]
    for bad in skipped[:5]:
        lines.append(f"  line {bad.get('line')}: {bad.get('id') or '-'}: {bad.get('reason')}")
    if len(skipped) > 5:
        lines.append(f"  ... and {len(skipped) - 5} more")
    return lines


def _verdict(metrics: list[dict], events: list[dict], bundles: list[tuple[str, str]],
             aligned: int | None, aligned_free_running: int | None) -> str:
    failed = [reason for name, reason in bundles if name.endswith("-failed")]
    if failed:
        return f"failed: {failed[-1].partition(': ')[2] or failed[-1]}"
    alarms = [e for e in events if _is_alarm(e)]
    emergencies = len({e.get("step") for e in alarms if e.get("control") != "rollback"})  # steps in trouble
    rollbacks = sum(1 for e in alarms if e.get("control") == "rollback")
    # One skipped NaN step is routine; repeated emergencies or a rollback mean the run is fighting itself.
    if rollbacks or emergencies >= 3:
        return f"unstable: {emergencies} emergencies, {rollbacks} rollbacks"
    if not metrics:
        return "no evaluation yet"
    last = _num(metrics[-1].get("diagonality"))
    if aligned is None:
        return f"not aligned yet (diagonality {_fmt(last, '.2f')} at step {metrics[-1].get('step')})"
    if last is None or last < ALIGNED:
        return (f"alignment lost: reached {ALIGNED} at step {aligned}, now {_fmt(last, '.2f')} "
                f"at step {metrics[-1].get('step')}")
    free = (f"free-running at step {aligned_free_running}" if aligned_free_running is not None
            else "not yet free-running")
    note = f", {len(alarms)} alarms" if alarms else ""
    return f"healthy: aligned at step {aligned} ({free}){note}"


def describe_result(result: TrainResult) -> str:
    """What ``train`` prints at its end: how the run ended, its last evaluation, and how to resume an interrupted
    one."""
    text = f"{result.status} at step {result.step}: {result.reason}; run dir {result.run_dir}"
    last = result.last_eval
    if last:
        text += (f"\nvalidation loss {last.val_loss:.4f}, diagonality {last.diagonality:.3f} "
                 f"(free-running {last.free_running_diagonality:.3f}), focus {last.focus:.3f}")
    if result.status == "interrupted":
        text += (f"\ncheckpoint written at step {result.step}; resume with:\n  python -m smart_tuner train --config "
                 f"{result.run_dir / 'config.yaml'} --run-dir {result.run_dir} --resume")
    return text


def debug_command(run_dir: str | Path) -> int:
    """``debug RUN_DIR``: print :func:`summarize_run`."""
    print(summarize_run(run_dir))
    return 0
