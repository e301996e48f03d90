"""A deterministic signal model of a centrifugal pump with its motor: the plant behind the simulator.

The value of every sensor at a time ``ts`` is a pure function of (seed, ts, fault schedule). Nothing depends
on how often or in which order ``sample`` was called, so a training history built with ``history_frame`` and
the live values the simulator serves agree exactly at equal timestamps. Dynamics that would normally need
state are written in closed form:

- the duty schedule (stops) is drawn per 4-hour slot by hashing (seed, slot);
- speed ramps and coast-downs are exponentials of the time since the last start/stop;
- temperatures follow the running state and the speed set-point through first-order lags, computed by
  superposing the closed-form responses to each stop and each set-point step of the last slots;
- noise is a Gaussian drawn by hashing (seed, channel, whole second), so it is the same on every call.

Physics (nominal point: 1480 rpm, 120 m³/h, 6 bar differential): flow ∝ speed, head ∝ speed² (affinity
laws), current follows shaft power (hydraulic power / efficiency) on top of the no-load current, vibration
∝ speed², bearing and winding temperatures = ambient (daily cycle) + lagged load.

Faults (``FAULT_KINDS``), each scheduled as intervals ``[start_ts, end_ts)``:

- ``bearing_wear``: severity grows from 0 at the fault start to 1 after ``bearing_wear_ramp_secs``
  (``x**1.5``, progressive); vibration and bearing temperature rise, current a little (friction);
- ``cavitation``: ramps in over two minutes; suction pressure drops, discharge pressure and flow drop and get
  noisy, vibration rises and gets noisy. Only while the pump turns.

Units: flow m³/h, pressures bar (gauge), motor_current A, speed rpm, temperatures °C, vibration mm/s RMS,
running 0/1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

SENSORS: tuple[str, ...] = (
    "flow",
    "suction_pressure",
    "discharge_pressure",
    "motor_current",
    "speed",
    "bearing_temp",
    "winding_temp",
    "vibration",
    "running",
)

UNITS: dict[str, str] = {
    "flow": "m3/h",
    "suction_pressure": "bar",
    "discharge_pressure": "bar",
    "motor_current": "A",
    "speed": "rpm",
    "bearing_temp": "degC",
    "winding_temp": "degC",
    "vibration": "mm/s",
    "running": "",
}

FAULT_KINDS: tuple[str, ...] = ("bearing_wear", "cavitation")

# Nominal operating point of the pump and motor.
NOMINAL_SPEED_RPM = 1480.0
NOMINAL_FLOW_M3H = 120.0
NOMINAL_DP_BAR = 6.0
SUCTION_STATIC_BAR = 1.6  # tank head when no flow
SUCTION_LOSS_BAR = 0.25  # suction-line loss at nominal flow (∝ flow²)
PUMP_EFFICIENCY = 0.72
NO_LOAD_CURRENT_A = 12.0
AMPS_PER_KW = 1000.0 / (math.sqrt(3) * 400.0 * 0.85 * 0.93)  # 400 V, cos φ 0.85, motor efficiency 0.93

# Duty schedule: the timeline is cut into slots; a slot holds at most one stop, kept away from the slot
# edges so a start-up ramp never spills into the next slot's evaluation.
SLOT_SECS = 4 * 3600
STOP_PROBABILITY = 0.55  # ≈ 3.3 stops per day
STOP_MIN_SECS = 15 * 60
STOP_MAX_SECS = 90 * 60
STOP_MARGIN_SECS = 10 * 60
SPEED_LEVELS = (1.0, 1.0, 0.92, 0.85)  # VFD set-points drawn per slot (full speed twice as likely)
LEVEL_RAMP_SECS = 60.0
TAU_SPIN_UP_SECS = 8.0
TAU_COAST_SECS = 20.0

# Thermal lags (first-order time constants) and rises at nominal load.
TAU_BEARING_SECS = 40 * 60
TAU_WINDING_SECS = 15 * 60
BEARING_RISE_C = 28.0
WINDING_RISE_C = 55.0
LAG_LOOKBACK_SLOTS = 3  # stops older than this (≥ 8 h ≥ 12 τ_bearing) no longer matter

# Fault effects at full severity.
BEARING_WEAR_RAMP_SECS = 86400.0
WEAR_VIBRATION_MM_S = 4.0
WEAR_BEARING_RISE_C = 18.0
CAVITATION_RAMP_SECS = 120.0

# Noise channels: each sensor draws independent noise.
_CH_STOP, _CH_DURATION, _CH_OFFSET, _CH_LEVEL, _CH_DEMAND = 1, 2, 3, 4, 5
_CH_NOISE = {name: 100 + 10 * i for i, name in enumerate(SENSORS)}
_CH_FAULT_NOISE = {name: 300 + 10 * i for i, name in enumerate(SENSORS)}

_U64 = np.uint64
_MASK53 = float(2**53)


@dataclass(frozen=True, slots=True)
class FaultInterval:
    """A fault of ``kind`` active on ``[start_ts, end_ts)`` (Unix s); ``end_ts`` None = open-ended."""

    kind: str
    start_ts: float
    end_ts: float | None = None

    def covers(self, ts: float) -> bool:
        return self.start_ts <= ts and (self.end_ts is None or ts < self.end_ts)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic; arrays do not warn on overflow)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class PumpModel:
    """The pump's sensor values as a pure function of time. See the module docstring for the physics.

    seed: selects the duty schedule, set-points and noise; two models with the same seed and faults give
    identical values. Faults are added with ``schedule_fault`` or ``set_fault``; values at times before a
    run-time change are unaffected by it (a fault switched on at ``now`` starts at ``now``).
    """

    def __init__(self, seed: int, bearing_wear_ramp_secs: float = BEARING_WEAR_RAMP_SECS) -> None:
        if bearing_wear_ramp_secs <= 0:
            raise ValueError("bearing_wear_ramp_secs must be > 0")
        self.seed = int(seed)
        self.bearing_wear_ramp_secs = float(bearing_wear_ramp_secs)
        self.faults: list[FaultInterval] = []
        # Keyed once per model so that every channel's stream depends on the seed.
        self._seed_key = int(_splitmix(np.array([self.seed & (2**64 - 1)], dtype=_U64))[0])

    # ---------------------------------------------------------------- faults

    def schedule_fault(self, kind: str, start_ts: float, end_ts: float | None = None) -> FaultInterval:
        """Add a fault of ``kind`` on ``[start_ts, end_ts)`` (Unix s; ``end_ts`` None = open-ended)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; allowed: {', '.join(FAULT_KINDS)}")
        if end_ts is not None and end_ts <= start_ts:
            raise ValueError("end_ts must be after start_ts")
        fault = FaultInterval(kind, float(start_ts), None if end_ts is None else float(end_ts))
        self.faults.append(fault)
        return fault

    def set_fault(self, kind: str, active: bool, now: float) -> None:
        """Switch a fault on or off at ``now`` (Unix s) without changing any value before ``now``.

        On: opens an interval at ``now`` unless one of ``kind`` already covers ``now``. Off: ends every
        interval of ``kind`` that covers ``now`` at ``now``; intervals scheduled for later are kept.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; allowed: {', '.join(FAULT_KINDS)}")
        covering = [f for f in self.faults if f.kind == kind and f.covers(now)]
        if active:
            if not covering:
                self.faults.append(FaultInterval(kind, float(now)))
            return
        for fault in covering:
            index = self.faults.index(fault)
            if fault.start_ts == now:
                del self.faults[index]
            else:
                self.faults[index] = FaultInterval(kind, fault.start_ts, float(now))

    def fault_active(self, kind: str, ts: float) -> bool:
        """Whether a fault of ``kind`` covers ``ts`` (Unix s)."""
        return any(f.kind == kind and f.covers(ts) for f in self.faults)

    # ---------------------------------------------------------------- sampling

    def sample(self, ts: float) -> dict[str, float]:
        """All sensor values at ``ts`` (Unix s), keyed by ``SENSORS`` names, in the units of ``UNITS``."""
        arrays = self.sample_array(np.array([float(ts)]))
        return {name: float(values[0]) for name, values in arrays.items()}

    def sample_array(self, ts: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised ``sample``: ``ts`` is a 1-D array of Unix seconds; one float64 array per sensor."""
        t = np.asarray(ts, dtype=np.float64)
        running, speed_ratio, _ = self._drive(t)
        demand = 1.0 + 0.04 * self._smooth_noise(t, _CH_DEMAND, 600.0)
        wear = self._wear_severity(t)
        cav = self._cavitation_intensity(t) * np.clip(speed_ratio, 0.0, 1.0)

        speed = NOMINAL_SPEED_RPM * speed_ratio + 2.0 * speed_ratio * self._noise(t, "speed")
        flow = NOMINAL_FLOW_M3H * speed_ratio * demand * (1.0 - 0.08 * cav)
        flow = flow + (0.8 * speed_ratio + 4.0 * cav) * self._noise(t, "flow")
        flow = np.maximum(flow, 0.0)

        suction = SUCTION_STATIC_BAR - SUCTION_LOSS_BAR * (flow / NOMINAL_FLOW_M3H) ** 2 - 0.7 * cav
        suction = suction + 0.02 * self._noise(t, "suction_pressure")
        # Pump curve: more demand (lower system resistance) → less head; affinity: head ∝ speed².
        dp = NOMINAL_DP_BAR * speed_ratio**2 * (1.0 - 0.5 * (demand - 1.0)) * (1.0 - 0.10 * cav)
        discharge = suction + dp + (0.04 + 0.15 * cav) * self._noise(t, "discharge_pressure")

        shaft_kw = flow * np.maximum(dp, 0.0) / 36.0 / PUMP_EFFICIENCY  # m³/h · bar / 36 = kW
        current = running * (NO_LOAD_CURRENT_A * speed_ratio + AMPS_PER_KW * shaft_kw * (1.0 + 0.02 * wear))
        current = np.maximum(current + 0.3 * running * self._noise(t, "motor_current"), 0.0)

        vibration = 0.05 + 1.2 * speed_ratio**2 * (1.0 + WEAR_VIBRATION_MM_S / 1.2 * wear) + 1.0 * cav
        vib_noise = 0.06 + 0.3 * wear * speed_ratio + 0.8 * cav
        vibration = vibration + vib_noise * self._noise(t, "vibration")
        vibration = vibration + 0.8 * cav * np.abs(self._fault_noise(t, "vibration"))
        vibration = np.maximum(vibration, 0.0)

        ambient = 22.0 + 6.0 * np.sin(2.0 * np.pi * (t / 86400.0 - 0.375))  # warmest ≈ 15:00 UTC
        lag_b = self._lagged_running(t, TAU_BEARING_SECS)
        lag_w = self._lagged_running(t, TAU_WINDING_SECS)
        load_b = self._lagged_level_power(t, TAU_BEARING_SECS, 2.0)  # bearing load ∝ speed²
        load_w = self._lagged_level_power(t, TAU_WINDING_SECS, 3.0)  # copper losses follow power ∝ speed³
        bearing = ambient + lag_b * (BEARING_RISE_C * load_b + WEAR_BEARING_RISE_C * wear)
        bearing = bearing + 0.15 * self._noise(t, "bearing_temp")
        winding = ambient + WINDING_RISE_C * lag_w * load_w + 0.15 * self._noise(t, "winding_temp")

        return {
            "flow": flow,
            "suction_pressure": suction,
            "discharge_pressure": discharge,
            "motor_current": current,
            "speed": np.maximum(speed, 0.0),
            "bearing_temp": bearing,
            "winding_temp": winding,
            "vibration": vibration,
            "running": running,
        }

    # ---------------------------------------------------------------- duty schedule and drive

    def _slot_stop(self, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slot index: (has_stop, stop_start, stop_end) in Unix s (start/end unused if no stop)."""
        has_stop = self._uniform(slot, _CH_STOP) < STOP_PROBABILITY
        duration = STOP_MIN_SECS + self._uniform(slot, _CH_DURATION) * (STOP_MAX_SECS - STOP_MIN_SECS)
        room = SLOT_SECS - 2 * STOP_MARGIN_SECS - duration
        start = slot * float(SLOT_SECS) + STOP_MARGIN_SECS + self._uniform(slot, _CH_OFFSET) * room
        return has_stop, start, start + duration

    def _slot_level(self, slot: np.ndarray) -> np.ndarray:
        """VFD set-point of each slot as a fraction of nominal speed."""
        index = (self._uniform(slot, _CH_LEVEL) * len(SPEED_LEVELS)).astype(int)
        index = np.minimum(index, len(SPEED_LEVELS) - 1)
        return np.asarray(SPEED_LEVELS)[index]

    def _level(self, t: np.ndarray) -> np.ndarray:
        """Set-point fraction at ``t``: the slot's level, ramped from the previous slot's over a minute."""
        slot = np.floor(t / SLOT_SECS)
        since = t - slot * SLOT_SECS
        current, previous = self._slot_level(slot), self._slot_level(slot - 1)
        level = previous + (current - previous) * np.clip(since / LEVEL_RAMP_SECS, 0.0, 1.0)
        return level * (1.0 + 0.01 * np.sin(2.0 * np.pi * t / 5820.0 + self.seed % 7))

    def _drive(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(running 0/1, speed as a fraction of nominal, set-point fraction) at ``t``.

        Stopped within the slot's stop [a, b): coast-down from the set-point at a. After b: spin-up towards
        the set-point. Stops keep a margin from slot edges, so earlier slots never affect the speed.
        """
        slot = np.floor(t / SLOT_SECS)
        has_stop, a, b = self._slot_stop(slot)
        level = self._level(t)
        stopped = has_stop & (t >= a) & (t < b)
        after = has_stop & (t >= b)
        coast = self._level(a) * np.exp(-np.clip(t - a, 0.0, None) / TAU_COAST_SECS)
        spin_up = 1.0 - np.exp(-np.clip(t - b, 0.0, None) / TAU_SPIN_UP_SECS)
        ratio = np.where(stopped, coast, np.where(after, level * spin_up, level))
        return (~stopped).astype(np.float64), ratio, level

    def _lagged_running(self, t: np.ndarray, tau: float) -> np.ndarray:
        """First-order lag (time constant ``tau`` s) of the running state, in [0, 1], at ``t``.

        Running is 1 minus a sum of stop pulses; the lag of a pulse [a, b) is 0 before a,
        1 − e^(−(t−a)/τ) inside, and (1 − e^(−(b−a)/τ))·e^(−(t−b)/τ) after: superpose the recent slots' stops.
        """
        slot = np.floor(t / SLOT_SECS)
        lag = np.ones_like(t)
        for back in range(LAG_LOOKBACK_SLOTS):
            has_stop, a, b = self._slot_stop(slot - back)
            inside = 1.0 - np.exp(-np.clip(t - a, 0.0, None) / tau)
            after = (1.0 - np.exp(-(b - a) / tau)) * np.exp(-np.clip(t - b, 0.0, None) / tau)
            pulse = np.where(t < a, 0.0, np.where(t < b, inside, after))
            lag = lag - np.where(has_stop, pulse, 0.0)
        return np.clip(lag, 0.0, 1.0)

    def _lagged_level_power(self, t: np.ndarray, tau: float, power: float) -> np.ndarray:
        """First-order lag (``tau`` s) of the set-point fraction raised to ``power``, at ``t``.

        The set-point is a staircase with a step at each slot start (its one-minute ramp is negligible
        against ``tau``): the lag is the level of ``LAG_LOOKBACK_SLOTS`` slots ago plus each later step
        times 1 − e^(−(t − step time)/τ).
        """
        slot = np.floor(t / SLOT_SECS)
        lagged = self._slot_level(slot - LAG_LOOKBACK_SLOTS) ** power
        for back in range(LAG_LOOKBACK_SLOTS - 1, -1, -1):
            step = self._slot_level(slot - back) ** power - self._slot_level(slot - back - 1) ** power
            since = t - (slot - back) * SLOT_SECS
            lagged = lagged + step * (1.0 - np.exp(-since / tau))
        return lagged

    # ---------------------------------------------------------------- faults as functions of time

    def _wear_severity(self, t: np.ndarray) -> np.ndarray:
        """Bearing wear severity in [0, 1]: (time since fault start / ramp)^1.5, zero outside the fault."""
        severity = np.zeros_like(t)
        for fault in self.faults:
            if fault.kind != "bearing_wear":
                continue
            x = np.clip((t - fault.start_ts) / self.bearing_wear_ramp_secs, 0.0, 1.0) ** 1.5
            severity = np.maximum(severity, np.where(self._inside(t, fault), x, 0.0))
        return severity

    def _cavitation_intensity(self, t: np.ndarray) -> np.ndarray:
        """Cavitation intensity in [0, 1]: ramps in over ``CAVITATION_RAMP_SECS``, stops at the fault end."""
        intensity = np.zeros_like(t)
        for fault in self.faults:
            if fault.kind != "cavitation":
                continue
            x = np.clip((t - fault.start_ts) / CAVITATION_RAMP_SECS, 0.0, 1.0)
            intensity = np.maximum(intensity, np.where(self._inside(t, fault), x, 0.0))
        return intensity

    @staticmethod
    def _inside(t: np.ndarray, fault: FaultInterval) -> np.ndarray:
        inside = t >= fault.start_ts
        if fault.end_ts is not None:
            inside &= t < fault.end_ts
        return inside

    # ---------------------------------------------------------------- deterministic randomness

    def _uniform(self, k: np.ndarray, channel: int) -> np.ndarray:
        """Uniform [0, 1) draws keyed by (seed, channel, k); ``k`` is a float array of whole numbers."""
        key = np.asarray(k, dtype=np.float64).astype(np.int64).view(_U64)
        salt = _U64((self._seed_key ^ (channel * 0x9E3779B97F4A7C15)) & (2**64 - 1))
        h = _splitmix(key * _U64(0xD1B54A32D192ED03) + salt)
        return (h >> _U64(11)).astype(np.float64) / _MASK53

    def _gauss(self, k: np.ndarray, channel: int) -> np.ndarray:
        """Standard normal draws keyed by (seed, channel, k) (Box–Muller on two keyed uniforms)."""
        u1 = 1.0 - self._uniform(k, channel)  # (0, 1]: log is finite
        u2 = self._uniform(k, channel + 1)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def _noise(self, t: np.ndarray, sensor: str) -> np.ndarray:
        """Measurement noise of ``sensor``: one N(0, 1) draw per whole second of ``t``."""
        return self._gauss(np.floor(t), _CH_NOISE[sensor])

    def _fault_noise(self, t: np.ndarray, sensor: str) -> np.ndarray:
        """Extra N(0, 1) noise a fault adds to ``sensor``, independent of its measurement noise."""
        return self._gauss(np.floor(t), _CH_FAULT_NOISE[sensor])

    def _smooth_noise(self, t: np.ndarray, channel: int, period: float) -> np.ndarray:
        """A slowly varying N(0, 1)-scaled signal: keyed draws every ``period`` s, smoothstep-interpolated."""
        k = np.floor(t / period)
        x = t / period - k
        w = x * x * (3.0 - 2.0 * x)
        return (1.0 - w) * self._gauss(k, channel) + w * self._gauss(k + 1.0, channel)


def history_frame(model: PumpModel, start_ts: float, end_ts: float, step_secs: float) -> pd.DataFrame:
    """Sensor values on the grid ``start_ts + i·step_secs`` for ``start_ts ≤ t < end_ts`` (Unix s).

    Returns a DataFrame indexed by UTC timestamps (``DatetimeIndex`` named "timestamp", tz UTC) with one
    float64 column per sensor in ``SENSORS`` order. Values equal ``model.sample(t)`` at each grid point.
    """
    if step_secs <= 0:
        raise ValueError("step_secs must be > 0")
    count = max(0, math.ceil((end_ts - start_ts) / step_secs))
    ts = start_ts + step_secs * np.arange(count, dtype=np.float64)
    values = model.sample_array(ts)
    index = pd.DatetimeIndex(pd.to_datetime(ts, unit="s", utc=True), name="timestamp")
    return pd.DataFrame({name: values[name] for name in SENSORS}, index=index)
