"""Asset file validation: clear errors (file, key, allowed values), exit 78, env overrides, the example."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import load
from agent.config.example import render_example
from agent.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
asset = "pump-07"
[lookout]
upload_frequency = "PT5M"
delay_offset_minutes = 2
sampling_rate = "PT1M"
input = "s3://plant-l4e/pump-07/input/"
[components]
pump = ["flow", "discharge_pressure"]
[[sources]]
name = "history"
kind = "replay"
path = "history.csv"
"""


def write(tmp_path: Path, text: str, history: str = "Timestamp,flow,discharge_pressure\n") -> Path:
    (tmp_path / "history.csv").write_text(history)
    path = tmp_path / "asset.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text, **kw))
    return str(info.value)


def test_good_file_loads_with_defaults(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    assert cfg.asset == "pump-07"
    assert cfg.lookout.frequency_secs == 300 and cfg.lookout.rate_secs == 60
    assert cfg.lookout.timestamp_format == "yyyyMMddHHmmss" and cfg.lookout.delimiter == "_"
    assert cfg.window.fill_limit == 2 and cfg.agg_for("flow") == "mean"


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('upload_frequency = "PT5M"', 'upload_frequency = "PT7M"',
     ["lookout.upload_frequency", "'PT5M'", "'PT10M'", "'PT15M'", "'PT30M'", "'PT1H'"]),
    ('delay_offset_minutes = 2', 'delay_offset_minutes = 61', ["lookout.delay_offset_minutes", "60"]),
    ('sampling_rate = "PT1M"', 'sampling_rate = "PT30M"', ["lookout", "does not divide"]),
    ('input = "s3://plant-l4e/pump-07/input/"', 'input = "s3://plant-l4e/pump-07/input"',
     ["lookout.input", "must end with '/'"]),
    ('input = "s3://plant-l4e/pump-07/input/"', 'input = "s3://Bad_Bucket/x/"', ["lookout.input", "bucket"]),
    ('input = "s3://plant-l4e/pump-07/input/"', 'input = "ftp://x/y/"', ["lookout.input", "s3://", "file:///"]),
    ('pump = ["flow", "discharge_pressure"]', 'pump = ["flow", "bad name"]', ["components", "bad name"]),
    ('[components]', '[components]\n"pump/1" = ["flow"]', ["components", "pump/1"]),
    ('kind = "replay"', 'kind = "mqtt"', ["sources[0]", "mqtt", "'replay'"]),
    ('asset = "pump-07"', 'asset = "pump-07"\ncolour = "red"', ["colour", "unknown key"]),
    ('delay_offset_minutes = 2', 'delay_offset_minutes = 2\ndelay_ofset_minutes = 3',
     ["lookout.delay_ofset_minutes", "unknown key"]),
])
def test_errors_name_the_file_the_key_and_the_allowed_values(tmp_path, old, new, expected):
    assert old in GOOD
    message = error_of(tmp_path, GOOD.replace(old, new))
    assert message.startswith(str(tmp_path / "asset.toml"))
    for part in expected:
        assert part in message, message


def test_sensor_without_source_and_sensor_with_two_sources(tmp_path):
    message = error_of(tmp_path, GOOD, history="Timestamp,flow\n")
    assert "components" in message and "'discharge_pressure'" in message and "no source" in message
    two = GOOD + '[[sources]]\nname = "again"\nkind = "replay"\npath = "history.csv"\n'
    message = error_of(tmp_path, two)
    assert "more than one source" in message and "history" in message and "again" in message


def test_invalid_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "asset = ")
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml")


def test_environment_overrides_win_over_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("L4E_AGENT_LOOKOUT__INPUT", "file:///srv/store/plant/pump/")
    monkeypatch.setenv("L4E_AGENT_WINDOW__GRACE_SECS", "45")
    cfg = load(write(tmp_path, GOOD))
    assert cfg.lookout.input == "file:///srv/store/plant/pump/"
    assert cfg.window.grace_secs == 45
    assert cfg.lookout.upload_frequency == "PT5M"  # untouched keys of the same section stay


def test_bad_environment_override_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("L4E_AGENT_LOOKOUT__DELAY_OFFSET_MINUTES", "ninety")
    assert "delay_offset_minutes" in error_of(tmp_path, GOOD)


