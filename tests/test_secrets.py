"""Storage and tracking passwords written in any of a URL's places never reach a log line, an error or a report
(issue 14, item 4): the query form (``?password=``), an empty user (``://:pw@``) and the usual ``user:pw@``."""

from __future__ import annotations

from pathlib import Path

import pytest

from smart_tuner.redact import redact_url

SECRET = "S3cr3tPw"
DEMO = Path(__file__).resolve().parents[1] / "objectives" / "demo.yaml"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://tuner:{SECRET}@db:5432/studies", "postgresql://tuner:***@db:5432/studies"),
    (f"postgresql://:{SECRET}@db/studies", "postgresql://:***@db/studies"),
    (f"postgresql://tuner@db/studies?password={SECRET}", "postgresql://tuner@db/studies?password=***"),
    (f"postgresql://db/studies?sslmode=require&PASSWORD={SECRET}&x=1",
     "postgresql://db/studies?PASSWORD=***&sslmode=require&x=1"),
    # SQLAlchemy connects with a password holding "/", "#", "?" or "@" written as it is: all of it is hidden
    (f"postgresql+psycopg2://tuner:{SECRET}/x#y?z@db/studies", "postgresql+psycopg2://tuner:***@db/studies"),
    (f"postgresql://tuner:{SECRET}?a=b@db:5432/studies?sslmode=require",
     "postgresql://tuner:***@db:5432/studies?sslmode=require"),
    (f"http://user:{SECRET}@mlflow.example:5000", "http://user:***@mlflow.example:5000"),
    ("mlflow/mlruns", "mlflow/mlruns"),
    (f"https://mlflow.example/api?token={SECRET}", "https://mlflow.example/api?token=***"),
    ("sqlite:///studies/s.db", "sqlite:///studies/s.db"),
])
def test_every_place_a_password_can_sit_in_a_url_is_redacted(url, shown):
    assert redact_url(url) == shown


OPTIMIZE = ["optimize", "--trials", "1", "--objective", str(DEMO), "--study", "s"]
REPORT, BEST = ["report", "--out", "r.html", "--study", "s"], ["best", "--study", "s"]
# Issue 22, row 1: a password holding "/", "#" or "?" (SQLAlchemy connects with it), through every command that
# opens a storage; the two older forms through the three commands that open one first.
SPECIAL = f"postgresql+psycopg2://tuner:{SECRET}/x#y?z@127.0.0.1:1/studies"


@pytest.mark.parametrize(("url", "command"), [
    *[(url, command) for url in (f"postgresql://tuner@127.0.0.1:1/studies?password={SECRET}",
                                 f"postgresql://:{SECRET}@127.0.0.1:1/studies")
      for command in (OPTIMIZE, REPORT, BEST)],
    *[(SPECIAL, command) for command in (OPTIMIZE, REPORT, BEST, ["dashboard", "--study", "s", "--port", "1"],
                                         ["train", "--from-study", "s"],
                                         ["synthesize", "--from-study", "s", "--text", "hi", "--out", "o"])]])
def test_a_storage_that_cannot_be_reached_is_one_error_line_without_its_password(tmp_path, url, command, cli_main):
    """A real connection attempt (nothing listens on port 1): the driver's own message quotes the URL's parts."""
    result = cli_main(*command, "--storage", url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "***" in result.stderr and "Traceback" not in result.stderr
