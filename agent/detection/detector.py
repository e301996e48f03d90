"""The anomaly detector: a smoothed Mahalanobis distance to two references, the training state and the
recent past, scored causally. numpy only; arrays in, scores and diagnostics out.

Why two references. A model trained on a short history (minutes to days) sees the plant at one operating
point; a slow drift afterwards (a pump warming up, a season) moves every sensor far from that point although
nothing is wrong, and a detector that only knows the training state alarms on all of it. A fault, on the
other hand, is a change the plant did not make a few minutes earlier. So the deviation is measured from both
the training mean and the state ``lag_secs`` ago, and along each whitened direction the smaller of the two
counts: a row is anomalous when it is unlike the training data *and* unlike the recent past. The lag is long
enough (5 min) that a fault developing over minutes is still compared with the state before it.

A fault that settles into a new steady state would, after ``lag_secs + reference_secs`` (7 min), be judged
against its own recent past and forgotten. So the recent reference latches (``agent.detection.latch``): while
an alarm is not released, the rows it covers are not a reference; the plant is compared with its last
alarm-free state instead. The alarm is released when the plant comes back at least half way
(``release_fraction``) or after ``latch_secs`` (20 min: a state the plant keeps that long becomes its recent
past, so a drift that tripped a false alarm cannot hold it for ever).

Training (``Detector.fit``) on rows of an (n × p) matrix on a regular grid of ``rate`` seconds (NaN allowed,
a row of NaN is a grid point without data):
1. per sensor, centre on the mean and scale by the standard deviation of the training rows (a floor of 10⁻⁶
   of the level keeps a constant sensor finite); an empty cell counts as the training mean (z = 0);
2. rows are smoothed by a trailing mean over ``smooth_secs``; the covariance of the smoothed training rows,
   eigenvalues lifted by ``shrink`` × their mean (collinear sensors would otherwise make the inverse explode),
   gives the whitening W (ZCA, the symmetric inverse square root);
3. calibration: the training rows' distance to the training mean, d² = ‖W z‖², smoothed by a trailing median
   over ``score_secs``; the threshold T is ``margin`` × its ``quantile``. When rows the model did not fit are
   given (L4E's evaluation range, labelled anomalies removed), T is also raised to their score quantile, so at
   most 1 − ``quantile`` of them alarm.

Scoring a row t (``Detector.score``), from rows ≤ t only:
- z_s = the smoothed standardised row; r = the mean of the rows in (t − lag − width, t − lag] (the recent
  reference, ``reference_secs`` wide; frozen at the last alarm-free state while an alarm holds, see above);
  along each whitened direction (the components of W z_s and
  W (z_s − r), independent by construction) the smaller in magnitude is kept: w (W z_s alone while no
  reference exists yet). Choosing per sensor instead would mix references across correlated sensors and make
  a broken correlation out of a drift;
- d² = ‖w‖², smoothed by a trailing median over ``score_secs`` (a burst shorter than half of it does not
  alarm; a lasting change alarms after half of it);
- ``anomaly_score = (d²/T)² / ((d²/T)² + 1)``: d² = T scores exactly 0.5 (the decision line), in [0, 1).

Diagnostics are reconstruction-based contributions (Alcala & Qin 2009) of the deviation dev = W⁻¹ w: with P = W² the
regularised inverse covariance, sensor i contributes (P dev)_i² / P_ii, the squared distance removed by
reconstructing sensor i from all the others. They are non-negative and, for a fault on one sensor, largest on
that sensor even when sensors are strongly correlated; they are normalised to shares that sum to 1. A broken
correlation shows as a large d² even when every sensor stays inside its own normal range.

Defaults (``DetectorParams``) were chosen once on SKAB's valve1 runs (the README's "Detection quality") as the
middle of a range where the figures hold, and are the same for every model; durations are in seconds, so the
same model behaves alike at PT1S and at PT1M (a span shorter than one row is one row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.core.atomic import replace_with
from agent.detection.features import (
    extend_sums,
    lagged_mean_at,
    rows_for,
    trailing_mean_at,
    trailing_median,
)
from agent.detection.latch import Latch

FORMAT = 2  # detector file format; 1 (no "format" field) was the single-reference detector
POWER = 2.0
# Rows × sensors a long run is scored by at a time (``score_chunks``): a part holds ~15 float64 arrays of that
# size (standardised, whitened, running sums, smoothed, reference, deviations, contributions, shares), so
# ~120 MiB whatever the run's length (30 days × 300 sensors at PT1M at once held ~1.5 GiB)
CHUNK_CELLS = 1_000_000


class ModelFormatError(ValueError):
    """A detector file this version cannot score (written by an earlier detector): retrain the model."""


@dataclass(frozen=True)
class DetectorParams:
    """The detector's settings; durations in seconds."""

    smooth_secs: float = 5.0       # trailing mean of the rows before any distance
    score_secs: float = 45.0       # trailing median of d²
    lag_secs: float = 300.0        # how far back the recent reference ends
    reference_secs: float = 120.0  # how wide the recent reference is
    margin: float = 4.0            # threshold = margin × the training score quantile
    quantile: float = 0.995
    shrink: float = 0.01           # eigenvalue lift, relative to their mean
    latch_secs: float = 1200.0     # an unreleased alarm keeps the reference frozen at most this long
    release_fraction: float = 0.5  # released when the distance to the frozen reference falls below this × its peak


