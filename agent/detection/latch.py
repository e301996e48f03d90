"""The recent-past reference with a latch: which reference each row is compared with, and the smoothed
distances that follow. numpy only; everything in the detector's whitened space (W z), where the training mean
is the origin and the distance is the Euclidean norm.

Without a latch, the reference of row t is the mean of the rows (t − lag − width, t − lag]: a fault that
settles would be compared with itself once those rows lie inside it, and forgotten after lag + width. So:

- an *episode* is a maximal stretch of alarmed rows (smoothed d² ≥ threshold);
- the lagged reference is trusted when its rows hold no row of an unreleased episode; otherwise the row is
  compared with the latest lagged reference whose rows held no alarmed row (the plant's state before the
  fault), frozen when the episode first needs it: a fault that settles stays alarmed while it differs from
  both that state and the training state;
- an episode is released when the plant comes back at least half way (its smoothed d² against the frozen
  reference falls below ``release_fraction`` × its peak), or when it has lasted ``latch_rows``; from then on
  its rows no longer freeze the reference (a settled state becomes the recent past after ``latch_rows``).

Rows are processed in blocks of ``lag`` rows: a row's reference rows end ``lag`` rows before it, so every
reference of a block is known from the blocks before it, and the block's distances are computed at once; a
release inside a block starts the next block at the row after it. ``Latch`` keeps that state (per row: a few
flags and d²; per episode: its frozen reference) so that a long run can be fed in consecutive parts, each
holding only its own rows' vectors, with the very blocks, and so the very results, of feeding it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass
class Episode:
    """A stretch of alarmed rows: where it began, the reference it froze, its peak smoothed d²."""

    start: int
    frozen: np.ndarray | None = None  # None: the training state alone
    frozen_set: bool = False
    peak: float = 0.0
    released: bool = False


def latched_distances(static: np.ndarray, lagged: np.ndarray, threshold: float, lag: int, width: int,
                      score_rows: int, latch_rows: int, release_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed d² per row, whitened deviation per row) for consecutive rows, all given at once (see
    ``Latch.advance`` for the arguments)."""
    n, p = static.shape
    latch = Latch(n, p, threshold, lag, width, score_rows, latch_rows, release_fraction)
    _, smoothed, deviation = latch.advance(0, static, lagged)
    return smoothed, deviation


class Latch:
    """The latch over a run of ``n`` rows of ``p`` whitened directions, fed in consecutive parts (``advance``).
    Per-row state is kept for the whole run (flags and d², a few bytes a row); vectors only for the part fed."""

    def __init__(self, n: int, p: int, threshold: float, lag: int, width: int, score_rows: int, latch_rows: int,
                 release_fraction: float) -> None:
        self.n, self.p = n, p
        self.threshold, self.lag, self.width = threshold, lag, width
        self.score_rows, self.latch_rows, self.release_fraction = score_rows, latch_rows, release_fraction
        self.d2 = np.full(n, np.nan)
        self.frozen_row = np.zeros(n, dtype=bool)
        self.alarmed = np.zeros(n, dtype=bool)
        self.episode_of = np.full(n, -1)
        self.episodes: list[Episode] = []
        self.held = np.zeros(n, dtype=bool)  # rows of episodes not released yet: they freeze the reference
        self.last_clean = None  # the latest reference whose rows held no alarmed row: the state before an alarm
        self.next_row = 0  # the first row not scored yet (the start of the next block)

    def advance(self, first: int, static: np.ndarray, lagged: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Score the blocks from ``next_row`` on that lie within the rows given: ``static`` and ``lagged`` for
        rows [first, first + len(static)), ``first`` ≤ ``next_row``. Returns (the new ``next_row``, smoothed d²
        and whitened deviation of the rows scored). A block reaching past the rows given waits for the next
        call, unless they reach the run's end.

        ``static``: W z_s per row (the deviation from the training state; NaN where no data is in reach);
        ``lagged``: W r per row, the mean of the rows (t − lag − width, t − lag] (NaN where unreachable).
        Along each whitened direction the smaller of the static deviation and the deviation from the row's
        reference counts. The smoothed d² is the trailing median of d² over ``score_rows`` rows."""
        n, p, lag, width, score_rows = self.n, self.p, self.lag, self.width, self.score_rows
        given_end = first + len(static)
        reachable = np.isfinite(static).all(axis=1)
        static0 = np.where(np.isfinite(static), static, 0.0)
        lag_ok = np.isfinite(lagged).all(axis=1)
        d2, frozen_row, alarmed, episode_of, episodes, held = (self.d2, self.frozen_row, self.alarmed,
                                                               self.episode_of, self.episodes, self.held)
        start_row = b = self.next_row
        smoothed = np.full(given_end - start_row, np.nan)
        deviation = np.zeros((given_end - start_row, p))
        step = max(lag, 1)
        while b < n:
            e = min(b + step, n)  # a row's reference rows end lag rows before it: all before this block
            if e > given_end:
                break
            ref = np.full((e - b, p), np.nan)
            for i, t in enumerate(range(b, e)):
                lo, hi = t - lag - width + 1, t - lag + 1
                if lo < 0:
                    continue
                if not held[lo:hi].any():
                    if lag_ok[t - first]:
                        ref[i] = lagged[t - first]
                        if not alarmed[lo:hi].any():
                            self.last_clean = lagged[t - first].copy()
                else:
                    ep = episodes[episode_of[lo + int(np.flatnonzero(held[lo:hi])[-1])]]
                    if not ep.frozen_set:  # the latest alarm-free state, frozen when the episode first needs it
                        ep.frozen = None if self.last_clean is None else self.last_clean.copy()
                        ep.frozen_set = True
                    if ep.frozen is not None:
                        ref[i] = ep.frozen
                    frozen_row[t] = True
            has_ref = np.isfinite(ref).all(axis=1)
            block_static = static0[b - first:e - first]
            recent = block_static - np.where(has_ref[:, None], ref, 0.0)
            dev = np.where(has_ref[:, None] & (np.abs(recent) < np.abs(block_static)), recent, block_static)
            deviation[b - start_row:e - start_row] = dev
            block_d2 = np.sum(dev**2, axis=1)
            block_d2[~reachable[b - first:e - first]] = np.nan
            d2[b:e] = block_d2
            # trailing median over score_rows (the rows before the block are final)
            start = max(b - score_rows + 1, 0)
            padded = np.concatenate([np.full(score_rows - 1 - (b - start), np.nan), d2[start:e]])
            windows = sliding_window_view(padded, score_rows)
            finite = np.isfinite(windows).any(axis=1)
            block_med = np.full(e - b, np.nan)
            if finite.any():
                block_med[finite] = np.nanmedian(windows[finite], axis=1)
            smoothed[b - start_row:e - start_row] = block_med
            next_b = e
            for i, t in enumerate(range(b, e)):  # the episodes: scalar bookkeeping, in row order
                m = block_med[i]
                if not (np.isfinite(m) and m >= self.threshold):
                    continue
                alarmed[t] = True
                if t == 0 or not alarmed[t - 1]:
                    episodes.append(Episode(t))
                k = len(episodes) - 1
                episode_of[t] = k
                ep = episodes[k]
                held[t] = not ep.released
                ep.peak = max(ep.peak, m)
                recovered = frozen_row[t] and m < self.release_fraction * ep.peak
                if not ep.released and (recovered or t - ep.start >= self.latch_rows):
                    ep.released = True
                    held[ep.start:t + 1] = False
                    next_b = t + 1  # the rows after a release are compared anew
                    break
            b = next_b
        self.next_row = b
        return b, smoothed[:b - start_row], deviation[:b - start_row]
