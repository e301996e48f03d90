"""Model training, evaluation and scoring around the Detector (``agent.detection``): the data side of
CreateModel and inference.

Data are resampled to the model's TargetSamplingRate on a grid aligned to the UTC hour, label right and
closed right (grid point t holds the mean of the readings in (t − rate, t], README, Decisions rule 2), then
the components are joined on the grid. The detector reads consecutive grid rows, so the training rows are laid
on the full grid (a grid point without data is an empty row) unless the history is mostly gaps. A fitted model
is a folder: ``detector.npz`` + ``model.json`` (sensor names, rate in seconds, the off condition).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agent.core.atomic import write_json_atomic
from agent.detection import Detector, rounded_shares
from agent.detection.detector import rounded_share_rows
from agent.detection.metrics import count
from agent.lookout_local.schema import Component
from agent.lookout_local.timestamps import parse_column
from agent.pipeline.windows import format_csv_time

_OFF = re.compile(r"^\s*([0-9a-zA-Z._\-]+)\\([^<>=]+?)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class TrainingFailed(Exception):
    """Training fails with this message as FailedReason."""


@dataclass(frozen=True)
class OffCondition:
    """``component\\sensor<0.5``: rows where the sensor compares true are MACHINE_OFF."""

    sensor: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str | None) -> OffCondition | None:
        if not text:
            return None
        m = _OFF.match(text)
        if not m:
            raise ValueError(f"OffCondition {text!r} must look like 'component\\\\sensor<0.5' (<, >, <=, >=)")
        try:
            value = float(m.group(4))
        except ValueError:
            raise ValueError(f"OffCondition {text!r}: {m.group(4)!r} is not a number") from None
        return cls(f"{m.group(1)}\\{m.group(2).strip()}", m.group(3), value)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        col = frame[self.sensor].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            hit = {"<": col < self.value, ">": col > self.value, "<=": col <= self.value,
                   ">=": col >= self.value}[self.op]
        return np.asarray(hit, dtype=bool)

    def text(self) -> str:
        return f"{self.sensor}{self.op}{self.value:g}"


def resample(frame: pd.DataFrame, component: str, sensors: tuple[str, ...], rate: int) -> pd.DataFrame:
    """``timestamp`` + sensors → grid-indexed means (label right, closed right), columns ``component\\sensor``.
    Grid points without any reading are absent (not NaN rows)."""
    data = frame.set_index("timestamp")[list(sensors)]
    data.columns = [f"{component}\\{s}" for s in sensors]
    grouped = data.resample(f"{rate}s", label="right", closed="right", origin="epoch").mean()
    return grouped.dropna(how="all")


def join(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Components joined on the grid (outer join: a point present in any component is kept), in time order,
    their columns side by side. Written into one array: joining frame by frame copied the growing frame at
    each step (a month × 300 sensors peaked at 5 × its size)."""
    index = parts[0].index
    for part in parts[1:]:
        index = index.union(part.index)
    index = index.sort_values()
    out = np.full((len(index), sum(part.shape[1] for part in parts)), np.nan)
    column = 0
    for part in parts:
        out[index.get_indexer(part.index), column:column + part.shape[1]] = part.to_numpy(dtype=np.float64)
        column += part.shape[1]
    return pd.DataFrame(out, index=index, columns=[c for part in parts for c in part.columns], copy=False)


def load_dataset(data_dir: Path, components: list[Component], rate: int) -> pd.DataFrame:
    parts = []
    for comp in components:
        path = data_dir / f"{comp.name}.parquet"
        if not path.exists():
            raise TrainingFailed(f"dataset has no ingested data for component {comp.name}")
        frame = pd.read_parquet(path, columns=["timestamp", *comp.sensors])
        parts.append(resample(frame, comp.name, comp.sensors, rate))
    return join(parts)


