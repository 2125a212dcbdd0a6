"""The study report: a real small study (real training runs, their previews) plus crafted trials, written
through the CLI and read back as HTML, as decoded media, and as a browser renders it."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from smart_tuner.study.optimize import optimize
from smart_tuner.study.options import StudyOptions
from smart_tuner.view.report import build_report
from smart_tuner.watch.previews import latest_preview

from .chromium import dump_dom
from .conftest import TINY_MODEL

STUDY = "report-demo"
DISTRIBUTIONS = {"train.lr": FloatDistribution(5e-4, 5e-3, log=True), "loss.ga_weight": FloatDistribution(1.0, 5.0)}


class Tables(HTMLParser):
    """Cell texts of every table with an id: {id: [[cell, ...], ...]} (body rows), and row ids."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_ids: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self.tables[self._table].append([])
            if attrs.get("id"):
                self.row_ids.append(attrs["id"])
        elif tag == "td" and self._table and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def crafted(number_value, state, events=None, status=None, **attrs):
    """A trial with given state, value and attributes, as a worker would have left it (``alarms`` only when
    given: trials recorded before it existed have none)."""
    value, lr = number_value
    user_attrs = {"events": events or {}, **({"status": status} if status else {}), **attrs}
    intermediate = {5: (value or 3.0) + 0.5, 10: value or 3.0} if state != TrialState.FAIL else {}
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                        params={"train.lr": lr, "loss.ga_weight": 2.0}, distributions=DISTRIBUTIONS,
                        user_attrs=user_attrs, intermediate_values=intermediate)


@pytest.fixture(scope="module")
def real_study(corpus_en, tmp_path_factory):
    """Two real trials (4 steps of the tiny model each, one evaluation and its preview at the end), then a
    pruned and a failed trial as other workers would have left them."""
    root = tmp_path_factory.mktemp("report")
    config = {"preset": "demo", "model": TINY_MODEL, "tracking": {"enabled": False},
              "data": {"corpus": str(corpus_en), "val_size": 4, "free_running_sentences": 2,
                       "cache_dir": str(root / "cache")},
              # One thread: these runs are tiny, and a second thread only waits for a core on a busy machine.
              "train": {"batch_size": 4, "max_steps": 4, "eval_every": 4, "num_threads": 1}}
    space = {"train.lr": {"type": "float", "low": 5e-4, "high": 5e-3, "log": True},
             "loss.ga_weight": {"type": "float", "low": 1.0, "high": 5.0}}
    objective = root / "tiny.yaml"
    objective.write_text(yaml.safe_dump({"config": config, "search_space": space, "score": {"alignment_penalty": 1.0},
                                         "pruning": {"pruner": "none"}}))
    storage = f"sqlite:///{root}/s.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # whatever a study writes relative to the working directory stays in the test's folder
        study = optimize(StudyOptions(objective=objective, study=STUDY, storage=storage, runs_dir=root / "runs",
                                      seed=0, trials=2), progress=False)
    study.add_trial(crafted((None, 4e-3), TrialState.PRUNED, {"lr.lr": 1}, "stopped",
                            reason="pruned by Optuna at step 10", step=10))
    study.add_trial(crafted((None, 1e-3), TrialState.FAIL,
                            traceback="Traceback (most recent call last):\nRuntimeError: disk on fire"))
    return root, storage, study


@pytest.fixture(scope="module")
def cli_report(real_study, cli_main):
    root, storage, _study = real_study
    out = root / "out" / "report.html"
    result = cli_main("report", "--study", STUDY, "--storage", storage, "--out", out, cwd=root)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    return out, out.read_text(encoding="utf-8")


def best_of(study):
    return min(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)


