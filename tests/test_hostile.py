"""Hostile input on the command line's paths (issue 22): each case is one clear ``error:`` line (exit status 2, no
traceback) and destroys nothing. The rows of the issue's table are named in each test; rows 1 (passwords), 8 and 17b
(NVIDIA checkpoints) and 14-15 (a rank killed) are in test_secrets.py, test_nvidia.py and test_distributed.py."""

from __future__ import annotations

import logging
import os
import pickle
import stat
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from smart_tuner import cli
from smart_tuner.config import ConfigError, build_config
from smart_tuner.cores import CoreShare
from smart_tuner.data.text import SymbolTable
from smart_tuner.tts import checkpoint as ckpt
from smart_tuner.tts.synthesis import SynthesisError, encode_lines, read_lines
from smart_tuner.yaml_reader import MAX_YAML_NODES, read_yaml, yaml_load

from .conftest import tiny_config

# 9 anchors, each a list of nine of the one before: 9^9 (387 million) values from about 500 bytes.
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
    f"*a{i - 1}]\n" for i in range(1, 9))


def run(capsys, *args) -> tuple[int, str]:
    """``cli.main`` in this process: its exit code and its stderr (argparse's errors exit through SystemExit)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_error(capsys, *args) -> str:
    code, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# ------------------------------------------------------------------------------------------ rows 2 and 17a
def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path, capsys):
    """Row 2: as --config, and as an objective's choices; the anchors a real config uses still work."""
    assert len(BOMB) < 600
    with pytest.raises(yaml.YAMLError, match=f"more than {MAX_YAML_NODES:,} values"):
        yaml_load(BOMB)
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    assert "an alias bomb" in one_error(capsys, "train", "--config", config, "--no-progress")
    objective = tmp_path / "objective.yaml"
    objective.write_text(BOMB + "base: {preset: demo}\nspace:\n  train.batch_size: {choices: *a8}\n")
    assert "an alias bomb" in one_error(capsys, "optimize", "--objective", objective, "--trials", "1", "--study",
                                        "s", "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress")
    loop = "a: &a [1, *a]\n"
    with pytest.raises(yaml.YAMLError):
        yaml_load(loop)
    assert yaml_load("base: &b {lr: 1.0e-3}\nother: *b\n") == {"base": {"lr": 1e-3}, "other": {"lr": 1e-3}}


def test_a_device_or_a_huge_file_as_config_is_not_read_to_the_end(tmp_path, capsys):
    """Row 17: --objective /dev/zero read until the kernel killed it."""
    assert "larger than 1 MiB" in one_error(capsys, "optimize", "--objective", "/dev/zero", "--trials", "1",
                                            "--study", "s", "--storage", f"sqlite:///{tmp_path}/s.db")
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        read_yaml(big)


def test_yaml_errors_are_one_line_with_line_and_column(tmp_path, capsys):
    """Row 16: PyYAML's own text spans several lines with an excerpt."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1, 2\n  seed: 3\n")
    line = one_error(capsys, "train", "--config", broken, "--no-progress")
    assert f"{broken}: not valid YAML: line " in line and "column" in line, line


# ------------------------------------------------------------------------------------------ rows 3 and 4
def test_an_out_that_is_a_fifo_or_the_input_is_refused_and_left_alone(tmp_path, capsys):
    """Rows 3 and 4: renaming over a FIFO (or a device) replaced it; convert could write over its own input."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    source = tmp_path / "a.pt"
    source.write_bytes(b"an NVIDIA checkpoint the user has one copy of")
    line = one_error(capsys, "convert", "nvidia", source, "--out", fifo)
    assert "is a device, FIFO or socket, not a regular file" in line
    line = one_error(capsys, "best", "--study", "s", "--storage", f"sqlite:///{tmp_path}/none.db", "--out", fifo)
    assert "is a device, FIFO or socket" in line
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    for extra in ([], ["--force"]):
        assert "is the input" in one_error(capsys, "convert", "nvidia", source, "--out", source, *extra)
        assert "is the input" in one_error(capsys, "convert", "nvidia", source, "--out", tmp_path / "." / "a.pt",
                                           *extra)
    assert source.read_bytes() == b"an NVIDIA checkpoint the user has one copy of"
    existing = tmp_path / "old.pt"
    existing.write_bytes(b"an earlier conversion")
    assert "exists; pass --force" in one_error(capsys, "convert", "nvidia", source, "--out", existing)
    assert existing.read_bytes() == b"an earlier conversion"
    assert "exists and is not a directory" in one_error(capsys, "synthesize", "--checkpoint", source, "--text", "hi",
                                                        "--out", existing)


# ------------------------------------------------------------------------------------------ rows 5, 6, 9, 10
@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_batch_size_below_one_is_refused(tmp_path, capsys, value):
    """Rows 5 and 6: -1 wrote nothing and said it had; 0 was a ValueError traceback."""
    line = one_error(capsys, "synthesize", "--checkpoint", tmp_path / "c.pt", "--text", "hi", "--out", tmp_path / "o",
                     "--batch-size", value)
    assert "--batch-size" in line and "minimum of 1" in line, line
    assert not (tmp_path / "o").exists()


def test_bad_devices_and_seeds_are_one_line(tmp_path, capsys):
    """Rows 9 and 10: RuntimeError and OverflowError tracebacks."""
    for device, why in (("garbage", "not a device name"), ("cuda:abc", "not a device name"),
                        ("meta", "runs on cpu or cuda")):
        line = one_error(capsys, "synthesize", "--checkpoint", tmp_path / "c.pt", "--text", "hi", "--out",
                         tmp_path / "o", "--device", device)
        assert f"device {device!r}: {why}" in line or why in line, line
        assert "train.device" in one_error(capsys, "train", "--set", f"train.device={device}", "--no-progress")
    big = str(2**70)
    assert "--seed" in one_error(capsys, "synthesize", "--checkpoint", tmp_path / "c.pt", "--text", "hi", "--out",
                                 tmp_path / "o", "--seed", big)
    with pytest.raises(ConfigError, match=f"train.seed: {big} must be <= {2**32 - 1}"):
        build_config({"train": {"seed": 2**70}})
    with pytest.raises(ConfigError, match="train.seed: -1 must be >= 0"):
        build_config({"train": {"seed": -1}})


