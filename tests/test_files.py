"""The one atomic writer: complete under its name or not there, the previous version intact on failure."""

from __future__ import annotations

import os
import stat

import pytest

from smart_tuner.files import BrokenRecord, atomic_dir, truncate_jsonl, write_atomic


def test_text_bytes_and_writer_functions_land_whole(tmp_path):
    assert write_atomic(tmp_path / "a" / "b.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert write_atomic(tmp_path / "c.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_atomic(tmp_path / "d.bin", lambda handle: handle.write(b"xyz")).read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.bin", "d.bin"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "ckpt.pt", b"old")

    def half_then_fail(handle):
        handle.write(b"new but incomplete")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="no space left on the device of .* while writing .*ckpt.pt"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_files_get_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        mode = stat.S_IMODE(write_atomic(tmp_path / "report.html", "<html>").stat().st_mode)
    finally:
        os.umask(previous)
    assert mode == 0o644  # readable by others, like any new file (a temporary file API would give 0600)


def test_atomic_dir_replaces_a_directory_only_when_complete(tmp_path):
    target = tmp_path / "previews" / "step_000010"
    with atomic_dir(target) as tmp:
        (tmp / "a.png").write_bytes(b"1")
    assert [p.name for p in target.iterdir()] == ["a.png"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.png").write_bytes(b"2")
        raise RuntimeError("render failed")
    assert [p.name for p in target.iterdir()] == ["a.png"]  # the complete old one stays
    with atomic_dir(target) as tmp:
        (tmp / "c.png").write_bytes(b"3")
    assert [p.name for p in target.iterdir()] == ["c.png"]  # a new complete one replaces it
    assert [p.name for p in target.parent.iterdir()] == ["step_000010"]


def test_truncate_jsonl_keeps_records_up_to_the_step_and_drops_only_a_torn_last_line(tmp_path, caplog):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 2}\n\n{"step": 4, "x": 1}\n{"step": 6}\n{"step": 8, "val_lo')
    truncate_jsonl(log, 4)
    assert log.read_text() == '{"step": 2}\n{"step": 4, "x": 1}\n'
    assert "metrics.jsonl:5: dropped a torn last line" in caplog.text
    log.write_text('{"step": 2}\nnot json\n{"step": 4}\n')
    with pytest.raises(BrokenRecord, match=r"metrics.jsonl:2: not a JSON record; repair or remove that line"):
        truncate_jsonl(log, 4)
    assert log.read_text() == '{"step": 2}\nnot json\n{"step": 4}\n'  # left as it was
    truncate_jsonl(tmp_path / "absent.jsonl", 4)
    assert not (tmp_path / "absent.jsonl").exists()