@dataclass
class Detector:
    """A fitted detector over sensors ``names`` (qualified ``component\\sensor``), in that column order, for
    rows ``rate`` seconds apart."""

    names: list[str]
    rate: float
    mean: np.ndarray
    scale: np.ndarray
    whiten: np.ndarray
    threshold: float
    params: DetectorParams = field(default_factory=DetectorParams)

    def __post_init__(self) -> None:
        self.precision = self.whiten @ self.whiten  # regularised inverse covariance, kept for diagnostics
        self.unwhiten = np.linalg.inv(self.whiten)
        p = self.params
        self.smooth_rows = rows_for(p.smooth_secs, self.rate)
        self.score_rows = rows_for(p.score_secs, self.rate)
        self.lag_rows = rows_for(p.lag_secs, self.rate)
        self.reference_rows = rows_for(p.reference_secs, self.rate)
        self.latch_rows = rows_for(p.latch_secs, self.rate)

    @property
    def context_rows(self) -> int:
        """Rows before the first scored row that the score of that row uses: give ``score`` this many rows of
        history (fewer is fine; the first rows then rely on the training reference alone)."""
        return self.lag_rows + self.reference_rows + self.smooth_rows + self.score_rows + self.latch_rows

    @classmethod
    def fit(cls, values: np.ndarray, names: list[str], rate: float = 1.0, params: DetectorParams | None = None,
            calibration: np.ndarray | None = None) -> Detector:
        """Fit on the rows of ``values`` (n × p, grid rows ``rate`` seconds apart, NaN allowed). ``calibration``:
        rows the model did not fit, known normal (optional; see the module docstring). Raises ValueError when
        there are fewer than p + 2 rows with data or a sensor has no value at all."""
        params = params or DetectorParams()
        values = np.asarray(values, dtype=np.float64)
        p = values.shape[1]
        if p != len(names):
            raise ValueError("one name per column")
        if not rate > 0:
            raise ValueError(f"rate {rate}: must be > 0 seconds")
        present = ~np.all(np.isnan(values), axis=1)
        if int(present.sum()) < p + 2:
            raise ValueError(f"{int(present.sum())} training rows for {p} sensors; need at least {p + 2}")
        empty = [names[i] for i in range(p) if np.all(np.isnan(values[:, i]))]
        if empty:
            raise ValueError(f"sensors without any value in the training range: {empty}")
        mean = np.nanmean(values, axis=0)
        scale = np.nanstd(values, axis=0)
        scale = np.maximum(scale, np.maximum(1e-6 * np.abs(mean), 1e-12))  # a constant sensor stays finite
        smooth = _smoothed_present_rows(values, mean, scale, present, rows_for(params.smooth_secs, rate))
        cov = np.atleast_2d(np.cov(smooth, rowvar=False))
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.maximum(eigval, 0.0)
        eigval = eigval + params.shrink * max(float(np.mean(eigval)), 1e-12)
        whiten = (eigvec / np.sqrt(eigval)) @ eigvec.T
        detector = cls(list(names), float(rate), mean, scale, whiten, 1.0, params)
        step = _part_rows(p)  # ‖W z‖² part by part: the whitened rows are never all held at once
        d2 = np.concatenate([np.sum((smooth[i:i + step] @ whiten) ** 2, axis=1) for i in range(0, len(smooth), step)])
        d2 = trailing_median(d2, detector.score_rows)
        # the first rows' smoothing windows are still filling (noisier): they would set the threshold
        warm_up = detector.smooth_rows + detector.score_rows
        if len(d2) >= 2 * warm_up:
            d2 = d2[warm_up:]
        threshold = params.margin * float(np.nanquantile(d2, params.quantile))
        if calibration is not None and len(calibration):
            held_out = np.concatenate([d2 for _, d2, _ in detector.distance_parts(calibration)])
            held_out = held_out[np.isfinite(held_out)]
            if len(held_out):
                threshold = max(threshold, float(np.quantile(held_out, params.quantile)))
        detector.threshold = max(threshold, 1e-9)
        return detector

    def distance(self, values: np.ndarray, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed d² per row, reconstruction-based contribution per row × sensor) for rows[context:] of
        consecutive grid rows (n × p, NaN allowed; an all-NaN row is a grid point without data); the first
        ``context`` rows are history. d² is NaN where no row with data is in reach yet."""
        values = np.asarray(values, dtype=np.float64)
        parts = list(self.distance_parts(values, chunk_rows=max(len(values), 1)))
        if not parts:
            return np.zeros(0), np.zeros((0, len(self.names)))
        smoothed = np.concatenate([d2 for _, d2, _ in parts])[context:]
        deviation = np.concatenate([dev for _, _, dev in parts])[context:]
        return smoothed, self._contributions(deviation)

    def distance_parts(self, values: np.ndarray, chunk_rows: int | None = None
                       ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The run's (smoothed d², whitened deviation) part by part: yields (first row, d², deviation) for
        consecutive parts covering the rows in order. Each part standardises and whitens about ``chunk_rows``
        more rows (default: ``CHUNK_CELLS`` cells), extends the running sums the means are taken from and feeds
        the latch (agent.detection.latch): only the rows the next part's means still need are kept, so the
        memory is that of a part, and every value is the one scoring the run at once gives (the same sums
        added in the same order, the same latch blocks)."""
        values = np.asarray(values, dtype=np.float64)
        n, p = values.shape
        chunk_rows = chunk_rows or _part_rows(p)
        present = ~np.all(np.isnan(values), axis=1)
        latch = Latch(n, p, self.threshold, self.lag_rows, self.reference_rows, self.score_rows, self.latch_rows,
                      self.params.release_fraction)
        back = max(self.smooth_rows, self.lag_rows + self.reference_rows)  # rows before a row its means read
        sums, counts = np.zeros((1, p)), np.zeros(1)  # running sums of rows [0, k) for k in [base, done]
        base = done = 0
        while latch.next_row < n:
            end = min(done + chunk_rows, n)
            if end > done:  # whitened once: the means are linear, so they can be taken in whitened space
                zw = _standardise(values[done:end], self.mean, self.scale) @ self.whiten
                sums = extend_sums(sums, np.where(present[done:end, None], zw, 0.0))
                counts = extend_sums(counts, present[done:end].astype(np.float64))
                done = end
            first = latch.next_row
            static = trailing_mean_at(sums, counts, base, first, done, self.smooth_rows)
            lagged = lagged_mean_at(sums, counts, base, first, done, self.lag_rows, self.reference_rows)
            stop, smoothed, deviation = latch.advance(first, static, lagged)
            if stop > first:
                yield first, smoothed, deviation
            keep = max(stop - back, 0)  # the sums of rows before this are read by no row still to come
            sums, counts, base = sums[keep - base:], counts[keep - base:], keep

    def _contributions(self, deviation: np.ndarray) -> np.ndarray:
        """Reconstruction-based contribution per row × sensor of whitened deviations (module docstring)."""
        dev = deviation @ self.unwhiten  # the deviation in sensor units
        return (dev @ self.precision) ** 2 / np.diag(self.precision)

    def score(self, values: np.ndarray, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly score in [0, 1) per row, per-sensor shares per row summing to 1) for rows[context:]; the
        first ``context`` rows are history that the scores may use (see ``context_rows``). A row without any
        value in reach scores 0."""
        d2, contrib = self.distance(values, context)
        return self._scores(d2, contrib)

    def score_chunks(self, values: np.ndarray, chunk_rows: int | None = None
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``score(values)`` of a long run, part by part (``distance_parts``): yields (first row, scores,
        shares) for consecutive parts covering the rows in order, the very values ``score`` gives, with the
        memory of one part (CreateModel's ModelMetrics scores a month of training rows so)."""
        for first, d2, deviation in self.distance_parts(values, chunk_rows):
            scores, shares = self._scores(d2, self._contributions(deviation))
            yield first, scores, shares

    def _scores(self, d2: np.ndarray, contrib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ratio = np.where(np.isfinite(d2), d2, 0.0) / self.threshold
        scores = ratio**POWER / (ratio**POWER + 1.0)
        total = contrib.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(total > 0, contrib / total, 1.0 / contrib.shape[1])
        return scores, shares

    def save(self, path: Path) -> None:
        """Write ``path`` atomically (file and folder fsynced): a crash leaves the old detector or the new."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary's name
                np.savez(fh, format=np.array(FORMAT), names=np.array(self.names, dtype=object).astype(str),
                         rate=np.array(self.rate), mean=self.mean, scale=self.scale, whiten=self.whiten,
                         threshold=np.array(self.threshold),
                         params=np.array(list(asdict(self.params).values()), dtype=np.float64))

        replace_with(path, write)

    @classmethod
    def load(cls, path: Path) -> Detector:
        """The detector saved at ``path``. Raises ModelFormatError for a file of an earlier detector."""
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or int(data["format"]) != FORMAT:
                found = int(data["format"]) if "format" in data.files else 1
                raise ModelFormatError(
                    f"the model was trained by an earlier detector (file format {found}, this version reads "
                    f"{FORMAT}); train it again (CreateModel) to score with this version")
            params = DetectorParams(*(float(v) for v in data["params"]))
            return cls([str(n) for n in data["names"]], float(data["rate"]), data["mean"], data["scale"],
                       data["whiten"], float(data["threshold"]), params)


def _part_rows(p: int) -> int:
    """Rows of ``p`` sensors in a part of ``CHUNK_CELLS`` cells."""
    return max(CHUNK_CELLS // max(p, 1), 1)


def _smoothed_present_rows(values: np.ndarray, mean: np.ndarray, scale: np.ndarray, present: np.ndarray,
                           width: int) -> np.ndarray:
    """``trailing_mean`` of the standardised rows over ``width`` rows, of the present rows only, computed part
    by part from the run's running sums (agent.detection.features): the same values, without holding the
    standardised run and the sums of it whole."""
    n, p = values.shape
    out = np.empty((int(present.sum()), p))
    sums, counts = np.zeros((1, p)), np.zeros(1)
    base = filled = 0
    step = _part_rows(p)
    for start in range(0, n, step):
        end = min(start + step, n)
        sums = extend_sums(sums, np.where(present[start:end, None], _standardise(values[start:end], mean, scale), 0.0))
        counts = extend_sums(counts, present[start:end].astype(np.float64))
        part = trailing_mean_at(sums, counts, base, start, end, width)[present[start:end]]
        out[filled:filled + len(part)] = part
        filled += len(part)
        keep = max(end - width, 0)  # the sums the next part's first rows read
        sums, counts, base = sums[keep - base:], counts[keep - base:], keep
    return out


def _standardise(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (values - mean) / scale
    return np.where(np.isfinite(z), z, 0.0)


def rounded_share_rows(shares: np.ndarray, digits: int = 5) -> list[list[float]]:
    """``rounded_shares`` of every row of an (n × p) matrix at once (the same numbers; a results file at PT1S
    holds 300 rows × every sensor, one call per row would cost more than the scoring)."""
    unit = 10**digits
    ints = np.floor(np.asarray(shares, dtype=np.float64) * unit + 0.5).astype(np.int64)
    ints = np.maximum(ints, 0)
    ints[np.arange(len(ints)), np.argmax(ints, axis=1)] += unit - ints.sum(axis=1)
    return (ints / unit).tolist()


def rounded_shares(shares: np.ndarray, digits: int = 5) -> list[float]:
    """Shares rounded to ``digits`` decimals, still non-negative and summing to exactly 1 at that precision:
    the rounding residue goes to the largest share (which can absorb it without going negative)."""
    unit = 10**digits
    ints = np.floor(np.asarray(shares, dtype=np.float64) * unit + 0.5).astype(np.int64)
    ints = np.maximum(ints, 0)
    ints[int(np.argmax(ints))] += unit - int(ints.sum())
    return [float(i) / unit for i in ints]
