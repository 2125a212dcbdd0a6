"""Reading a study or a run directory never imports torch: the modules of ``report``, ``dashboard``, the study's
storage and the run directory's reader (``run_logs``, and ``debug``'s summary that uses it), and the study
commands run end to end (their error paths too), each in a fresh interpreter that would notice torch in
``sys.modules``."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

# Runs the command line as ``python -m smart_tuner`` does, then says whether torch was imported on the way.
WRAPPER = """
import sys
from smart_tuner.cli import main

code = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
sys.exit(code)
"""


def fresh_python(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_study_storage_report_and_dashboard_modules_do_not_import_torch(tmp_path):
    modules = ["smart_tuner.yaml_reader", "smart_tuner.numeric", "smart_tuner.redact", "smart_tuner.study",
               "smart_tuner.study.objective_file", "smart_tuner.study.storage", "smart_tuner.study.best",
               "smart_tuner.study.options", "smart_tuner.view.report", "smart_tuner.view.dashboard",
               "smart_tuner.run_logs", "smart_tuner.watch.debug", "smart_tuner.cli"]
    code = f"import sys\nimport {', '.join(modules)}\nprint(sorted(m for m in sys.modules if m.startswith('torch')))"
    result = fresh_python(tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture
def small_study(tmp_path):
    """Three trials made directly with Optuna (no training, no torch): two complete, one pruned."""
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="small", storage=storage, direction="minimize")
    lr = FloatDistribution(1e-4, 1e-2, log=True)
    for value, rate in ((0.4, 1e-3), (0.3, 2e-3)):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"train.lr": rate},
                                     distributions={"train.lr": lr}, intermediate_values={10: value},
                                     user_attrs={"config": {}, "events": {"lr.lr": 1}, "alarms": {}}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"train.lr": 5e-3},
                                 distributions={"train.lr": lr}, intermediate_values={10: 0.9}))
    return storage


def test_report_and_best_run_without_torch(tmp_path, small_study):
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    report = fresh_python(tmp_path, "wrapper.py", "report", "--study", "small", "--storage", small_study,
                          "--out", tmp_path / "report.html")
    assert report.returncode == 0, report.stderr
    assert "torch not imported" in report.stderr
    assert "Study small" in (tmp_path / "report.html").read_text(encoding="utf-8")
    best = fresh_python(tmp_path, "wrapper.py", "best", "--study", "small", "--storage", small_study,
                        "--out", tmp_path / "best.yaml")
    assert best.returncode == 0, best.stderr
    assert "torch not imported" in best.stderr
    assert "# best trial 1 of study small" in (tmp_path / "best.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", [["report", "--study", "nope"], ["dashboard", "--study", "nope"]])
def test_study_errors_are_printed_without_torch(tmp_path, command):
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    result = fresh_python(tmp_path, "wrapper.py", *command)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "torch not imported" in result.stderr
    assert not (tmp_path / "studies").exists()