def infer_rate(data_dir: Path, components: list[Component], rates: dict[str, int]) -> str:
    """The smallest allowed TargetSamplingRate not below the data's median spacing (used when none given)."""
    spacing = []
    for comp in components:
        ts = pd.read_parquet(data_dir / f"{comp.name}.parquet", columns=["timestamp"])["timestamp"]
        if len(ts) > 1:
            spacing.append(float(np.median(np.diff(ts.to_numpy()).astype("timedelta64[ms]").astype(np.int64))) / 1e3)
    step = min(spacing) if spacing else 60.0
    for name, secs in sorted(rates.items(), key=lambda kv: kv[1]):
        if secs >= step:
            return name
    return "PT1H"


def _between(frame: pd.DataFrame, start: float | None, end: float | None) -> pd.DataFrame:
    idx = frame.index.asi8 / 1e9 if len(frame) else np.array([])
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= idx >= start
    if end is not None:
        keep &= idx <= end
    return frame[keep]


def read_labels(store, prefix: str) -> list[tuple[float, float]]:
    """Label ranges (epoch seconds) from every CSV under ``prefix``: two columns, no header (§4)."""
    ranges = []
    for key in store.list(prefix):
        frame = pd.read_csv(io.BytesIO(store.get(key)), header=None, dtype=str)
        if frame.shape[1] < 2:
            continue
        starts, ends = parse_column(frame[0]), parse_column(frame[1])
        for s, e in zip(starts, ends, strict=True):
            if pd.notna(s) and pd.notna(e):
                ranges.append((s.timestamp(), e.timestamp()))
    return sorted(ranges)


