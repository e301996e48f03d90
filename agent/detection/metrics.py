"""How a detector is judged: point-wise and event figures from labels and predictions. numpy only.

Point-wise (SKAB's protocol, pooled over every scored row of every run):
    F1 = 2 TP / (2 TP + FP + FN),  FAR = FP / (FP + TN),  MAR = FN / (FN + TP).
Events, per run (a run's rows are consecutive grid rows ``rate`` seconds apart):
- a labelled event is a maximal stretch of label-1 rows; it is detected when a prediction is 1 on any of its
  rows, and its detection delay is the time from its first row to the first predicted row inside it;
- a false alarm event is a maximal stretch of predicted-1 rows that touches no labelled row;
- false alarm events per day = false alarm events / (label-0 scored rows × rate / 86,400 s).
An undefined ratio (no positive row, no normal row) is None, never a made-up 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SECONDS_PER_DAY = 86_400.0


def stretches(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (first, last) row indexes, inclusive."""
    flags = np.asarray(flags, dtype=bool)
    if not flags.any():
        return []
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@dataclass
class Counts:
    """Confusion counts and event tallies; ``+`` pools two of them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    events: int = 0
    detected: int = 0
    delays_secs: list[float] = field(default_factory=list)
    false_alarm_events: int = 0
    normal_secs: float = 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn,
                      self.events + other.events, self.detected + other.detected,
                      self.delays_secs + other.delays_secs, self.false_alarm_events + other.false_alarm_events,
                      self.normal_secs + other.normal_secs)

    def figures(self) -> dict:
        """F1, FAR, MAR (fractions), event figures and the counts they come from."""
        return {
            "f1": _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "far": _ratio(self.fp, self.fp + self.tn),
            "mar": _ratio(self.fn, self.fn + self.tp),
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
            "events": self.events, "events_detected": self.detected,
            "median_delay_secs": float(np.median(self.delays_secs)) if self.delays_secs else None,
            "false_alarm_events": self.false_alarm_events,
            "false_alarm_events_per_day": _ratio(self.false_alarm_events * SECONDS_PER_DAY, self.normal_secs),
            "normal_days": self.normal_secs / SECONDS_PER_DAY,
        }


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def count(labels: np.ndarray, predictions: np.ndarray, rate: float) -> Counts:
    """The counts of one run's scored rows (``labels`` and ``predictions`` 0/1 per row, rows ``rate`` s apart)."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predictions, dtype=bool)
    if y.shape != p.shape:
        raise ValueError("one prediction per label")
    out = Counts(tp=int((p & y).sum()), fp=int((p & ~y).sum()), fn=int((~p & y).sum()), tn=int((~p & ~y).sum()))
    for first, last in stretches(y):
        out.events += 1
        hits = np.flatnonzero(p[first:last + 1])
        if len(hits):
            out.detected += 1
            out.delays_secs.append(float(hits[0]) * rate)
    out.false_alarm_events = sum(1 for first, last in stretches(p) if not y[first:last + 1].any())
    out.normal_secs = float((~y).sum()) * rate
    return out
