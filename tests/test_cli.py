"""End-to-end tests of the command line: user errors are one clear line and exit code 2, never a traceback.

Every test calls ``smart_tuner.cli.main`` in this process through conftest's ``cli_main``, which prints and returns
what ``python -m smart_tuner`` would (the warnings a fresh interpreter shows included), without starting one each;
one config error runs ``python -m smart_tuner`` as a process, to prove the module's own entry point.
Nothing here trains: every ``train`` call stops at the config, the corpus check or the resume check.
"""

from __future__ import annotations

import re
import shutil

import pytest

from smart_tuner import cli

from .conftest import cli_process

CYRILLIC = re.compile(r"[А-Яа-яЁё]")


@pytest.fixture
def run_main(cli_main):
    """``cli.main`` in this process, in a working directory of the test's choice."""
    return lambda cwd, *args: cli_main(*args, cwd=cwd)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_user_error(result) -> str:
    """Exit code 2, exactly one ``error:`` line, no traceback; returns the whole stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    assert len(error_lines(result)) == 1, result.stderr
    return result.stderr


@pytest.fixture
def corpus(corpus_en, tmp_path):
    """A private copy of the session's English demo corpus (24 sentences)."""
    return shutil.copytree(corpus_en, tmp_path / "corpus")


def meta_lines(corpus) -> list[str]:
    return (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()


def uid_at(corpus, number: int) -> str:
    return meta_lines(corpus)[number - 1].split("|")[0]


# ------------------------------------------------------------------------------------ config errors
def test_python_m_smart_tuner_reports_an_unknown_key_as_one_error_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("preset: demo\ntrain:\n  lrr: 0.01\n", encoding="utf-8")
    result = cli_process("train", "--config", "bad.yaml", "--no-progress", cwd=tmp_path)
    stderr = assert_user_error(result)
    assert stderr.strip().splitlines() == error_lines(result)  # nothing else on stderr
    line = error_lines(result)[0]
    assert "bad.yaml" in line
    assert "train.lrr" in line
    assert "lr, batch_size" in line  # the known keys are listed
    assert not (tmp_path / "runs").exists()


def test_train_set_value_of_wrong_type(tmp_path, run_main):
    result = run_main(tmp_path, "train", "--set", "train.lr=abc", "--no-progress")
    stderr = assert_user_error(result)
    assert stderr.strip().splitlines() == error_lines(result)
    line = error_lines(result)[0]
    assert "train.lr" in line
    assert "abc" in line
    assert not (tmp_path / "runs").exists()


def test_train_set_without_equals_sign(tmp_path, run_main):
    result = run_main(tmp_path, "train", "--set", "train.lr", "--no-progress")
    assert_user_error(result)
    assert "key=value" in error_lines(result)[0]


def test_train_missing_config_file(tmp_path, run_main):
    result = run_main(tmp_path, "train", "--config", "nowhere.yaml", "--no-progress")
    assert_user_error(result)
    line = error_lines(result)[0]
    assert "nowhere.yaml" in line
    assert "no such" in line


# ------------------------------------------------------------------------------------ corpus errors
def test_train_refuses_corpus_with_too_many_bad_lines(corpus, tmp_path, run_main):
    for number in (3, 6, 9, 12):  # 4 of 24 = 17% > data.max_bad_share = 10%
        (corpus / "wavs" / f"{uid_at(corpus, number)}.wav").unlink()
    run_dir = tmp_path / "run"
    result = run_main(tmp_path, "train", "--corpus", corpus, "--run-dir", run_dir,
                     "--set", f"data.cache_dir={tmp_path / 'cache'}", "--no-progress")
    stderr = assert_user_error(result)
    line = error_lines(result)[0]
    assert str(corpus / "metadata.csv") in line
    assert "4 of 24" in line
    assert "data.max_bad_share" in line
    assert f"{corpus / 'metadata.csv'}:3:" in stderr  # the first problems follow, with file:line
    # Nothing was trained or saved; the report of the bad lines is there.
    assert not list(run_dir.rglob("*.pt"))
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    report = (run_dir / "data_report.txt").read_text(encoding="utf-8")
    assert report.count("missing") == 4


def test_data_check_lists_bad_lines_with_file_and_line(corpus, tmp_path, run_main):
    lines = meta_lines(corpus)
    (corpus / "wavs" / f"{uid_at(corpus, 5)}.wav").unlink()
    lines[9] = "only one column"
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = run_main(tmp_path, "data", "check", corpus)
    assert result.returncode == 0, result.stderr  # 2 of 24 is within the default 10%
    assert "Traceback" not in result.stderr
    meta = corpus / "metadata.csv"
    out = result.stdout
    assert f"{meta}:5: {uid_at(corpus, 5)}: missing" in out
    assert f"{meta}:10:" in out and "columns" in out
    assert "24 lines, 22 usable, 2 bad" in out


def test_data_check_refuses_too_many_bad_lines(corpus, tmp_path, run_main):
    for number in (1, 2, 3):  # 3 of 24 = 12.5%
        (corpus / "wavs" / f"{uid_at(corpus, number)}.wav").unlink()
    result = run_main(tmp_path, "data", "check", corpus)
    assert_user_error(result)
    assert "data.max_bad_share" in error_lines(result)[0]
    assert f"{corpus / 'metadata.csv'}:1:" in result.stdout

    relaxed = run_main(tmp_path, "data", "check", corpus, "--max-bad-share", "0.2")
    assert relaxed.returncode == 0, relaxed.stderr
    assert "3 bad" in relaxed.stdout


def test_data_check_missing_corpus(tmp_path, run_main):
    result = run_main(tmp_path, "data", "check", tmp_path / "nothing")
    assert_user_error(result)
    assert "nothing" in error_lines(result)[0]


# ------------------------------------------------------------------------------------ demo corpus
def test_data_demo_writes_a_cyrillic_corpus(tmp_path, run_main):
    out = tmp_path / "demo_ru"
    result = run_main(tmp_path, "data", "demo", "--out", out, "--size", 5, "--lang", "ru")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    rows = [line.split("|") for line in (out / "metadata.csv").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5
    for uid, text, normalized in rows:
        assert CYRILLIC.search(text)
        assert normalized == text
        assert (out / "wavs" / f"{uid}.wav").stat().st_size > 1000


# ------------------------------------------------------------------------------------ resume
def test_train_resume_without_checkpoint(tmp_path, run_main):
    run_dir = tmp_path / "empty_run"
    run_dir.mkdir()
    result = run_main(tmp_path, "train", "--resume", "--run-dir", run_dir, "--no-progress")
    assert_user_error(result)
    line = error_lines(result)[0]
    assert "--resume" in line
    assert "no checkpoint" in line
    assert str(run_dir) in line
    assert list(run_dir.iterdir()) == []  # nothing written into it


HOSTILE = [  # (arguments, with {dir}, {file}, {foreign}, {corpus} filled in; what the error says)
    (["train", "--config", "{dir}"], "is a directory"),
    (["train", "--run-dir", "{file}", "--corpus", "{corpus}", "--max-steps", "1"], "is a file, not a directory"),
    (["report", "--study", "s", "--storage", "sqlite:///{dir}/none.db", "--out", "{dir}/r.html"], "no study storage"),
    (["dashboard", "--study", "s", "--port", "99999"], "99999 is not a TCP port (1-65535)"),
    (["data", "demo", "--out", "{file}", "--size", "4"], "exists and is not a directory; choose another"),
    (["data", "demo", "--out", "{foreign}", "--size", "4"], "choose another directory (--out)"),
    (["data", "demo", "--size", "0"], "0 is below the minimum of 1"),
]


@pytest.mark.parametrize(("argv", "message"), HOSTILE, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in
                                                           enumerate(HOSTILE)])
def test_bad_arguments_found_by_a_hostile_user_are_one_error_line(tmp_path, corpus_en, run_main, argv, message):
    """Issue 14, item 7: each is one `error` line with exit status 2, no traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    places = {"dir": tmp_path, "file": a_file, "foreign": foreign, "corpus": corpus_en}
    result = run_main(tmp_path, *[a.format(**places) for a in argv])
    assert result.returncode == 2, (argv, result.stderr)  # argparse's errors are "prog: error: ...", ours "error: ..."
    assert "Traceback" not in result.stderr and message in result.stderr, (argv, result.stderr)
    assert (foreign / "notes.txt").read_text() == "keep" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert a_file.read_text() == "x"


def test_the_atomic_writer_refuses_a_directory(tmp_path):
    """--out naming a directory: the report is not written over it."""
    from smart_tuner.files import write_atomic

    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_atomic(tmp_path, "x")


def test_help_lists_every_command_but_the_hidden_worker(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "SUPPRESS" not in text and "worker" not in text
    for name in ("train", "synthesize", "convert", "optimize", "best", "data", "dashboard", "mlflow-ui", "report",
                 "debug"):
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.MULTILINE), name
    # Hidden is not gone: optimize starts its worker processes with it.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["worker", "--help"])
    assert exit_info.value.code == 0 and "--mlflow-parent" in capsys.readouterr().out
