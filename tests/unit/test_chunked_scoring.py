"""Long runs are scored part by part (``Detector.score_chunks``): the running sums and the latch state carry
over from one part to the next, so the scores are those of scoring the run at once, with the memory of one
part (CreateModel's ModelMetrics step)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd

import agent.detection.detector as detector_module
from agent.detection import Detector, rounded_shares
from agent.detection.detector import DetectorParams
from agent.lookout_local.modeling import metrics

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def crafted_detector() -> Detector:
    """Identity whitening around 0 with a threshold of 20: on integer readings every step of the scoring
    (standardising, whitening, the running sums of the means, the medians) is exact, so chunked and whole
    scoring can be compared bit for bit; short durations at 1 s per row: context_rows = 52."""
    params = DetectorParams(smooth_secs=3, score_secs=5, lag_secs=10, reference_secs=4, latch_secs=30)
    return Detector(["c\\a", "c\\b", "c\\c"], 1.0, np.zeros(3), np.ones(3), np.eye(3), 20.0, params)


def crafted_run() -> np.ndarray:
    """600 rows of integer noise with three faults, two of them across a chunk boundary (100 and 200 with
    chunks of 100 rows), one that settles (the latch holds, then releases), a gap and empty cells."""
    rng = np.random.default_rng(5)
    values = rng.integers(-2, 3, (600, 3)).astype(np.float64)
    values[75:111, 0] += 40  # crosses row 100
    values[190:236, 1] += 40  # crosses row 200 and settles longer than latch_secs
    values[410:431, 2] -= 40
    values[300:306] = np.nan  # grid points without data
    values[rng.random(values.shape) < 0.02] = np.nan  # empty cells
    return values


def test_chunked_scoring_equals_whole_scoring_exactly_on_a_crafted_run():
    det, values = crafted_detector(), crafted_run()
    assert det.context_rows == 52
    whole_scores, whole_shares = det.score(values)
    chunks = list(det.score_chunks(values, chunk_rows=100))
    # consecutive parts of about 100 rows (a part ends where the latch's last whole block does)
    assert [first for first, _, _ in chunks] == list(np.cumsum([0] + [len(s) for _, s, _ in chunks[:-1]]))
    assert len(chunks) == 6 and sum(len(s) for _, s, _ in chunks) == 600
    assert all(len(scores) == len(shares) for _, scores, shares in chunks)
    alarmed = np.flatnonzero(whole_scores >= 0.5)
    # the run exercises what the context must carry: alarms on both sides of two chunk boundaries
    for boundary in (100, 200):
        assert boundary - 1 in alarmed and boundary in alarmed, boundary
    assert np.array_equal(np.concatenate([s for _, s, _ in chunks]), whole_scores)
    assert np.array_equal(np.concatenate([s for _, _, s in chunks]), whole_shares)


def plant(n: int, sensors: int, seed: int) -> np.ndarray:
    """PT1M rows of ``sensors`` sensors driven by two slow latent factors + noise, with three faults."""
    rng = np.random.default_rng(seed)
    latent = np.cumsum(rng.normal(0, 0.02, (n, 2)), axis=0)
    values = 20 + latent @ rng.normal(size=(2, sensors)) + rng.normal(0, 0.1, (n, sensors))
    values[1000:1010, 0] += 3.0
    values[2400:2415, 1] -= 3.0
    values[4000:4012, 2] += 3.0
    values[rng.random(n) < 0.01] = np.nan
    return values


def test_chunked_scores_are_those_of_the_whole_run_on_a_drifting_plant():
    """A plant far from its training state (a random walk) with three faults: the recent reference is what keeps
    it quiet, so a part scored from a cold start would alarm; carried over, the parts give the whole run's
    values, bit for bit, whatever their size (smaller than a latch block too)."""
    values = plant(6000, 5, seed=3)
    det = Detector.fit(values[:1000], [f"c\\s{i}" for i in range(5)], 60.0)
    whole_scores, whole_shares = det.score(values)
    assert 0 < np.sum(whole_scores >= 0.5) < 100
    for chunk_rows in (3, 116, 1000):
        parts = list(det.score_chunks(values, chunk_rows=chunk_rows))
        assert [first for first, _, _ in parts] == list(np.cumsum([0] + [len(s) for _, s, _ in parts[:-1]]))
        assert np.array_equal(np.concatenate([s for _, s, _ in parts]), whole_scores), chunk_rows
        assert np.array_equal(np.concatenate([s for _, _, s in parts]), whole_shares), chunk_rows
    cold, _ = det.score(values[4640:4756])  # a part without what came before it scores otherwise
    assert not np.array_equal(cold, whole_scores[4640:4756])


def grid_frame(values: np.ndarray) -> pd.DataFrame:
    index = pd.date_range(T0, periods=len(values), freq="60s")
    return pd.DataFrame(values, index=index, columns=[f"c\\s{i}" for i in range(values.shape[1])])


def test_model_metrics_from_chunks_are_those_of_the_whole_run(monkeypatch):
    """ModelMetrics (predicted ranges and their diagnostics, counts, figures) as scoring every row at once
    gives them, from parts of 200 rows."""
    values = plant(6000, 5, seed=3)
    det = Detector.fit(values[:1000], [f"c\\s{i}" for i in range(5)], 60.0)
    rows = grid_frame(values)
    labels = [((T0 + pd.Timedelta(minutes=2400)).timestamp(), (T0 + pd.Timedelta(minutes=2414)).timestamp())]
    monkeypatch.setattr(detector_module, "CHUNK_CELLS", 1000)  # 200 rows of 5 sensors
    assert len(list(det.score_chunks(values))) >= 30
    chunked = metrics(det, rows, labels, None, 60)
    monkeypatch.setattr(detector_module, "CHUNK_CELLS", 10**12)  # one chunk: the whole run at once
    assert len(list(det.score_chunks(values))) == 1
    assert metrics(det, rows, labels, None, 60) == chunked
    # and the predicted ranges are those of scoring the whole run directly
    scores, shares = det.score(values)
    flags = (np.round(scores, 5) >= 0.5) & ~np.isnan(values).all(axis=1)
    assert len(chunked["predicted_ranges"]) >= 3 and chunked["anomalous_points"] == int(flags.sum())
    for predicted in chunked["predicted_ranges"]:
        start, end = (pd.Timestamp(predicted[k], tz="UTC") for k in ("start", "end"))
        sel = (rows.index >= start) & (rows.index <= end)
        assert flags[sel].all()
        expected = rounded_shares(shares[sel].mean(axis=0))
        assert [d["value"] for d in predicted["diagnostics"]] == expected


def test_model_metrics_memory_stays_that_of_a_chunk(monkeypatch):
    """Scoring 20,000 rows × 40 sensors for ModelMetrics allocates less than 3 × the matrix at its peak (at
    once, the scoring alone held ~15 copies of it)."""
    values = plant(20_000, 40, seed=4)
    det = Detector.fit(values[:2000], [f"c\\s{i}" for i in range(40)], 60.0)
    rows = grid_frame(values)
    monkeypatch.setattr(detector_module, "CHUNK_CELLS", 40_000, raising=False)  # 1,000 rows of 40 sensors
    tracemalloc.start()
    try:
        result = metrics(det, rows, [], None, 60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["evaluated_points"] == int((~np.isnan(values).all(axis=1)).sum())
    assert peak < 3 * values.nbytes, f"peak {peak / 2**20:.1f} MiB for a {values.nbytes / 2**20:.1f} MiB matrix"


def test_the_fit_in_parts_is_the_fit_at_once(monkeypatch):
    """Training smooths and scores its rows part by part too: the same model (whitening, threshold, with a
    calibration range) whatever the part size."""
    values = plant(3000, 8, seed=6)
    names = [f"c\\s{i}" for i in range(8)]
    whole = Detector.fit(values[:2000], names, 60.0, calibration=values[2000:])
    monkeypatch.setattr(detector_module, "CHUNK_CELLS", 8 * 37)  # 37 rows a part
    parts = Detector.fit(values[:2000], names, 60.0, calibration=values[2000:])
    assert np.array_equal(parts.whiten, whole.whiten) and parts.threshold == whole.threshold


def test_join_lays_the_components_side_by_side_as_an_outer_join():
    """Components with different grid points: every point of any component, in time order, NaN where a
    component has none; the same frame pandas' outer join gives."""
    from agent.lookout_local.modeling import join, resample

    rng = np.random.default_rng(1)
    parts = []
    for c in range(3):
        offsets = np.sort(rng.choice(5000, 800, replace=False)) * 7
        readings = pd.DataFrame({"timestamp": T0 + pd.to_timedelta(offsets, unit="s"),
                                 **{f"s{i}": rng.normal(size=800) for i in range(4)}})
        readings.loc[rng.random(800) < 0.1, "s1"] = np.nan
        parts.append(resample(readings, f"c{c}", tuple(f"s{i}" for i in range(4)), 60))
    expected = parts[0].join(parts[1], how="outer").join(parts[2], how="outer").sort_index()
    joined = join(parts)
    assert len(joined) > max(len(p) for p in parts) and joined.isna().any().any()
    assert joined.equals(expected) and list(joined.columns) == list(expected.columns)
    assert joined.index.name == expected.index.name and joined.index.is_monotonic_increasing
