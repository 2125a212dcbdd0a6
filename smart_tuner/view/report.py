"""A study as one self-contained HTML page: ``python -m smart_tuner report --study NAME --out report.html``.

The page shows, from top to bottom:

1. the study: name, storage, objective file, counts of completed / pruned / failed trials;
2. the best trial (lowest value): its value, diagonality, parameters and full training config as YAML;
3. hyperparameter importances by three of Optuna's evaluators (fANOVA, PED-ANOVA, mean decrease in impurity),
   each a bar chart and a table, or a note saying why it could not be computed;
4. the optimization history: each trial's value, the best so far, pruned trials where they stopped;
5. every trial's intermediate values (the objective at each evaluation), pruned trials drawn in red;
6. what the adapters did: per decision kind ("<source>.<control>", for example ``lr.rollback``) how often it
   was applied and in how many trials, which trials the adapters rescued (one of them answered an alarm, an
   emergency, a skipped update or a rollback, and the trial still completed; the trainer's own skip of a
   non-finite update rescues nothing), and one row per trial with its outcome;
7. the best trial's last preview: alignment heatmap, mel spectrograms and the Griffin-Lim audio.

Everything is inline (PNG and WAV as ``data:`` URIs, CSS in a ``<style>`` element, no script), so the file
can be mailed or archived and opens offline. Which trials are results, and which is the best, comes from
:class:`smart_tuner.study.storage.StudyTrials`. The report only reads the study (through a read-only storage), and
never imports torch.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from ..config import ConfigError, build_config, to_yaml
from ..files import check_output_file, write_atomic
from ..numeric import is_finite_number
from ..redact import redact_url
from ..study.storage import StudyTrials, open_study_readonly, outcome_of, storage_url, study_trials
from ..watch.previews import latest_preview
from ..watch.text import fmt

IMPORTANCE_SEED = 0  # fANOVA and the random forest sample; a fixed seed gives the same report twice
TRAINER = "trainer"  # the source of the trainer's own decisions (it skips any non-finite update by itself)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pruned td { color: #b00; } tr.failed td { color: #777; } tr.best td { font-weight: bold; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
.meta { color: #555; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.importance { display: inline-block; vertical-align: top; margin-right: 2em; }
img { max-width: 100%; }
"""


# ----------------------------------------------------------------------------------------------- trials
def _cell(value: Any, digits: int = 4) -> str:
    """A table cell: a float to ``digits`` decimals, nothing (None) as an empty cell."""
    return fmt(value, f".{digits}f", missing="")


def _param(value: Any) -> str:
    """A parameter value to six significant digits: 2.0 shows as 2 and 0.00259517 as 0.00259517."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def status_and_reason(trial: FrozenTrial) -> str:
    """One line on how a trial ended: its run status and the most specific reason recorded."""
    attrs = trial.user_attrs
    reason = attrs.get("failure") or attrs.get("reason")
    if not reason and attrs.get("traceback"):
        lines = str(attrs["traceback"]).strip().splitlines()
        reason = lines[-1] if lines else ""  # the exception line says what went wrong
    status = attrs.get("status")
    return ": ".join(str(part) for part in (status, reason) if part)


# ----------------------------------------------------------------------------------------------- adapter statistics
@dataclass
class EventStat:
    key: str  # "<source>.<control>"
    total: int  # applied decisions over all trials
    trials: int  # trials in which it was applied at least once


def _counts(trial: FrozenTrial, attr: str) -> dict[str, int]:
    """A trial's ``events`` or ``alarms`` attribute: applied decisions counted by "<source>.<control>"."""
    counts = trial.user_attrs.get(attr) or {}
    return {str(k): int(v) for k, v in counts.items() if is_finite_number(v)}


def event_stats(trials: Iterable[FrozenTrial]) -> list[EventStat]:
    totals: dict[str, list[int]] = {}
    for trial in trials:
        for key, count in _counts(trial, "events").items():
            entry = totals.setdefault(key, [0, 0])
            entry[0] += count
            entry[1] += count > 0
    return [EventStat(key, total, n) for key, (total, n) in sorted(totals.items())]


def adapter_answered_alarm(trial: FrozenTrial) -> bool:
    """An adapter (any source but the trainer) applied an alarm decision in this trial: an emergency rate cut, a
    skipped update or a rollback. Trials recorded before the ``alarms`` attribute existed have none."""
    return any(count > 0 and key.rsplit(".", 1)[0] != TRAINER for key, count in _counts(trial, "alarms").items())