# ------------------------------------------------------------------------------------------ row 7
def test_freezing_every_module_is_refused_at_set_up(corpus_en, tmp_path):
    """Row 7: passed validation, then 'element 0 of tensors does not require grad' at the first step."""
    from smart_tuner.train.errors import TrainingError
    from smart_tuner.train.trainer import Trainer

    config = tiny_config(corpus_en, tmp_path, train={"freeze_modules": ["encoder", "decoder", "postnet"],
                                                     "freeze_steps": 3})
    with pytest.raises(TrainingError, match="freezes every parameter of the model"):
        Trainer(config, tmp_path / "run", progress=False)
    partly = tiny_config(corpus_en, tmp_path, train={"freeze_modules": ["encoder"], "freeze_steps": 3,
                                                     "max_steps": 4})
    assert Trainer(partly, tmp_path / "run2", progress=False).fit().status == "completed"


# ------------------------------------------------------------------------------------------ rows 11 and 12
def test_text_lines_end_at_newlines_only(tmp_path):
    """Row 11: a form feed or NEL inside a line made a 2-line file 3 sentences, numbered past the file's lines."""
    text = tmp_path / "lines.txt"
    text.write_text("one\x0cline\nsecond\x85line\r\n", encoding="utf-8")
    assert read_lines(None, str(text)) == ["one\x0cline", "second\x85line"]


def test_a_line_with_nothing_left_to_say_is_refused(tmp_path):
    """Row 12: --drop-missing leaving a space decoded 1000 frames of noise to the step limit."""
    symbols = SymbolTable.from_texts(["hello, world"])
    loaded = type("Loaded", (), {"symbols": symbols})()
    with pytest.raises(SynthesisError, match="lines.txt:2: nothing left to say after dropping unknown characters"):
        encode_lines(loaded, ["hello", "ж ж"], drop_missing=True, origin="lines.txt")
    with pytest.raises(SynthesisError, match="--text:1: nothing left to say"):
        encode_lines(loaded, ["  ,  "], origin="--text")
    assert len(encode_lines(loaded, ["hello ж"], drop_missing=True)) == 1


# ------------------------------------------------------------------------------------------ row 13
def test_the_core_share_registry_is_private_and_never_follows_a_link(tmp_path, monkeypatch, caplog):
    """Row 13: a pre-made symlink was followed, umask 000 gave 0777/0666, a file in the way aborted training."""
    monkeypatch.delenv("SMART_TUNER_CORE_SHARE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"smart_tuner-{os.getuid()}").symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="smart_tuner.cores"), CoreShare(cores=2) as share:
        assert share.members() == 1 and share.directory is None
    assert list(elsewhere.iterdir()) == []
    assert "symbolic link" in caplog.text and "SMART_TUNER_CORE_SHARE" in caplog.text
    (tmp_path / f"smart_tuner-{os.getuid()}").unlink()

    old = os.umask(0)
    try:
        with CoreShare(cores=2) as share:
            entry_mode = stat.S_IMODE(os.stat(share.entry).st_mode)
            folders = [stat.S_IMODE(os.stat(f).st_mode) for f in share.folders]
    finally:
        os.umask(old)
    assert entry_mode == 0o600 and folders == [0o700, 0o700]

    caplog.clear()
    in_the_way = tmp_path / "registry"
    in_the_way.write_text("not a folder")
    monkeypatch.setenv("SMART_TUNER_CORE_SHARE", str(in_the_way))
    with caplog.at_level(logging.WARNING, logger="smart_tuner.cores"), CoreShare(cores=2) as share:
        assert share.members() == 1
    assert "exists and is not a directory" in caplog.text and "SMART_TUNER_CORE_SHARE" in caplog.text
    assert in_the_way.read_text() == "not a folder"


# ------------------------------------------------------------------------------------------ row 16
class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoint_errors_are_one_line_and_never_advise_unsafe_loading(tmp_path, capsys):
    """Row 16: torch's six lines ended in 'Re-running with weights_only set to False will likely succeed'."""
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    for path, why in ((evil, "holds Python objects besides tensors"), (garbage, "not a readable checkpoint")):
        line = one_error(capsys, "synthesize", "--checkpoint", path, "--text", "hi", "--out", tmp_path / "o")
        assert why in line and "weights_only" not in line and "False" not in line, line
    assert pickle.loads(pickle.dumps(1)) == 1  # (pickle itself is untouched)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    weights = {**model.state_dict(), "0.weight": torch.zeros(4, 2)}
    del weights["1.bias"]
    weights["extra"] = torch.zeros(1)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_weights(model, weights, "w.pt")
    message = str(caught.value)
    assert "\n" not in message
    assert "1 missing (first: 1.bias); 1 unexpected (first: extra); 1 of another shape (first: 0.weight (4, 2) vs " \
           "(3, 2))" in message, message


def test_a_multi_line_error_reaches_the_user_as_one_line(cli_main):
    """Row 16: any library text inside a UserError is collapsed at the command line."""
    from smart_tuner.cli.main import one_line

    assert one_line("first\n  second\n\nthird") == "first; second; third"
    result = cli_main("train", "--set", "train.lr=[1, 2", "--no-progress", cwd=Path(__file__).parent)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
