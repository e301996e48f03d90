"""provision against the local service: the shipped replay example gets one verdict from check and from
provision --dry-run; without access keys on the service no AWS credentials are needed, with keys they are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from agent.lookout_local import LocalLookoutService

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def no_aws_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # nothing to find on this machine: do not wait for IMDS
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    return env


def shipped_example(tmp_path: Path, svc: LocalLookoutService, store: Path) -> Path:
    """config/replay/ as shipped, its two absolute paths (the store folder, the service's port) moved here."""
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "config" / "replay", folder)
    path = folder / "pump-07.toml"
    text = path.read_text()
    assert "file:///var/lib/l4e-agent/store/" in text and "http://127.0.0.1:8765" in text
    path.write_text(text.replace("file:///var/lib/l4e-agent/store/", store.as_uri() + "/")
                    .replace("http://127.0.0.1:8765", svc.endpoint_url))
    return path


def test_shipped_replay_example_one_verdict_without_aws_credentials(tmp_path):
    store = tmp_path / "store"
    svc = LocalLookoutService(tmp_path / "svc", store.as_uri() + "/").start()
    try:
        path = shipped_example(tmp_path, svc, store)
        env = no_aws_env()
        check = cli("check", str(path), "--at", "2026-01-01T00:00:00Z", env=env)
        assert check.returncode == 0, check.stderr
        dry = cli("provision", str(path), "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert "Unable to locate credentials" not in dry.stderr + dry.stdout
        assert "pump-07-dataset" in dry.stderr + dry.stdout  # the plan
        assert not (store / "plant-l4e").exists()  # a dry run writes nothing
    finally:
        svc.stop()


def test_a_folder_input_without_store_is_one_clear_message(tmp_path):
    path = tmp_path / "pump-07.toml"
    text = (ROOT / "config" / "replay" / "pump-07.toml").read_text()
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("store =")) + "\n")
    shutil.copy(ROOT / "config" / "replay" / "history.csv", tmp_path)
    dry = cli("provision", str(path), "--dry-run", env=no_aws_env())
    assert dry.returncode == 78
    message = dry.stderr.strip().splitlines()[-1]
    assert "lookout.store: lookout.store:" not in message  # the key once, not doubled
    assert dry.stderr.count("configuration error") == 1
    assert message.startswith(f"l4e-agent: configuration error: {path}: lookout.store: 'file:///var/lib/l4e-agent/")


def test_a_service_with_access_keys_still_requires_them(tmp_path):
    store = tmp_path / "store"
    svc = LocalLookoutService(tmp_path / "svc", store.as_uri() + "/", access_keys={"AKIDLOCAL": "s3cret"}).start()
    try:
        path = shipped_example(tmp_path, svc, store)
        refused = cli("provision", str(path), "--dry-run", env=no_aws_env())
        assert refused.returncode == 1
        assert "Missing Authentication Token" in refused.stderr
        keyed = cli("provision", str(path), "--dry-run", env={**no_aws_env(), "AWS_ACCESS_KEY_ID": "AKIDLOCAL",
                                                              "AWS_SECRET_ACCESS_KEY": "s3cret"})
        assert keyed.returncode == 0, keyed.stderr
    finally:
        svc.stop()