def test_cli_writes_a_self_contained_report_of_every_trial(real_study, cli_report):
    _root, _storage, study = real_study
    out, text = cli_report
    trials = study.get_trials()
    assert len(trials) == 4 and [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2
    assert STUDY in text and f"{best_of(study).value:.4f}" in text
    tables = Tables(text)
    # Every trial has its row.
    assert tables.row_ids == ["trial-0", "trial-1", "trial-2", "trial-3"]
    rows = {row[0]: row for row in tables.tables["trials"]}
    assert rows["2"][1] == "pruned" and "pruned by Optuna at step 10" in rows["2"][5]
    assert rows["3"][1] == "failed" and rows["3"][5] == "RuntimeError: disk on fire"
    assert rows["0"][4] == "4" and rows["0"][5].startswith("completed")
    assert 'id="trial-2" class="pruned"' in text
    assert "2 completed, 1 pruned, 1 failed" in text
    assert tables.tables["best"][0][0] == str(best_of(study).number)
    # Importances: each evaluator has a chart and a table of both searched parameters.
    assert "Hyperparameter importances" in text
    for name in ("fANOVA", "PED-ANOVA", "Mean decrease impurity"):
        assert f'alt="{name} importances"' in text
    # Self-contained: media inline, nothing fetched from the network.
    assert text.count("data:image/png;base64,") >= 7  # alignment, mel, 3 importances, history, curves
    assert "data:audio/wav;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text
    assert not list(out.parent.glob("*.tmp"))  # the atomic write left no temporary file
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, unlike the private temporary file


def test_best_trial_config_and_audio_are_the_trials_own(real_study, cli_report):
    _, _, study = real_study
    _, text = cli_report
    best = best_of(study)
    match = re.search(r'<audio controls src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', text)
    assert match, "no embedded audio"
    audio = base64.b64decode(match.group(1))
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    step, files = latest_preview(best.user_attrs["run_dir"])
    assert step == 4 and audio == files["audio.wav"].read_bytes()
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert files["alignment.png"].read_bytes() in [base64.b64decode(p) for p in pngs]
    config = yaml.safe_load(re.search(r"<pre>(.*?)</pre>", text, re.S).group(1).replace("&#x27;", "'")
                            .replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert config["train"]["lr"] == pytest.approx(best.params["train.lr"])
    assert config["loss"]["ga_weight"] == pytest.approx(best.params["loss.ga_weight"])


def test_browser_renders_trials_images_and_audio(real_study, cli_report):
    out, _ = cli_report
    dom = dump_dom(out.as_uri())
    assert f"Study {STUDY}" in dom
    tables = Tables(dom)
    assert tables.row_ids == [f"trial-{n}" for n in range(4)]
    assert [row[0] for row in tables.tables["trials"]] == ["0", "1", "2", "3"]
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) >= 7
    assert re.search(r"<audio [^>]*controls", dom)


def test_adapter_statistics_and_rescued_trials_match_the_trials(tmp_path):
    study = optuna.create_study(study_name="events", storage=f"sqlite:///{tmp_path}/e.db", direction="minimize")
    study.add_trial(crafted((1.0, 1e-3), TrialState.COMPLETE,  # rescued: the rate adapter's emergency
                            {"lr.lr": 3, "lr.skip_update": 1, "ga.ga_weight": 5}, "completed",
                            alarms={"lr.lr": 1, "lr.skip_update": 1}))
    study.add_trial(crafted((0.5, 2e-3), TrialState.COMPLETE, {"lr.lr": 2, "ga.ga_weight": 0}, "completed",
                            alarms={}))
    study.add_trial(crafted((None, 3e-3), TrialState.PRUNED,  # an emergency, but pruned: not rescued
                            {"grad.rollback": 1, "trainer.skip_update": 2}, "stopped",
                            alarms={"grad.rollback": 1, "trainer.skip_update": 2}))
    study.add_trial(crafted((None, 4e-3), TrialState.FAIL, {"lr.rollback": 2}, "failed",
                            failure="rollback budget spent (2 of 2)", alarms={"lr.rollback": 2}))
    study.add_trial(crafted((2.0, 6e-4), TrialState.COMPLETE,  # rescued: the trainer skipped, then a rollback
                            {"trainer.skip_update": 2, "lr.rollback": 1}, "completed",
                            alarms={"trainer.skip_update": 2, "lr.rollback": 1}))
    study.add_trial(crafted((3.0, 8e-4), TrialState.COMPLETE,  # only the trainer's own skip: no adapter rescued it
                            {"trainer.skip_update": 3}, "completed", alarms={"trainer.skip_update": 3}))
    study.add_trial(crafted((4.0, 9e-4), TrialState.COMPLETE,  # recorded before alarms existed: not rescued
                            {"lr.rollback": 1}, "completed"))
    text = build_report(study, tmp_path / "r.html").read_text()
    stats = {row[0]: (int(row[1]), int(row[2])) for row in Tables(text).tables["adapter-stats"]}
    assert stats == {"ga.ga_weight": (5, 1), "grad.rollback": (1, 1), "lr.lr": (5, 2), "lr.rollback": (4, 3),
                     "lr.skip_update": (1, 1), "trainer.skip_update": (7, 3)}
    assert re.search(r'<span id="rescued-count">2</span>', text)
    assert re.search(r'<span id="rescued-list">0, 4</span>', text)
    tables = Tables(text)
    assert tables.tables["best"][0][:2] == ["1", "0.5000"]
    rows = {row[0]: row for row in tables.tables["trials"]}
    assert set(rows) == {"0", "1", "2", "3", "4", "5", "6"}
    assert rows["3"][5] == "failed: rollback budget spent (2 of 2)"
    assert "No preview found for trial 1" in text  # crafted trials have no run dir


def test_a_study_without_completed_trials_still_reports(tmp_path):
    study = optuna.create_study(study_name="hopeless", storage=f"sqlite:///{tmp_path}/h.db")
    study.add_trial(crafted((None, 1e-3), TrialState.PRUNED, {"lr.rollback": 1}, "stopped"))
    study.add_trial(crafted((None, 2e-3), TrialState.FAIL, failure="rollback budget spent"))
    text = build_report(study, tmp_path / "r.html").read_text()
    assert 'id="no-best"' in text and "No completed trial yet" in text
    assert text.count("needs at least 2 completed trials (the study has 0)") == 3
    assert 'id="trial-0"' in text and 'id="trial-1"' in text
    assert '<span id="rescued-count">0</span>' in text and "data:audio/wav" not in text
    assert text.rstrip().endswith("</html>")
    empty = optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path}/h.db")
    assert "0 trials" in build_report(empty, tmp_path / "e.html").read_text()


def test_unknown_study_is_a_clear_cli_error(real_study, cli_main):
    root, storage, _ = real_study
    result = cli_main("report", "--study", "nope", "--storage", storage, "--out", root / "nope.html", cwd=root)
    assert result.returncode == 2
    assert "error: no study 'nope'" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "nope.html").exists()