def _runs(times: np.ndarray, flags: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Contiguous runs of True (grid points at most one step apart) as (first, last) epoch seconds."""
    runs, start, prev = [], None, None
    for t, f in zip(times, flags, strict=True):
        if f and start is not None and t - prev <= rate:
            prev = t
        elif f:
            if start is not None:
                runs.append((start, prev))
            start = prev = t
        elif start is not None:
            runs.append((start, prev))
            start = None
    if start is not None:
        runs.append((start, prev))
    return runs


def on_grid(frame: pd.DataFrame, rate: int) -> pd.DataFrame:
    """``frame`` reindexed on every grid point between its first and last row (missing points as empty rows),
    so that the detector's durations count real time; kept as it is when that would more than quadruple it (a
    history of a few days spread over a year: its gaps would only cost memory)."""
    if len(frame) < 2:
        return frame
    first, last = frame.index[0], frame.index[-1]
    points = int((last - first).total_seconds() // rate) + 1
    if points > 4 * len(frame):
        return frame
    return frame.reindex(pd.date_range(first, last, freq=f"{rate}s"))


def _outside(frame: pd.DataFrame, labels: list[tuple[float, float]]) -> np.ndarray:
    """Rows of ``frame`` outside every labelled range."""
    idx = frame.index.asi8 / 1e9 if len(frame) else np.array([])
    keep = np.ones(len(frame), dtype=bool)
    for start, end in labels:
        keep &= ~((idx >= start) & (idx <= end))
    return keep


def train(data_dir: Path, components: list[Component], rate: int, train_range: tuple[float | None, float | None],
          eval_range: tuple[float | None, float | None], labels: list[tuple[float, float]],
          off: OffCondition | None, model_dir: Path) -> dict:
    """Fit, evaluate and save the model; returns the ModelMetrics document. Raises TrainingFailed.

    Labelled ranges and machine-off rows do not define normal behaviour: they are emptied (kept as grid rows,
    so durations stay true) before the fit. When an evaluation range is given, its rows outside labelled ranges
    calibrate the threshold too (at most 0.5 % of them alarm), and ModelMetrics judge the model on it."""
    frame = load_dataset(data_dir, components, rate)
    names = list(frame.columns)
    if off is not None and off.sensor not in names:
        raise TrainingFailed(f"OffCondition sensor {off.sensor} is not in the model's schema")
    train_rows = on_grid(_between(frame, *train_range), rate)
    fit_values = train_rows.to_numpy(dtype=np.float64, copy=True)
    fit_values[~_outside(train_rows, labels)] = np.nan  # labelled anomalies do not define normal behaviour
    if off is not None:
        fit_values[off.mask(train_rows)] = np.nan
    has_eval = eval_range != (None, None)
    eval_rows = on_grid(_between(frame, *eval_range), rate) if has_eval else None
    calibration = None
    if eval_rows is not None and len(eval_rows):
        calibration = eval_rows.to_numpy(dtype=np.float64, copy=True)
        calibration[~_outside(eval_rows, labels)] = np.nan
        if off is not None:
            calibration[off.mask(eval_rows)] = np.nan
    grid = train_rows.index
    del frame, train_rows  # the fit and the metrics read fit_values: the frames would only add their size
    try:
        detector = Detector.fit(fit_values, names, float(rate), calibration=calibration)
    except ValueError as exc:
        raise TrainingFailed(f"training failed: {exc}") from None
    model_dir.mkdir(parents=True, exist_ok=True)
    detector.save(model_dir / "detector.npz")
    write_json_atomic(model_dir / "model.json", {"names": names, "rate": rate, "off": off.text() if off else None})
    if eval_rows is not None:
        return metrics(detector, eval_rows, labels, off, rate)
    # the model's own normal rows: how often it alarms on what it learned (a frame over fit_values, not a copy)
    scored = pd.DataFrame(fit_values, index=grid, columns=names, copy=False)
    return metrics(detector, scored, [], off, rate)


def metrics(detector: Detector, rows: pd.DataFrame, labels: list[tuple[float, float]],
            off: OffCondition | None, rate: int) -> dict:
    """ModelMetrics in the layout the L4E SDK's evaluation reads (labeled/predicted ranges + event counts), plus
    ``evaluation``: the figures ``l4e-agent lookout evaluate`` reports (point-wise F1, FAR, MAR, events).

    The rows are scored part by part (``Detector.score_chunks``: the scores of scoring them at once, without
    holding ~15 copies of a month of rows × hundreds of sensors). Of the per-sensor shares only the anomalous
    rows' are kept: the predicted ranges' diagnostics are their means."""
    times = rows.index.asi8 / 1e9 if len(rows) else np.array([])
    present = ~rows.isna().all(axis=1).to_numpy() if len(rows) else np.array([], dtype=bool)
    flags = np.zeros(len(rows), dtype=bool)
    if len(rows):
        not_off = ~off.mask(rows) if off is not None else np.ones(len(rows), dtype=bool)
        kept = []  # shares of the flagged rows, in row order
        for first, scores, shares in detector.score_chunks(rows.to_numpy(dtype=np.float64)):
            chunk = slice(first, first + len(scores))
            flags[chunk] = (np.round(scores, 5) >= 0.5) & present[chunk] & not_off[chunk]
            kept.append(shares[flags[chunk]])
        flagged_shares = np.concatenate(kept)
        rank = np.cumsum(flags) - 1  # row → its index among the flagged rows
    predicted = []
    for start, end in _runs(times, flags, rate):
        sel = np.flatnonzero((times >= start) & (times <= end))  # a run's rows are consecutive flagged rows
        share = flagged_shares[rank[sel[0]]:rank[sel[-1]] + 1].mean(axis=0)
        predicted.append({"start": format_csv_time(start), "end": format_csv_time(end),
                          "diagnostics": [{"name": n, "value": v}
                                          for n, v in zip(detector.names, rounded_shares(share), strict=True)]})
    lab = [{"start": format_csv_time(s), "end": format_csv_time(e)} for s, e in labels
           if not len(times) or (e >= times[0] and s <= times[-1])]
    detected = sum(1 for s, e in labels if any(ps <= e and pe >= s for ps, pe in _runs(times, flags, rate)))
    overlap = sum(1 for ps, pe in _runs(times, flags, rate) if any(ps <= e and pe >= s for s, e in labels))
    truth = ~_outside(rows, labels) if len(rows) else np.array([], dtype=bool)
    figures = count(truth[present], flags[present], float(rate)).figures() if present.any() else None
    return {
        "labeled_ranges": lab,
        "predicted_ranges": predicted,
        "unknown_label_ranges": [],
        "labeled_event_metrics": {"num_labeled": len(lab), "num_labeled_detected": detected},
        "predicted_event_metrics": {"num_predicted": len(predicted), "num_predicted_with_label_overlap": overlap},
        "evaluated_points": int(present.sum()),
        "anomalous_points": int(flags.sum()),
        "score_threshold": 0.5,
        "evaluation": figures,
    }


@dataclass
class TrainedModel:
    """A loaded model: detector + resampling rate + off condition."""

    detector: Detector
    rate: int
    off: OffCondition | None

    @classmethod
    def load(cls, model_dir: Path) -> TrainedModel:
        meta = json.loads((model_dir / "model.json").read_text())
        return cls(Detector.load(model_dir / "detector.npz"), int(meta["rate"]), OffCondition.parse(meta["off"]))

    def result_lines(self, frame: pd.DataFrame, context: int = 0) -> list[dict]:
        """One results.jsonl record per row of a grid-indexed frame (columns = qualified sensor names) after its
        first ``context`` rows, which are history the scores may use (consecutive grid rows, empty where there
        was no data; see ``Detector.context_rows``)."""
        frame = frame.reindex(columns=self.detector.names)
        scores, shares = self.detector.score(frame.to_numpy(dtype=np.float64), context=context)
        frame = frame.iloc[context:]
        off = self.off.mask(frame) if self.off is not None else np.zeros(len(frame), dtype=bool)
        names = self.detector.names
        rounded = rounded_share_rows(shares)
        lines = []
        for i, ts in enumerate(frame.index.asi8 // 10**9):
            when = format_csv_time(int(ts))
            if off[i]:
                lines.append({"timestamp": when, "prediction": 0, "prediction_reason": "MACHINE_OFF"})
                continue
            score = round(float(scores[i]), 5)
            anomalous = score >= 0.5
            lines.append({
                "timestamp": when, "prediction": int(anomalous),
                "prediction_reason": "ANOMALY_DETECTED" if anomalous else "NO_ANOMALY_DETECTED",
                "anomaly_score": score,
                "diagnostics": [{"name": n, "value": v} for n, v in zip(names, rounded[i], strict=True)],
            })
        return lines

    def results_jsonl(self, frame: pd.DataFrame, context: int = 0) -> tuple[bytes, bool]:
        """(results.jsonl bytes, any anomalous line): exactly ``json.dumps`` of each ``result_lines`` record plus
        a newline, written as text directly. A PT1S window holds 300 lines × every sensor's diagnostics;
        building and encoding 90,000 small dicts cost more than the scoring, so the fixed parts of each entry
        (the sensor names, JSON-escaped once) are joined with the numbers instead."""
        frame = frame.reindex(columns=self.detector.names)
        scores, shares = self.detector.score(frame.to_numpy(dtype=np.float64), context=context)
        frame = frame.iloc[context:]
        off = self.off.mask(frame) if self.off is not None else np.zeros(len(frame), dtype=bool)
        heads = ['{"name": ' + json.dumps(n) + ', "value": ' for n in self.detector.names]
        rounded = rounded_share_rows(shares)
        out, anomalous = [], False
        for i, ts in enumerate(frame.index.asi8 // 10**9):
            when = json.dumps(format_csv_time(int(ts)))
            if off[i]:
                out.append(f'{{"timestamp": {when}, "prediction": 0, "prediction_reason": "MACHINE_OFF"}}\n')
                continue
            score = round(float(scores[i]), 5)
            hit = score >= 0.5
            anomalous |= hit
            diagnostics = ", ".join([h + repr(v) + "}" for h, v in zip(heads, rounded[i], strict=True)])
            reason = "ANOMALY_DETECTED" if hit else "NO_ANOMALY_DETECTED"
            out.append(f'{{"timestamp": {when}, "prediction": {int(hit)}, "prediction_reason": "{reason}", '
                       f'"anomaly_score": {score!r}, "diagnostics": [{diagnostics}]}}\n')
        return "".join(out).encode(), anomalous
