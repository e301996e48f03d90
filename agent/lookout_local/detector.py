"""The anomaly detector: robust standardisation + regularised Mahalanobis distance. numpy only, no I/O.

Training (``Detector.fit``) on an (n × p) matrix of resampled sensor values:
1. per sensor, centre on the median and scale by the IQR (/1.349, so ~σ for Gaussian data), which a few
   outliers in the history do not move; empty cells become the median (z = 0);
2. covariance of the standardised data, eigenvalues lifted by 1 % of their mean (shrinkage: collinear
   sensors would otherwise make the inverse explode), and its symmetric inverse square root W (ZCA);
3. calibration: d² = ‖W z‖² on the training rows; the threshold T is 1.5 × their 99.5th percentile.

Scoring a row: d² = ‖W z‖², ``anomaly_score = d²ᵏ / (d²ᵏ + Tᵏ)`` with k = 2, so d² = T scores exactly 0.5
(the decision threshold), typical training rows score ≈ 0.05–0.15 and the score is in [0, 1).
Diagnostics are reconstruction-based contributions (Alcala & Qin 2009): with P = W² the regularised inverse
covariance, sensor i contributes (P z)_i² / P_ii, the squared distance removed by reconstructing sensor i
from all the others. They are non-negative and, for a fault on one sensor, largest on that sensor even when
sensors are strongly correlated (a plain split of d² smears over correlated sensors); they are normalised to
shares that sum to 1. A broken correlation between sensors shows as a large d² even when every sensor stays
inside its own normal range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.core.atomic import replace_with

SHRINK = 0.01
QUANTILE = 0.995
MARGIN = 1.5
POWER = 2.0


@dataclass
class Detector:
    """A fitted detector over sensors ``names`` (qualified ``component\\sensor``), in that column order."""

    names: list[str]
    median: np.ndarray
    scale: np.ndarray
    whiten: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        self.precision = self.whiten @ self.whiten  # regularised inverse covariance, kept for scoring

    @classmethod
    def fit(cls, values: np.ndarray, names: list[str]) -> Detector:
        """Fit on rows of ``values`` (n × p, NaN allowed). Raises ValueError when there are fewer than
        p + 2 usable rows or a sensor has no value at all."""
        values = np.asarray(values, dtype=np.float64)
        n, p = values.shape
        if p != len(names):
            raise ValueError("one name per column")
        if n < p + 2:
            raise ValueError(f"{n} training rows for {p} sensors; need at least {p + 2}")
        empty = [names[i] for i in range(p) if np.all(np.isnan(values[:, i]))]
        if empty:
            raise ValueError(f"sensors without any value in the training range: {empty}")
        median = np.nanmedian(values, axis=0)
        q75, q25 = np.nanpercentile(values, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349
        std = np.nanstd(values, axis=0)
        # a quantised or mostly-constant sensor has IQR 0: fall back to σ, then to a floor relative to its level
        scale = np.where(scale > 0, scale, std)
        scale = np.maximum(scale, 1e-3 * np.maximum(np.abs(median), 1.0))
        z = _standardise(values, median, scale)
        cov = np.atleast_2d(np.cov(z, rowvar=False))
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.maximum(eigval, 0.0) + SHRINK * max(float(np.mean(np.maximum(eigval, 0.0))), 1e-12)
        whiten = (eigvec / np.sqrt(eigval)) @ eigvec.T
        d2 = np.sum((z @ whiten) ** 2, axis=1)
        threshold = MARGIN * float(np.quantile(d2, QUANTILE))
        threshold = max(threshold, float(p))  # never below the mean d² of ideal normal data
        return cls(list(names), median, scale, whiten, threshold)

    def distance(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d² per row, reconstruction-based contribution per row × sensor); NaN → the training median."""
        z = _standardise(np.asarray(values, dtype=np.float64), self.median, self.scale)
        w = z @ self.whiten
        contrib = (z @ self.precision) ** 2 / np.diag(self.precision)
        return np.sum(w**2, axis=1), contrib

    def score(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly score in [0, 1) per row, per-sensor shares per row summing to 1)."""
        d2, contrib = self.distance(values)
        ratio = d2 / self.threshold
        scores = ratio**POWER / (ratio**POWER + 1.0)
        total = contrib.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(total > 0, contrib / total, 1.0 / contrib.shape[1])
        return scores, shares

    def save(self, path: Path) -> None:
        """Write ``path`` atomically (file and folder fsynced): a crash leaves the old detector or the new."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary's name
                np.savez(fh, names=np.array(self.names, dtype=object).astype(str), median=self.median,
                         scale=self.scale, whiten=self.whiten, threshold=np.array(self.threshold))

        replace_with(path, write)

    @classmethod
    def load(cls, path: Path) -> Detector:
        with np.load(path, allow_pickle=False) as data:
            return cls([str(n) for n in data["names"]], data["median"], data["scale"], data["whiten"],
                       float(data["threshold"]))


def _standardise(values: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (values - median) / scale
    return np.where(np.isfinite(z), z, 0.0)


def rounded_shares(shares: np.ndarray, digits: int = 5) -> list[float]:
    """Shares rounded to ``digits`` decimals, still non-negative and summing to exactly 1 at that precision:
    the rounding residue goes to the largest share (which can absorb it without going negative)."""
    unit = 10**digits
    ints = np.floor(np.asarray(shares, dtype=np.float64) * unit + 0.5).astype(np.int64)
    ints = np.maximum(ints, 0)
    ints[int(np.argmax(ints))] += unit - int(ints.sum())
    return [float(i) / unit for i in ints]
