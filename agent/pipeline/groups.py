"""Sensor groups: how a window is cut for writing to the spool and for closing, so a close needs the memory of one
group, not of the asset.

A group is a run of whole components, in the asset's component order, holding up to ``GROUP_SENSORS`` distinct
sensors (a larger component is a group on its own). The spool writes one record per group per flush
(agent.pipeline.spool); the closer reads, resamples and renders one group at a time (agent.pipeline.closer).

The configuration puts each sensor in exactly one component. A plan that lists a sensor in several components
(tests build such plans) is rendered as it always was: the sensor's readings count in the LAST component listing it;
in the others its column gets no readings of the window (only what the carry brings). So every sensor's readings
are needed by exactly one group, the one holding that last component: its *owner*, whose spool records carry them.
Components stay in their order, so the carry is chained from one component to the next exactly as when the window
was rendered whole.
"""

from __future__ import annotations

from dataclasses import dataclass

# A few hundred sensors: 300 rows (PT5M at 1 Hz) of 250 sensors are 1.5 MB of columns, about what resampling
# and rendering one component of 100 sensors needs besides; the records stay large enough (5 kB of readings per
# flush at 1 Hz) that per-record costs (header, a read) do not matter.
GROUP_SENSORS = 250


@dataclass(frozen=True)
class Group:
    components: tuple[str, ...]  # in the asset's order
    sensors: tuple[str, ...]     # the sensors whose readings this group renders (see the module docstring)


def last_component(components: dict[str, list[str]]) -> dict[str, str]:
    """Sensor → the last component listing it: the one its readings count in (see the module docstring)."""
    return {s: comp for comp, sensors in components.items() for s in sensors}


def sensor_groups(components: dict[str, list[str]], limit: int | None = None) -> list[Group]:
    """Cut ``components`` (name → sensors, in order) into groups of whole consecutive components holding up to
    ``limit`` (default ``GROUP_SENSORS``) distinct sensors each (a component larger than that is a group alone)."""
    limit = GROUP_SENSORS if limit is None else limit
    runs: list[list[str]] = []
    size = 0
    for comp, sensors in components.items():
        if runs and size + len(sensors) > limit:
            runs.append([])
            size = 0
        if not runs:
            runs.append([])
        runs[-1].append(comp)
        size += len(sensors)
    last = last_component(components)
    return [Group(tuple(run), tuple(s for comp in run for s in components[comp] if last[s] == comp)) for run in runs]


def owners(groups: list[Group]) -> dict[str, int]:
    """Sensor → index of the group that renders its readings (whose spool records carry them)."""
    return {s: k for k, group in enumerate(groups) for s in group.sensors}
