"""How one asset's sources are, as the agent judges them, and the events when that changes (rule 2a).

Contract (``SourceHealth``, owned by agent.runtime.asset.AssetRunner, used on its event loop only):

- ``check(connectors, now)`` returns the transitions since the previous call, each once: a source's liveness
  (source_silent / source_recovered), its quality (source_bad_quality / source_quality_recovered) and its
  server's identity (source_untrusted / source_trusted, OPC-UA trust). ``now`` is clock seconds.
- Liveness is the transport's: a source is silent when it has not answered (publish response, keep-alive,
  successful poll) for ``silent_secs`` of clock time, never because its values stay constant. A source that
  answers but whose every item is Bad/Uncertain is "bad quality".
- ``carry_over`` adopts the conditions open when the last run ended (saved with the alarm inbox,
  ``conditions()``): they count for the alarms (no spurious clear, no second raise) but not for liveness
  and health (``silent_now``, ``bad_quality_now``), which judge this run's own evidence. A condition ends
  (its clearing event) only once the source has shown how it is: it answered within the bound, or it is
  silent. So a carried condition is neither cleared by a source that has not answered yet nor left open
  when the source answers again.
- ``disconnected(connectors)`` is what /healthz reports as not connected: the last attempt's error at once,
  else "not connected" once CONNECT_GRACE_SECS of wall time have passed since ``start``. Sources in
  ``finished`` (a replay at its end, or stopped by a drain) are never listed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from agent.core.model import Event

log = logging.getLogger("l4e.service")
# A source not connected this long (wall seconds) after the start is reported unhealthy even when its first
# attempt has not failed yet (a connect hanging until its timeout); one that failed is reported at once.
CONNECT_GRACE_SECS = 10.0


class SourceHealth:
    """The verdicts on one asset's sources. ``source_sensors``: source name → its configured sensors (a source
    is bad quality when as many of its items are Bad now); ``silent_secs``: the silence bound, clock seconds."""

    def __init__(self, source_sensors: Mapping[str, Iterable[str]], silent_secs: float) -> None:
        self.n_sensors = {name: len(tuple(sensors)) for name, sensors in source_sensors.items()}
        self.silent_secs = silent_secs
        self.started_at: float | None = None  # clock time of the start (silence is counted from it)
        self.started_wall: float | None = None  # time.monotonic() at the start (the connect grace)
        # sources that ended on their own (a replay at its end of file) or were stopped (drain): not "down"
        self.finished: set[str] = set()
        # the open conditions, carried ones included (what the alarms see)
        self.silent: set[str] = set()
        self.bad_quality: set[str] = set()
        self.untrusted: set[str] = set()
        # sources whose condition carried over from the last run this run has not confirmed or ended yet
        self.unsettled: set[str] = set()

    def start(self, now: float) -> None:
        self.started_at = now
        self.started_wall = time.monotonic()

    def check(self, connectors: Iterable, now: float) -> list[Event]:
        """The transitions since the last call (see the module's contract); logs each once."""
        bound = self.silent_secs
        events = []
        for conn in connectors:
            st = conn.stats
            reference = st.last_alive_ts if st.last_alive_ts is not None else self.started_at
            alive = st.alive(now, bound)
            silent = not alive and reference is not None and now - reference > bound
            settled = alive or silent  # this run knows how the source is (not just started, not answered yet)
            if settled:
                self.unsettled.discard(conn.name)
            if silent and conn.name not in self.silent:
                self.silent.add(conn.name)
                events.append(Event("source_silent", conn.name, f"source {conn.name}: no answer for more than "
                                    f"{bound:g}s", now, {"last_alive_ts": st.last_alive_ts}))
                log.warning("source %s has not answered for more than %gs", conn.name, bound)
            elif alive and conn.name in self.silent:
                self.silent.discard(conn.name)
                events.append(Event("source_recovered", conn.name, f"source {conn.name}: answers again", now))
                log.info("source %s answers again", conn.name)
            n_sensors = self.n_sensors.get(conn.name) or None
            bad = not silent and n_sensors is not None and len(st.bad_now) >= n_sensors
            if bad and conn.name not in self.bad_quality:
                self.bad_quality.add(conn.name)
                events.append(Event("source_bad_quality", conn.name, f"source {conn.name}: answers, but every "
                                    "item is Bad/Uncertain", now))
                log.warning("source %s answers, but every item is Bad/Uncertain", conn.name)
            elif not bad and settled and conn.name in self.bad_quality:
                self.bad_quality.discard(conn.name)
                events.append(Event("source_quality_recovered", conn.name, f"source {conn.name}: good values "
                                    "again", now))
                log.info("source %s delivers good values again", conn.name)
            untrusted = getattr(conn.stats, "untrusted", None)  # the connector logged the refusal itself
            if untrusted and conn.name not in self.untrusted:
                self.untrusted.add(conn.name)
                events.append(Event("source_untrusted", conn.name, untrusted, now))
            elif not untrusted and settled and conn.name in self.untrusted:
                self.untrusted.discard(conn.name)
                events.append(Event("source_trusted", conn.name, f"source {conn.name}: server identity trusted", now))
        return events

    def conditions(self) -> dict[str, list[str]]:
        """The open conditions, saved with the alarm inbox (agent.alarms.inbox) for the next run."""
        return {"source_silent": sorted(self.silent), "source_bad_quality": sorted(self.bad_quality),
                "source_untrusted": sorted(self.untrusted)}

    def carry_over(self, saved: Mapping[str, Iterable[str]], connectors: Iterable) -> None:
        """Adopt the conditions open when the last run ended (``conditions()`` as the inbox read it back):
        their clearing event is sent once they end. A source no longer configured has nothing to carry."""
        names = {conn.name for conn in connectors}
        self.silent |= names & set(saved.get("source_silent", ()))
        self.bad_quality |= names & set(saved.get("source_bad_quality", ()))
        self.untrusted |= names & set(saved.get("source_untrusted", ()))
        self.unsettled = self.silent | self.bad_quality | self.untrusted

    def silent_now(self) -> set[str]:
        """Sources this run found silent (liveness: the watchdog, /healthz, metrics)."""
        return self.silent - self.unsettled

    def bad_quality_now(self) -> set[str]:
        """Sources this run found answering with bad quality only."""
        return self.bad_quality - self.unsettled

    def disconnected(self, connectors: Iterable) -> dict[str, str]:
        """Sources not connected right now → why: the last connection attempt's error as soon as one failed,
        else "not connected yet" once CONNECT_GRACE_SECS (wall) have passed since the start. A source that
        finished on its own (a replay at its end) or was stopped by a drain is not listed."""
        if self.started_wall is None:
            return {}
        past_grace = time.monotonic() - self.started_wall > CONNECT_GRACE_SECS
        out = {}
        for conn in connectors:
            st = conn.stats
            if st.connected or conn.name in self.finished:
                continue
            error = getattr(st, "connect_error", None)
            if error is not None or past_grace:
                out[conn.name] = error or f"not connected {CONNECT_GRACE_SECS:g} s after the start"
        return out
