"""Pure parts: detector calibration and diagnostics, timestamp formats, off condition, key patterns, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent.detection import Detector, rounded_shares
from agent.lookout_local import serve_main
from agent.lookout_local.ingest import IngestionFailed, component_prefix
from agent.lookout_local.modeling import OffCondition, TrainedModel, resample
from agent.lookout_local.sigv4 import parse_access_keys
from agent.lookout_local.timestamps import parse_column

from .conftest import make_client

REPO = Path(__file__).resolve().parents[2]


def correlated(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.5, -0.8, 0.2], [0.1, 1.0, 0.4, -1.0]])
    return 50 + latent @ mix * 3 + rng.normal(0, 0.2, (n, 4))


def test_detector_separates_normal_from_broken_correlation():
    names = ["c\\a", "c\\b", "c\\c", "c\\d"]
    det = Detector.fit(correlated(5000), names)
    normal, _ = det.score(correlated(2000, seed=2))
    assert np.mean(normal) < 0.15 and np.quantile(normal, 0.99) < 0.5
    broken = correlated(50, seed=3)
    broken[:, 2] += 3.0  # 1σ of the sensor's own range, but far off its correlation with the others
    scores, shares = det.score(broken)
    assert np.all(scores >= 0.5)
    assert np.all(shares.argmax(axis=1) == 2)
    assert np.allclose(shares.sum(axis=1), 1.0) and np.all(shares >= 0)


def test_detector_round_trip(tmp_path):
    det = Detector.fit(correlated(500), ["a", "b", "c", "d"])
    det.save(tmp_path / "d.npz")
    again = Detector.load(tmp_path / "d.npz")
    x = correlated(10, seed=9)
    assert np.allclose(det.score(x)[0], again.score(x)[0]) and again.names == ["a", "b", "c", "d"]


def test_detector_refuses_too_little_data():
    with pytest.raises(ValueError, match="training rows"):
        Detector.fit(np.ones((3, 4)), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="without any value"):
        Detector.fit(np.column_stack([np.arange(20.0), np.full(20, np.nan)]), ["a", "b"])


@pytest.mark.parametrize("shares", [[1 / 3] * 3, [0.123456, 0.876544], [1e-9, 1 - 1e-9], [0.2] * 5, [1 / 7] * 7])
def test_rounded_shares_sum_to_one(shares):
    out = rounded_shares(np.array(shares))
    assert round(sum(out), 5) == 1.0 and min(out) >= 0 and all(round(v, 5) == v for v in out)


@pytest.mark.parametrize(("text", "expected"), [
    ("2022-05-13T12:10:00.000000", "2022-05-13 12:10:00"), ("2022-05-13 12:10:00", "2022-05-13 12:10:00"),
    ("2022-05-13-12-10-00", "2022-05-13 12:10:00"), ("20220513121000", "2022-05-13 12:10:00"),
    ("2022/05/13 12:10", "2022-05-13 12:10:00"), ("20220513T12:10", "2022-05-13 12:10:00"),
    ("2022 05 13 12:10:00", "2022-05-13 12:10:00"), ("5/13/2022 12:10", "2022-05-13 12:10:00"),
    ("2022-05-13T14:10:00+02:00", "2022-05-13 12:10:00"), ("2022-05-13T12:10:00Z", "2022-05-13 12:10:00"),
])
def test_timestamp_formats(text, expected):
    assert parse_column(pd.Series([text]))[0] == pd.Timestamp(expected)


def test_unparseable_timestamps_are_nat():
    out = parse_column(pd.Series(["2022-05-13T12:10:00.000000", "garbage", None]))
    assert out.isna().tolist() == [False, True, True]


def test_resample_is_label_right_closed_right():
    frame = pd.DataFrame({"timestamp": pd.to_datetime(["2026-01-01T00:00:30", "2026-01-01T00:01:00",
                                                       "2026-01-01T00:01:10"]), "s": [1.0, 3.0, 10.0]})
    out = resample(frame, "c", ("s",), 60)
    assert out.index.tolist() == [pd.Timestamp("2026-01-01T00:01:00"), pd.Timestamp("2026-01-01T00:02:00")]
    assert out["c\\s"].tolist() == [2.0, 10.0]


def test_off_condition_lines_are_machine_off(tmp_path):
    names = ["c\\a", "c\\b", "c\\c", "c\\d"]
    model = TrainedModel(Detector.fit(correlated(500), names), 60, OffCondition.parse("c\\a<10"))
    frame = pd.DataFrame(correlated(3, seed=4), columns=names,
                         index=pd.date_range("2026-01-01T00:01:00", periods=3, freq="60s"))
    frame.iloc[1, 0] = 0.0
    lines = model.result_lines(frame)
    assert lines[1] == {"timestamp": "2026-01-01T00:02:00.000000", "prediction": 0, "prediction_reason": "MACHINE_OFF"}
    assert "diagnostics" in lines[0] and "diagnostics" in lines[2]
    with pytest.raises(ValueError):
        OffCondition.parse("c\\a is off")


def test_results_text_is_json_dumps_of_the_records(tmp_path):
    names = ["c\\a", "c\\b", "c\\c", "c\\d"]
    model = TrainedModel(Detector.fit(correlated(500), names, 60.0), 60, OffCondition.parse("c\\a<10"))
    values = correlated(40, seed=5)
    values[30:, 2] += 30.0  # anomalous rows too
    frame = pd.DataFrame(values, columns=names, index=pd.date_range("2026-01-01T00:01:00", periods=40, freq="60s"))
    frame.iloc[25, 0] = 0.0  # a MACHINE_OFF row
    body, anomalous = model.results_jsonl(frame, context=10)
    lines = model.result_lines(frame, context=10)
    assert body == "".join(json.dumps(line) + "\n" for line in lines).encode()
    assert anomalous and any(line["prediction"] == 1 for line in lines) and len(lines) == 30


@pytest.mark.parametrize(("pattern", "expected"), [
    (None, "p/pump/"), ("{prefix}/{component_name}/*", "p/pump/"), ("{prefix}/{component_name}_*", "p/pump_"),
    ("{prefix}/{component_name}[ ]*", "p/pump "), ("{prefix}/{component_name}[.]*", "p/pump."),
])
def test_key_patterns(pattern, expected):
    assert component_prefix("p/", "pump", pattern) == expected


def test_bad_key_pattern():
    with pytest.raises(IngestionFailed):
        component_prefix("p/", "pump", "{component_name}/*")


def test_access_key_pairs():
    assert parse_access_keys(["A:b:c", "D:e"]) == {"A": "b:c", "D": "e"}
    with pytest.raises(ValueError):
        parse_access_keys(["nosecret"])


def test_serve_main_refuses_bad_options(tmp_path):
    assert serve_main(["--state-dir", str(tmp_path), "--store", "ftp://x/"]) == 78
    assert serve_main(["--state-dir", str(tmp_path), "--speed", "10"]) == 78
    assert serve_main(["--state-dir", str(tmp_path), "--access-key", "nosecret"]) == 78


def test_python_dash_m_serves_until_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.lookout_local", "--port", "0", "--state-dir", str(tmp_path / "state"),
         "--clock-start", "2026-01-04T00:00:00Z", "--speed", "60", "--log-level", "WARNING"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
        # no --store: the start-up names the folder it serves (below the state dir)
        store = (tmp_path / "state" / "store").resolve()
        assert proc.stdout.readline() == f"serving folder {store}/ (bucket b = {store}/b/)\n"
        client = make_client(line.split()[-1])
        assert client.list_datasets()["DatasetSummaries"] == []
        assert json.loads((tmp_path / "state" / "clock.json").read_text())["speed"] == 60.0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()
        proc.stderr.close()


def _window_input(tmp_path, cfg, names: dict[str, bytes]):
    from agent.pipeline.store import FileStore

    store = FileStore(tmp_path / cfg.bucket)
    for key, data in names.items():
        store.put(cfg.prefix + key, data)
    return store


def test_input_naming_with_offset_delimiter_and_epoch(tmp_path):
    from agent.core.model import Window
    from agent.lookout_local.inference import InputConfig, find_files, missing_file_reason

    window = Window(1767485100, 1767485400)  # (2026-01-04T00:05Z, 00:10Z]
    ist = InputConfig("b1b", "in/", "-", "yyyyMMddHHmmss", 19800)  # +05:30: names carry local time
    store = _window_input(tmp_path, ist, {"pump-20260104053500.csv": b"x", "pump-20260104003500.csv": b"x",
                                          "pump-20260104054500.csv": b"x", "sub/pump-20260104053500.csv": b"x"})
    assert find_files(store, ist, "pump", window, 300) == ["in/pump-20260104054500.csv", "in/pump-20260104053500.csv"]
    assert missing_file_reason(ist, "motor", window, 300).endswith(
        "under prefix 's3://b1b/in/motor-20260104053000' ~ 's3://b1b/in/motor-20260104054500'")
    epoch = InputConfig("b2b", "", "", "EPOCH", 0)
    store = _window_input(tmp_path, epoch, {f"pump{window.start}.csv": b"x", f"pump{window.start + 900}.csv": b"x"})
    assert find_files(store, epoch, "pump", window, 300) == [f"pump{window.start}.csv"]


@pytest.mark.parametrize("fmt", ["yyyyMMddHHmmss", "yyyy-MM-dd-HH-mm-ss", "EPOCH"])
def test_input_listing_reads_only_the_files_near_the_window(tmp_path, fmt):
    """A year of files under one prefix costs an execution what a day does: the listing starts just before
    the window's range and (for calendar names) stops after it, and finds what a full scan finds."""
    from agent.core.model import Window
    from agent.lookout_local.inference import InputConfig, find_files
    from agent.pipeline.windows import object_name, parse_object_name

    cfg = InputConfig("b4b", "in/", "_", fmt, 3600)
    t0, step, count = 1767225600, 300, 400
    names = {object_name(c, "_", t0 + k * step, fmt, 3600): b"x" for k in range(count) for c in ("pump", "pumpx")}
    names["pump_junk.csv"] = names["pump_20260101.csv"] = b"x"
    store = _window_input(tmp_path, cfg, names)
    listed = []

    class Counting:
        def list(self, prefix="", start_after=None):
            for key in store.list(prefix, start_after):
                listed.append(key)
                yield key

    for k in (0, 1, 200, count - 2, count - 1, count + 3):
        window = Window(t0 + k * step, t0 + (k + 1) * step)
        listed.clear()
        got = find_files(Counting(), cfg, "pump", window, step)
        every = sorted((s, "in/" + n) for n in names
                       if (s := parse_object_name(n, "pump", "_", fmt, 3600)) is not None
                       and window.start - step <= s <= window.end + step)
        assert got == [key for s, key in sorted(every, key=lambda e: (e[0] == window.start, e))], (k, got)
        # calendar names: the window's files and one past them; EPOCH: no early stop, but nothing before them
        bound = len(got) + 2 if fmt != "EPOCH" else max(count - k + 1, 0) + 2
        assert len(listed) <= bound, (k, len(listed), bound)


def test_unreadable_input_fails_with_a_reason(tmp_path):
    from agent.core.model import Window
    from agent.lookout_local.inference import InferenceFailed, InputConfig, window_frame
    from agent.lookout_local.schema import Component

    window = Window(1767485100, 1767485400)
    cfg = InputConfig("b3b", "in/", "_", "yyyyMMddHHmmss", 0)
    store = _window_input(tmp_path, cfg, {"pump_20260104000500.csv": b"Timestamp,other\n2026-01-04T00:06:00,1\n"})
    with pytest.raises(InferenceFailed, match=r"Could not read any data file for sensor pump.*missing from the header"):
        window_frame(store, cfg, [Component("pump", "Timestamp", ("flow",))], window, 300, 60)


def test_serve_main_reads_the_access_keys_file(tmp_path):
    assert serve_main(["--state-dir", str(tmp_path), "--access-keys-file", str(tmp_path / "absent")]) == 78
    (tmp_path / "keys").write_text("# comment\nnosecret\n")
    assert serve_main(["--state-dir", str(tmp_path), "--access-keys-file", str(tmp_path / "keys")]) == 78
