"""OPC-UA DataValues → Readings: quality, freshness (rule 2a), timestamps, and the probe's lines. See
connectors.opcua.connector for the semantics.

:class:`_Values` is a mixin of :class:`connectors.opcua.connector.OpcUaConnector`; it uses the connector's
``_config``, ``stats``, ``retimed``, ``_point_log``, ``_point_failed``, and its per-sensor freshness state
``_last_key``, ``_unvouched``, ``_session_start`` and ``_use_received``.
"""

from __future__ import annotations

from asyncua import ua

from agent.core.model import Reading, validity_end
from connectors.base import ProbeLine
from connectors.opcua.config import NodeConfig
from connectors.opcua.session import _ADDRESS_ERRORS, _CODE_MASK, _SEVERITY_MASK, _as_float, _micros, _status_name


class _Values:
    """DataValue conversion (mixed into OpcUaConnector)."""

    # ---- values

    def _convert(self, sensor: str, dv: ua.DataValue, received: float, out: list[Reading]) -> None:
        """Append the Reading for one asyncua DataValue (polled reads) to ``out``, or count why there is none."""
        variant = dv.Value
        value = None
        if variant is not None:
            value = variant.Value if _as_float(variant.Value) is not None else variant
        status = dv.StatusCode.value if dv.StatusCode is not None else 0
        self._convert_raw(sensor, status, value, _micros(dv.SourceTimestamp), _micros(dv.ServerTimestamp), received,
                          out)

    def _convert_raw(self, sensor: str, status: int, value, source_us: int | None, server_us: int | None,
                     received: float, out: list[Reading]) -> None:
        """Append the Reading for one value to ``out``, or count why there is none.

        The fields as connectors.opcua.publish_codec hands them over: ``status`` the StatusCode as an int,
        ``value`` a numeric scalar, a ``ua.Variant`` of anything else, or None; timestamps in integer µs since
        the Unix epoch or None."""
        # Severity bits only: Good with info bits (e.g. a server queue overflow) is still a good value.
        if status & _SEVERITY_MASK:
            if status & _CODE_MASK in _ADDRESS_ERRORS:
                self._point_failed(sensor, f"read failed ({ua.StatusCode(status).name})")
            else:
                self.stats.bad_quality[sensor] += 1
            self._invalid(sensor, received, out)
            return
        number = _as_float(value)
        if number is None:
            kind = value.VariantType.name if isinstance(value, ua.Variant) else "no value"
            self._point_failed(sensor, f"value is not numeric ({kind})")
            self._invalid(sensor, received, out)
            return
        stamp_us = source_us if source_us is not None else server_us
        src = stamp_us / 1e6 if stamp_us is not None else None
        revouch = sensor in self._unvouched
        if src is not None:
            # Same stamp and same value: the very sample already emitted (an unchanged point polled again).
            # The value is part of the key because coarse PLC clocks can stamp two different consecutive
            # samples alike. The first sample of a session is emitted anyway: it vouches for the value again.
            key = (src, number)
            if self._last_key.get(sensor) == key and not revouch:
                return
            self._last_key[sensor] = key
        if revouch:
            self._unvouched.discard(sensor)
        if self.stats.bad_now:
            self.stats.bad_now.discard(sensor)
        # Without any timestamp there is nothing to compare: a subscription reports changes only, and a
        # poll is vouched for by the server's Good status at read time (see the module docstring).
        if self._point_log.is_failing(sensor):
            self._point_log.success(sensor, "OPC-UA source %s: sensor %s delivers again", self.name, sensor)
        self.stats.readings[sensor] += 1
        ts = self._timestamp(sensor, server_us, src, received)
        if revouch and ts < self._session_start:
            ts = self._session_start  # the value holds again from the moment this session vouched for it
        out.append(Reading(sensor, number, ts))

    def _invalid(self, sensor: str, ts: float, out: list[Reading]) -> None:
        """The sensor's last value stops holding at ``ts`` (clock time the bad sample arrived). One marker per
        episode, and none for a sensor that never had a value."""
        if sensor in self.stats.bad_now:
            return
        self.stats.bad_now.add(sensor)
        self._unvouched.discard(sensor)
        self._last_key.pop(sensor, None)  # the next good sample is news even if it repeats the old one
        if self.stats.readings[sensor]:
            out.append(validity_end(sensor, ts))

    def _timestamp(self, sensor: str, server_us: int | None, src: float | None, received: float) -> float:
        """The reading's time per the timestamp policy; ``src`` is the source-or-server stamp already decoded."""
        if self._use_received:
            return received
        cfg = self._config
        stamp = server_us / 1e6 if server_us is not None else None
        ts = stamp if cfg.timestamp == "server" else src
        if ts is None:
            return received
        if abs(ts - received) > cfg.max_clock_skew_secs:
            self.retimed[sensor] += 1
            return received
        return ts

    def _probe_line(self, node: NodeConfig, resolved: ua.NodeId | ua.StatusCode, dv: ua.DataValue | None) -> ProbeLine:
        address = node.node_id or node.browse_path or ""
        if dv is None:
            return ProbeLine(sensor=node.sensor, error=f"cannot resolve {address}: {_status_name(resolved)}")
        variant = dv.Value
        value = variant.Value if variant is not None else None
        line = ProbeLine(
            sensor=node.sensor,
            value=value,
            type=variant.VariantType.name if variant is not None else "",
            status=_status_name(dv.StatusCode),
            source_ts=dv.SourceTimestamp.isoformat() if dv.SourceTimestamp else "",
            server_ts=dv.ServerTimestamp.isoformat() if dv.ServerTimestamp else "",
            extra={"node": str(resolved.to_string())} if node.browse_path else {},
        )
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            line.error = f"status {line.status}"
        elif _as_float(value) is None:
            line.error = "value is not numeric"
        return line