def test_cli_exits_78_and_starts_nothing(tmp_path):
    path = write(tmp_path, GOOD.replace('"PT5M"', '"PT7M"'))
    proc = subprocess.run([sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 78
    assert "asset.toml" in proc.stderr and "lookout.upload_frequency" in proc.stderr
    assert not (tmp_path / "st").exists()  # never started half-configured


def test_second_bad_file_prevents_the_first_from_starting(tmp_path):
    good = write(tmp_path, GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('asset = "pump-07"', 'asset = "pump-08"').replace("PT1M", "PT2M"))
    proc = subprocess.run([sys.executable, "-m", "agent", "run", str(good), str(bad), "--state-dir",
                           str(tmp_path / "st")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 78 and "bad.toml" in proc.stderr
    assert not (tmp_path / "st").exists()


def test_check_prints_the_plan(tmp_path):
    path = write(tmp_path, GOOD)
    proc = subprocess.run([sys.executable, "-m", "agent", "check", str(path), "--at", "2022-05-13T12:12:00Z"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "window (2022-05-13T12:15:00Z, 2022-05-13T12:20:00Z]" in proc.stdout
    assert "'pump-07/input/pump_20220513121500.csv'" in proc.stdout
    assert "deadline 2022-05-13T12:22:00Z" in proc.stdout


def test_check_warns_about_a_zero_delay_offset(tmp_path):
    path = write(tmp_path, GOOD.replace("delay_offset_minutes = 2", "delay_offset_minutes = 0"))
    proc = subprocess.run([sys.executable, "-m", "agent", "check", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "WARNING: delay_offset_minutes = 0" in proc.stdout


def test_committed_example_is_generated_from_the_models():
    committed = (ROOT / "config" / "example.toml").read_text()
    assert committed == render_example(), "regenerate: l4e-agent config-example > config/example.toml"


def test_example_is_a_valid_asset_file(tmp_path, monkeypatch):
    example = tmp_path / "example.toml"
    example.write_text(render_example())
    cfg = load(example, check_sources=False)
    assert cfg.asset == "pump-07" and cfg.components["pump"] == ["flow", "discharge_pressure", "bearing_temp",
                                                             "motor_current"]


def test_committed_example_passes_the_full_check_with_its_sources():
    """The documented example, as shipped, with its replay file found relative to it (what `check` does)."""
    cfg = load(ROOT / "config" / "example.toml")
    replay = next(s for s in cfg.sources if s.kind == "replay")
    assert (ROOT / "config" / replay.path).is_file()
    assert (ROOT / "config" / replay.path).read_text().startswith("Timestamp,")


def test_shipped_replay_example_validates():
    cfg = load(ROOT / "config" / "replay" / "pump-07.toml")
    assert cfg.sources[0].kind == "replay"


def test_environment_values_take_the_type_of_their_key(tmp_path):
    text = GOOD.replace('pump = ["flow", "discharge_pressure"]', 'pump = ["flow", "discharge_pressure"]\n'
                        '[sensors.Flow_A]\nagg = "min"').replace('"flow"', '"Flow_A"')
    path = write(tmp_path, text, history="Timestamp,Flow_A,discharge_pressure\n")
    cfg = load(path, environ={
        "L4E_AGENT_METRICS__ENABLED": "true",            # a boolean
        "L4E_AGENT_WINDOW__FILL_LIMIT": "7",             # an integer
        "L4E_AGENT_WINDOW__GRACE_SECS": "12.5",          # a number
        "L4E_AGENT_ASSET": "0042",                       # a string stays a string, even if it looks like a number
        "L4E_AGENT_SENSORS__FLOW_A__AGG": "max",         # a table key keeps the file's spelling (Flow_A)
        "L4E_AGENT_SPOOL": '{"when_full": "drop_newest"}',  # a table as JSON, merged into the defaults
    })
    assert cfg.metrics.enabled is True and cfg.window.fill_limit == 7 and cfg.window.grace_secs == 12.5
    assert cfg.asset == "0042" and cfg.agg_for("Flow_A") == "max"
    assert cfg.spool.when_full == "drop_newest" and cfg.spool.fsync_interval_ms == 1000


def test_environment_error_names_the_variable_not_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, GOOD), environ={"L4E_AGENT_LOOKOUT__UPLOAD_FREQUENCY": "PT7M"})
    message = str(info.value)
    assert message.startswith("L4E_AGENT_LOOKOUT__UPLOAD_FREQUENCY=PT7M: lookout.upload_frequency: got 'PT7M'")
    assert info.value.file == str(tmp_path / "asset.toml")


def test_strict_types_and_no_pydantic_wording(tmp_path):
    for value, given in [("true", "got true (a boolean)"), ("2.0", "got 2.0 (a float)"), ('"2"', "got '2' (a string)")]:
        message = error_of(tmp_path, GOOD + f"[window]\nfill_limit = {value}\n")
        assert f"window.fill_limit: {given}; allowed: an integer 0..10000" in message
        assert "Input should" not in message and "Value error" not in message


def test_a_sensor_in_two_components_names_both(tmp_path):
    text = GOOD.replace('pump = ["flow", "discharge_pressure"]',
                        'pump = ["flow"]\nmotor = ["discharge_pressure", "flow"]')
    message = error_of(tmp_path, text)
    assert "sensor 'flow' is listed in components 'pump' and 'motor'" in message


def test_a_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load(path).asset == "pump-07"