def rescued_trials(trials: Iterable[FrozenTrial]) -> list[int]:
    """Numbers of trials in which an adapter answered an alarm and that still completed: the cases where the
    adapters kept a trial alive that would otherwise have been lost."""
    return sorted(t.number for t in trials
                  if t.state == TrialState.COMPLETE and t.user_attrs.get("status", "completed") == "completed"
                  and adapter_answered_alarm(t))


# ----------------------------------------------------------------------------------------------- importances
EVALUATORS: dict[str, Callable[[], optuna.importance.BaseImportanceEvaluator]] = {
    "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
    "PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),  # deterministic, takes no seed
    "Mean decrease impurity": lambda: optuna.importance.MeanDecreaseImpurityImportanceEvaluator(
        seed=IMPORTANCE_SEED),
}


@dataclass
class Importance:
    name: str
    values: dict[str, float] | None  # None when it could not be computed
    note: str = ""  # why not, or a warning the evaluator gave


def importances(trials: StudyTrials) -> list[Importance]:
    """Each evaluator's importances on the completed trials; never raises: a failure becomes a note."""
    if len(trials.completed) < 2:
        why = f"needs at least 2 completed trials (the study has {len(trials.completed)})"
        return [Importance(name, None, why) for name in EVALUATORS]
    if not any(t.params for t in trials.completed):
        return [Importance(name, None, "the study has no searched parameters") for name in EVALUATORS]
    # A private in-memory copy of the completed trials: the evaluators read a study, and this one holds only
    # completed trials (no running ones), whatever storage the real study lives in.
    copy = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
    copy.add_trials(trials.completed)
    results = []
    for name, make in EVALUATORS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = optuna.importance.get_param_importances(copy, evaluator=make())
            except Exception as exc:  # an evaluator's error is a note in the report, never a crash
                results.append(Importance(name, None, f"{type(exc).__name__}: {exc}"))
                continue
        notes = sorted({str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)})
        results.append(Importance(name, {k: float(v) for k, v in values.items()}, " ".join(notes)))
    return results


# ----------------------------------------------------------------------------------------------- figures
def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    # Figure + Agg canvas, never pyplot: pyplot keeps global state (see tts/plots.py).
    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def importance_png(imp: Importance) -> bytes:
    names = list(imp.values or {})[::-1]  # most important on top
    values = [imp.values[n] for n in names] if imp.values else []
    fig = _figure(5.5, 0.4 * max(len(names), 1) + 1.0)
    ax = fig.add_subplot()
    ax.barh(names, values, color="#4878a8")
    ax.set_xlabel("importance")
    ax.set_title(imp.name, fontsize=10)
    return _png(fig)


def _last_intermediate(trial: FrozenTrial) -> tuple[int, float] | None:
    finite = [(step, v) for step, v in sorted(trial.intermediate_values.items()) if is_finite_number(v)]
    return finite[-1] if finite else None


def history_png(trials: StudyTrials) -> bytes:
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    completed = sorted(trials.completed, key=lambda t: t.number)
    if completed:
        ax.plot([t.number for t in completed], [t.value for t in completed], "o", color="#4878a8",
                label="completed trial")
        best, xs, ys = math.inf, [], []
        for t in completed:
            best = min(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="#2a9d2a", label="best so far")
    stopped = [(t.number, last[1]) for t in trials.pruned if (last := _last_intermediate(t))]
    if stopped:
        ax.plot(*zip(*stopped), "x", color="#c00", markersize=9, label="pruned (its last reported value)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not fractions
    ax.set_xlabel("trial")
    ax.set_ylabel("objective value")
    if completed or stopped:
        ax.legend(fontsize=8)
    return _png(fig)


def intermediate_png(trials: StudyTrials) -> bytes:
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    best = trials.best
    for t in trials.results:
        points = sorted((s, v) for s, v in t.intermediate_values.items() if is_finite_number(v))
        if not points:
            continue
        steps, values = zip(*points)
        # Small dots on every line: a trial with a single evaluation is a point, not an invisible line.
        if t.state == TrialState.PRUNED:
            ax.plot(steps, values, ".-", color="#c00", alpha=0.8, linewidth=1)
            ax.plot(steps[-1], values[-1], "x", color="#c00", markersize=9)
        elif t.state == TrialState.COMPLETE:
            is_best = best is not None and t.number == best.number
            ax.plot(steps, values, ".-", color="#2a9d2a" if is_best else "#4878a8",
                    linewidth=2.5 if is_best else 1, alpha=1.0 if is_best else 0.6)
        else:
            ax.plot(steps, values, ".--", color="#888", linewidth=1)
    # Proxy artists: one legend entry per kind of line, not one per trial.
    ax.plot([], [], color="#4878a8", label="completed trial")
    ax.plot([], [], color="#2a9d2a", linewidth=2.5, label="best trial")
    ax.plot([], [], color="#c00", marker="x", label="pruned trial (x: where it was stopped)")
    ax.plot([], [], color="#888", linestyle="--", label="failed or running trial")
    ax.set_xlabel("training step")
    ax.set_ylabel("objective value")
    ax.legend(fontsize=8)
    return _png(fig)


# ----------------------------------------------------------------------------------------------- HTML pieces
def esc(value: Any) -> str:
    return html.escape(str(value))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png, "image/png")}" alt="{esc(alt)}">'


