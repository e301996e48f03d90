"""Runs every folder of tests/cases/config_errors/ through the real CLI: ``l4e-agent check asset.toml``.

Each case must exit with expected_exit.txt's code and print every line of expected_error.txt (``{case}`` is the
case folder's path) on stderr, as one "configuration error" line without a traceback. Cases run in-process
through agent.cli.main (the same code path as the console script, all of them in seconds); the ones with a
chmod.txt run in a subprocess under an unprivileged user when the suite runs as root (root reads anything).
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest

from agent.cli import main
from agent.config import AssetConfig
from agent.config.schema import is_model, union_members, unwrap

CORPUS = Path(__file__).resolve().parents[1] / "cases" / "config_errors"
ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected_exit.txt").exists())
NOBODY = 65534


def prepare(name: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the case (so modes can be changed) and its environment overrides."""
    case = tmp_path / name
    shutil.copytree(CORPUS / name, case, symlinks=True)
    env = {}
    if (case / "env.txt").exists():
        for line in (case / "env.txt").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
    if (case / "chmod.txt").exists():
        for line in (case / "chmod.txt").read_text().splitlines():
            rel, mode = line.split()
            (case / rel).chmod(int(mode, 8))
    return case, env


def run_as_unprivileged(case: Path, env: dict[str, str]) -> tuple[int, str]:
    """``python -m agent check`` in a subprocess; as root, under uid/gid 65534 so that modes apply."""
    argv = [sys.executable, "-m", "agent", "check", str(case / "asset.toml")]
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return proc.returncode, proc.stderr


@pytest.fixture
def case_root(tmp_path):
    """Where a case is copied: pytest's own tmp folders are private to root (0700), so a case run as the
    unprivileged user gets a folder of its own that it may enter (removed afterwards)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="l4e-config-case-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("name", NAMES)
def test_case(name, case_root, monkeypatch, capsys):
    case, env = prepare(name, case_root)
    expected_code = int((case / "expected_exit.txt").read_text())
    fragments = [f.replace("{case}", str(case)) for f in (case / "expected_error.txt").read_text().splitlines() if f]
    if (case / "chmod.txt").exists():
        code, stderr = run_as_unprivileged(case, env)
    else:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(["check", str(case / "asset.toml")])
        captured = capsys.readouterr()
        stderr = captured.err
        assert "OK" not in captured.out
    assert code == expected_code, stderr
    assert stderr.startswith("l4e-agent: configuration error: "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "Value error" not in stderr and "Input should" not in stderr, stderr  # no pydantic wording
    for fragment in fragments:
        assert fragment in stderr, f"missing {fragment!r} in {stderr!r}"


def readme_corpus_size() -> int:
    """The number of broken files the README states (one sentence, so the two cannot drift apart)."""
    found = re.findall(r"`tests/cases/config_errors/` holds (\d+) broken asset files", (ROOT / "README.md").read_text())
    assert len(found) == 1, "README.md must state the corpus size once"
    return int(found[0])


def test_corpus_size_is_the_one_the_readme_states_and_every_case_is_complete():
    folders = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
    assert folders == NAMES  # a folder without expected_exit.txt would silently not run
    assert len(NAMES) == readme_corpus_size()
    for name in NAMES:
        folder = CORPUS / name
        assert (folder / "expected_error.txt").read_text().strip(), name
        assert int((folder / "expected_exit.txt").read_text()) == 78, name  # config errors exit 78, only them


def _choice_keys(annotation, path: str, out: set[str]) -> None:
    """Dotted paths (lists as [0], tables of user names as *) of every key whose type is a set of choices."""
    ann = unwrap(annotation).annotation
    members = union_members(ann)
    if is_model(ann):
        for name, info in ann.model_fields.items():
            _choice_keys(info.annotation, f"{path}.{name}" if path else name, out)
    elif len(members) > 1 and all(is_model(m) for m in members):
        for member in members:
            _choice_keys(member, path, out)
    elif get_origin(ann) in (list, tuple):
        _choice_keys(get_args(ann)[0], f"{path}[0]", out)
    elif get_origin(ann) is dict:
        _choice_keys(get_args(ann)[1], f"{path}.*", out)
    elif (get_origin(ann) is Literal or (isinstance(ann, type) and issubclass(ann, enum.Enum))) \
            and not path.endswith(".kind"):  # a union's tag: sources[0].kind, alarms.rules[0].kind have cases
        out.add(path)


def test_every_choice_key_has_a_case():
    """Every enum-like key (a Literal or an Enum) of the asset file has a case giving it a value not allowed."""
    keys: set[str] = set()
    _choice_keys(AssetConfig, "", keys)
    covered = set()
    for name in NAMES:
        for key in re.findall(r": ([a-z_\[\]0-9.]+): got ", (CORPUS / name / "expected_error.txt").read_text()):
            key = re.sub(r"\[\d+\]", "[0]", key)
            covered.add(re.sub(r"^(sensors|alarms\.hooks)\.[a-z_]+", r"\1.*", key))
    assert len(keys) > 20
    assert sorted(keys - covered) == []
