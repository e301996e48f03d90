"""The configuration sources (agent.config.env): pydantic-settings sources for the asset file and the
``L4E_AGENT_*`` variables, merged environment over file, with the agent's own key resolution and messages."""

from __future__ import annotations

import copy
import textwrap
import tomllib

import pytest

from agent.config import AssetConfig, load
from agent.config.env import overlay
from agent.core.errors import ConfigError

ASSET = textwrap.dedent("""
    asset = "pump-07"
    [lookout]
    upload_frequency = "PT5M"
    delay_offset_minutes = 2
    sampling_rate = "PT1M"
    input = "s3://plant-l4e/pump-07/input/"
    [components]
    pump = ["Flow_A", "discharge_pressure"]
    [sensors.Flow_A]
    agg = "min"
    max_age_secs = 30.0
    [[sources]]
    name = "history"
    kind = "replay"
    path = "history.csv"
""")


def test_environment_wins_over_the_file_and_the_file_data_is_left_as_read():
    data = tomllib.loads(ASSET)
    as_read = copy.deepcopy(data)
    merged, overrides = overlay({
        "L4E_AGENT_SENSORS": '{"Flow_A": {"agg": "last"}, "discharge_pressure": {"agg": "mean"}}',
        "l4e_agent_sensors__flow_a__agg": "max",   # any case; refines the table the JSON above set
        "L4E_AGENT_WINDOW__GRACE_SECS": "30",
        "PATH": "/usr/bin",                        # not ours: ignored
    }, AssetConfig, data)
    assert data == as_read  # the file source's table is not changed by the merge
    # JSON table merged into the file's table, the longer variable last, the file's spelling of Flow_A kept
    assert merged["sensors"] == {"Flow_A": {"agg": "max", "max_age_secs": 30.0},
                                 "discharge_pressure": {"agg": "mean"}}
    assert merged["window"] == {"grace_secs": 30} and merged["lookout"] == data["lookout"]
    assert [(o.var, o.path) for o in overrides] == [
        ("L4E_AGENT_SENSORS", ("sensors",)), ("L4E_AGENT_WINDOW__GRACE_SECS", ("window", "grace_secs")),
        ("l4e_agent_sensors__flow_a__agg", ("sensors", "Flow_A", "agg"))]


def test_only_the_given_environment_is_read(tmp_path, monkeypatch):
    (tmp_path / "history.csv").write_text("Timestamp,Flow_A,discharge_pressure\n")
    path = tmp_path / "asset.toml"
    path.write_text(ASSET)
    monkeypatch.setenv("L4E_AGENT_WINDOW__GRACE_SECS", "45")
    assert load(path, environ={}).window.grace_secs != 45       # an explicit environment replaces os.environ
    assert load(path).window.grace_secs == 45                    # the default is the process environment


def test_a_variable_keeps_its_spelling_in_the_message():
    with pytest.raises(ConfigError) as info:
        overlay({"l4e_agent_lookout__upload_freq": "PT5M"}, AssetConfig, tomllib.loads(ASSET))
    assert str(info.value).startswith("l4e_agent_lookout__upload_freq=PT5M: names no key: lookout.upload_freq")