def note(text: str, id_: str | None = None) -> str:
    id_attr = f' id="{esc(id_)}"' if id_ else ""
    return f'<p class="note"{id_attr}>{esc(text)}</p>'


def table(headers: list[str], rows: Iterable[list[Any]], id_: str | None = None,
          row_attrs: Iterable[str] | None = None, numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells are escaped, columns in ``numeric`` right-aligned."""
    numeric = set(numeric)
    row_attrs = list(row_attrs) if row_attrs is not None else None
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="num">{esc(c)}</td>' if j in numeric else f"<td>{esc(c)}</td>"
                        for j, c in enumerate(row))
        attrs = f" {row_attrs[i]}" if row_attrs else ""
        body.append(f"<tr{attrs}>{cells}</tr>")
    id_attr = f' id="{esc(id_)}"' if id_ else ""
    return f"<table{id_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def config_yaml(config: dict[str, Any]) -> str:
    """The trial's config as the project writes it (``best --out``); as stored when it no longer validates
    (a config saved by an older version with keys since renamed)."""
    try:
        return to_yaml(build_config(config))
    except (ConfigError, TypeError, ValueError):
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------------- sections
def header_section(study: optuna.Study, trials: StudyTrials, storage: str | None) -> str:
    counts = (f"{len(trials.completed)} completed, {len(trials.pruned)} pruned, {len(trials.failed)} failed")
    others = len(trials.running) + len(trials.waiting)
    if others:
        counts += f", {others} running or waiting"
    meta = []
    if storage:
        meta.append(f"storage: {redact_url(storage)}")
    if study.user_attrs.get("objective"):
        meta.append(f"objective: {study.user_attrs['objective']}")
    meta.append("direction: minimize (lower is better)")
    return (f"<h1>Study {esc(study.study_name)}</h1>"
            f'<p class="meta">{" &middot; ".join(esc(m) for m in meta)}</p>'
            f'<p id="counts"><b>{len(trials.results)} trials</b>: {esc(counts)}</p>')


def best_section(trials: StudyTrials) -> str:
    best = trials.best
    if best is None:
        return "<h2>Best trial</h2>" + note("No completed trial yet: there is no best trial, no best config and "
                                            "no preview to show.", "no-best")
    facts = table(["trial", "value", "diagonality", "final step", "run dir"],
                  [[best.number, _cell(best.value), _cell(best.user_attrs.get("diagonality"), 3),
                    _cell(best.user_attrs.get("step")), _cell(best.user_attrs.get("run_dir"))]],
                  id_="best", numeric=(0, 1, 2, 3))
    params = table(["parameter", "value"], [[k, _param(v)] for k, v in sorted(best.params.items())],
                   id_="best-params")
    config = best.user_attrs.get("config")
    config_html = (f"<pre>{esc(config_yaml(config))}</pre>" if isinstance(config, dict)
                   else note("The trial has no stored config."))
    return (f"<h2>Best trial: {best.number}</h2>{facts}<h3>Parameters</h3>{params}"
            f"<details><summary>Full training config (YAML)</summary>{config_html}</details>")


def importance_section(trials: StudyTrials) -> str:
    parts = ["<h2>Hyperparameter importances</h2>",
             '<p class="meta">How much of the variation of the objective each parameter explains, over the '
             "completed trials (normalized to sum to 1). Few trials make these rough.</p>"]
    for imp in importances(trials):
        block = [f"<h3>{esc(imp.name)}</h3>"]
        if imp.values is None:
            block.append(note(f"Not computed: {imp.note}"))
        else:
            block.append(img(importance_png(imp), f"{imp.name} importances"))
            block.append(table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp.values.items()],
                               numeric=(1,)))
            if imp.note:
                block.append(note(imp.note))
        parts.append(f'<div class="importance">{"".join(block)}</div>')
    return "".join(parts)


def history_section(trials: StudyTrials) -> str:
    if not trials.completed and not trials.pruned:
        return "<h2>Optimization history</h2>" + note("No trial reported a value yet.")
    return ("<h2>Optimization history</h2>" + img(history_png(trials), "optimization history")
            + "<h2>Intermediate values</h2>"
            + '<p class="meta">The objective at each evaluation of each trial. Red lines are pruned trials; '
              "the x marks where Optuna stopped them.</p>"
            + img(intermediate_png(trials), "intermediate values of every trial"))


def adapter_section(trials: StudyTrials) -> str:
    stats = event_stats(trials.results)
    parts = ["<h2>Adapter statistics</h2>",
             '<p class="meta">Applied adapter decisions, as &lt;source&gt;.&lt;control&gt;: how often over all '
             "trials, and in how many trials at least once.</p>"]
    if stats:
        parts.append(table(["decision", "total", "trials"], [[s.key, s.total, s.trials] for s in stats],
                           id_="adapter-stats", numeric=(1, 2)))
    else:
        parts.append(note("No trial recorded an adapter decision."))
    rescued = rescued_trials(trials.results)
    listed = ", ".join(str(n) for n in rescued) if rescued else "none"
    parts.append(f'<p id="rescued"><b>Trials rescued by the adapters</b> (an adapter answered an emergency, a '
                 f"skipped update or a rollback, and the trial still completed): "
                 f"<span id=\"rescued-count\">{len(rescued)}</span> &mdash; "
                 f'<span id="rescued-list">{esc(listed)}</span></p>')
    return "".join(parts)


def trials_section(trials: StudyTrials) -> str:
    names = sorted({k for t in trials.results for k in t.params})
    best = trials.best
    ordered = trials.results
    rows = [[t.number, outcome_of(t), _cell(t.value) if t.state == TrialState.COMPLETE else "",
             _cell(t.user_attrs.get("diagonality"), 3), _cell(t.user_attrs.get("step")), status_and_reason(t),
             *(_param(t.params[n]) if n in t.params else "" for n in names)] for t in ordered]
    attrs = [f'id="trial-{t.number}" class="{outcome_of(t)}'
             f'{" best" if best is not None and t.number == best.number else ""}"' for t in ordered]
    return ("<h2>Trials</h2>" + table(["trial", "state", "value", "diagonality", "final step", "status / reason",
                                       *names], rows, id_="trials", row_attrs=attrs, numeric=(0, 2, 3, 4)))


def preview_section(trials: StudyTrials) -> str:
    best = trials.best
    head = "<h2>Best trial preview</h2>"
    if best is None:
        return head + note("No completed trial, so no preview.")
    run_dir = best.user_attrs.get("run_dir")
    found = latest_preview(run_dir) if run_dir else None
    if found is None:
        return head + note(f"No preview found for trial {best.number} (run dir {run_dir or 'not recorded'}); "
                           "the report reads <run dir>/previews/, relative to where it runs.")
    step, files = found
    parts = [head, f'<p class="meta">Trial {best.number}, step {step}: the last evaluation\'s preview.</p>']
    for name, title in (("alignment.png", "Alignment (teacher-forced, one validation sentence)"),
                        ("mel.png", "Mel spectrograms: target and predicted")):
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(img(files[name].read_bytes(), title) if name in files else note(f"No {name} in this preview."))
    parts.append("<h3>Audio (free-running mel, Griffin-Lim)</h3>")
    if "audio.wav" in files:
        parts.append(f'<audio controls src="{data_uri(files["audio.wav"].read_bytes(), "audio/wav")}"></audio>')
    else:
        parts.append(note("No audio.wav in this preview."))
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- report
def render_report(study: optuna.Study, storage: str | None = None) -> str:
    trials = study_trials(study)
    sections = [header_section(study, trials, storage), best_section(trials), preview_section(trials),
                importance_section(trials), history_section(trials), adapter_section(trials),
                trials_section(trials)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Study {esc(study.study_name)}: smart_tuner report</title><style>{CSS}</style></head>"
            f"<body>{''.join(sections)}</body></html>\n")


def build_report(study: optuna.Study, out: Path, storage: str | None = None) -> Path:
    """Write the study's report to ``out`` (one self-contained HTML file, written atomically: a browser
    reloading it never sees half a report); returns its path."""
    return write_atomic(out, render_report(study, storage))


def write_report(study: str, storage: str | None, out: str | Path) -> int:
    """``report``: the report of an existing study written to ``out`` (an earlier report there is replaced)."""
    check_output_file(out, replace=True)
    path = build_report(open_study_readonly(study, storage), Path(out), storage=storage_url(study, storage))
    print(f"wrote {path}", file=sys.stdout)
    return 0
