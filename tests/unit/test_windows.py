"""Window math and object names (README, Decisions rules 1–3, 6, 7) as properties over every setting."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from agent.pipeline.windows import (
    DELIMITERS,
    SAMPLING_RATES,
    TIMESTAMP_FORMATS,
    UPLOAD_FREQUENCIES,
    format_name_timestamp,
    grid_point,
    grid_points,
    iso_window,
    object_key,
    object_name,
    parse_object_name,
    parse_offset,
    results_key,
    wake_time,
    window_containing,
    window_ending,
    windows_between,
)

frequencies = st.sampled_from(sorted(UPLOAD_FREQUENCIES.values()))
instants = st.floats(min_value=946684800, max_value=4102444800, allow_nan=False)  # 2000 … 2100
offsets = st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"),
                    st.integers(0, 14), st.sampled_from([0, 15, 30, 45]))
components = st.from_regex(r"[0-9a-zA-Z._\-]{1,40}", fullmatch=True)


@given(frequencies, instants)
def test_window_contains_instant_exclusive_start_inclusive_end(freq, ts):
    w = window_containing(ts, freq)
    assert w.start < ts <= w.end
    assert w.end - w.start == freq
    assert w.end % freq == 0
    # aligned to the top of the UTC hour: some boundary falls on every whole hour
    assert (3600 % freq == 0) or (freq % 3600 == 0)
    assert datetime.fromtimestamp(w.end, UTC).minute * 60 % freq == 0 or freq == 3600


@given(frequencies, st.sampled_from(sorted(SAMPLING_RATES.values())), instants)
def test_grid_point_belongs_to_the_window_of_the_reading(freq, rate, ts):
    if freq % rate:
        return  # the config rejects a rate that does not divide F
    g = grid_point(ts, rate)
    assert g - rate < ts <= g
    w = window_containing(ts, freq)
    assert w.start < g <= w.end
    points = grid_points(w, rate)
    assert g in points
    assert len(points) == freq // rate
    assert points[0] == w.start + rate and points[-1] == w.end


@given(frequencies, st.sampled_from(list(TIMESTAMP_FORMATS)), st.sampled_from(list(DELIMITERS)), offsets,
       components, instants)
def test_object_name_round_trips_and_depends_on_window_only(freq, fmt, delim, offset, comp, ts):
    off = parse_offset(offset)
    w = window_containing(ts, freq)
    name = object_name(comp, delim, w.start, fmt, off)
    assert name == f"{comp}{delim}{format_name_timestamp(w.start, fmt, off)}.csv"
    assert parse_object_name(name, comp, delim, fmt, off) == w.start
    # every instant of the same window gives the same key (rule 7)
    other = w.start + 1 + (ts % (freq - 1))
    assert object_key("p/", comp, delim, window_containing(other, freq).start, fmt, off) == "p/" + name


def test_name_examples_from_the_contract():
    start = int(datetime(2022, 5, 13, 12, 10, tzinfo=UTC).timestamp())
    assert object_name("centrifugal-pump", "_", start, "yyyyMMddHHmmss") == "centrifugal-pump_20220513121000.csv"
    assert object_name("centrifugal-pump", "_", start, "yyyy-MM-dd-HH-mm-ss") == \
        "centrifugal-pump_2022-05-13-12-10-00.csv"
    assert object_name("centrifugal-pump", "_", start, "EPOCH") == "centrifugal-pump_1652443800.csv"
    # the offset shifts calendar names only: 13:00 UTC at +05:30 is named 18:30 ([GS])
    one_pm = int(datetime(2021, 4, 5, 13, 0, tzinfo=UTC).timestamp())
    assert object_name("p", "_", one_pm, "yyyyMMddHHmmss", parse_offset("+05:30")) == "p_20210405183000.csv"
    assert object_name("p", "", one_pm, "EPOCH", parse_offset("+05:30")) == f"p{one_pm}.csv"
    assert object_name("p", " ", one_pm, "yyyyMMddHHmmss") == "p 20210405130000.csv"


def test_wake_and_results_key_follow_the_observed_executions():
    end = int(datetime(2021, 4, 13, 14, 20, tzinfo=UTC).timestamp())
    w = window_ending(end, 300)
    assert wake_time(w, 0) == end and wake_time(w, 5) == end + 300
    assert results_key("out/", w) == "out/2021-04-13T14:15:00Z/results.jsonl"
    assert iso_window(w) == "(2021-04-13T14:15:00Z, 2021-04-13T14:20:00Z]"


def test_windows_between_is_oldest_first_and_half_open():
    ws = list(windows_between(600, 1800, 300))
    assert [w.end for w in ws] == [900, 1200, 1500, 1800]
    assert list(windows_between(1800, 1800, 300)) == []


def test_name_parser_rejects_other_components_and_formats():
    assert parse_object_name("pump_20220513121000.csv", "pum", "_", "yyyyMMddHHmmss") is None
    assert parse_object_name("pump_2022051312100.csv", "pump", "_", "yyyyMMddHHmmss") is None
    assert parse_object_name("pump_20220513121000.txt", "pump", "_", "yyyyMMddHHmmss") is None
    assert parse_object_name("pump-1652443800.csv", "pump", "-", "EPOCH") == 1652443800
