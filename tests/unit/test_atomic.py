"""agent.core.atomic: the one atomic-replace helper every state file goes through."""

from __future__ import annotations

import json
import os

import pytest

from agent.core.atomic import write_atomic, write_json_atomic


def test_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2}, sort_keys=True)
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "pins"
    target.mkdir()  # a folder where the file should go: os.replace fails with IsADirectoryError
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "keep").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["pins"]


def test_failure_before_the_rename_keeps_the_old_content(tmp_path):
    target = tmp_path / "cursor.json"
    target.write_bytes(b"old")

    def refuse(tmp):
        assert tmp.read_bytes() == b"new"  # written and synced before prepare runs
        raise PermissionError("chown refused")

    with pytest.raises(PermissionError):
        write_atomic(target, b"new", prepare=refuse)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cursor.json"]


def test_tmp_dir_keeps_partial_files_out_of_the_target_folder(tmp_path):
    (tmp_path / "win").mkdir()
    (tmp_path / ".tmp").mkdir()
    write_atomic(tmp_path / "win" / "a.csv", b"rows", tmp_dir=tmp_path / ".tmp")
    assert (tmp_path / "win" / "a.csv").read_bytes() == b"rows"
    assert os.listdir(tmp_path / ".tmp") == []
