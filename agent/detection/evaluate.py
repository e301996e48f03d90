"""Evaluate the detector on labelled runs: for each run, fit on its first rows, score every later row with the
same code CreateModel and inference use, then pool the figures (``agent.detection.metrics``).

Training rows are the first ``train_rows`` rows, or the rows inside a time range; labelled rows among them are
left out of the fit (as CreateModel leaves labelled ranges out), kept as empty grid rows so the grid stays
regular. The scored rows are every row after the training rows; their scores may use the training rows as
history (scoring is causal: a row's score uses rows at or before it only). A row is predicted anomalous when
its score, rounded to 5 decimals as results.jsonl writes it, is ≥ 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.detection.detector import Detector, DetectorParams
from agent.detection.metrics import Counts, count
from agent.detection.runs import Run, RunError

DECISION = 0.5


@dataclass(frozen=True)
class TrainSpec:
    """Which rows of a run train the detector: the first ``rows``, or those with start ≤ time ≤ end (epoch s)."""

    rows: int | None = None
    start: float | None = None
    end: float | None = None

    def split(self, run: Run) -> tuple[int, int]:
        """(first training row, first scored row): rows in between train the detector, every row from the
        second on is scored. Raises RunError."""
        if self.rows is not None:
            return 0, self.rows
        inside = np.flatnonzero((run.times >= self.start) & (run.times <= self.end))
        if not len(inside):
            raise RunError(f"{run.name}: no row inside the training range")
        return int(inside[0]), int(inside[-1]) + 1


@dataclass
class RunResult:
    """One run's scored rows and their figures."""

    run: Run
    first_scored: int
    scores: np.ndarray
    predictions: np.ndarray
    counts: Counts


def evaluate_run(run: Run, train: TrainSpec, params: DetectorParams | None = None) -> RunResult:
    """Fit and score one run. Raises RunError when it has too few training or scored rows."""
    start, split = train.split(run)
    p = run.values.shape[1]
    fit_rows = run.values[start:split].copy()
    fit_rows[run.labels[start:split] == 1] = np.nan  # labelled anomalies do not define normal behaviour
    usable = int((~np.all(np.isnan(fit_rows), axis=1)).sum())
    if usable < p + 2:
        raise RunError(f"{run.name}: {usable} training rows for {p} sensors; the detector needs at least {p + 2}")
    if split >= len(run.values):
        raise RunError(f"{run.name}: {len(run.values)} rows, none left to score after {split} training rows")
    try:
        detector = Detector.fit(fit_rows, run.sensors, run.rate, params)
    except ValueError as exc:
        raise RunError(f"{run.name}: {exc}") from None
    scores, _shares = detector.score(run.values, context=split)
    scores = np.round(scores, 5)
    predictions = (scores >= DECISION).astype(np.int8)
    return RunResult(run, split, scores, predictions, count(run.labels[split:], predictions, run.rate))


def pooled(results: list[RunResult]) -> dict:
    """The pooled figures of every scored row of every run."""
    total = Counts()
    for result in results:
        total = total + result.counts
    return total.figures()
