"""CPU confinement of benchmark processes by cgroup: a fixed CPU quota per group, so that a ratio between runs
with 1, 2 and 4 workers means something on a small machine shared with other jobs.

``CpuGroups.open(label)`` finds a hierarchy in which it can create groups with a CPU quota: cgroup v2 (a
``cgroup2`` mount whose root offers the ``cpu`` controller: ``cpu.max``, ``cpu.weight``), else cgroup v1 (the
``cpu`` controller's mount: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``cpu.shares``). It creates one
parent group ``<label>-<pid>`` with a high weight (so the groups get their quota even when the machine's other
processes want every core), and children under it. ``None`` with the reason when neither works (not root,
no writable hierarchy, no cpu controller): the caller must then refuse to print ratios.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PERIOD_US = 100_000
PARENT_WEIGHT_V2 = 1600   # 16 × the default 100 (the machine's other processes sit at 100 each)
PARENT_SHARES_V1 = 16384  # 16 × the default 1024


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, options) of every cgroup mount."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1], parts[2], parts[3]))
    return out


class Group:
    """One cgroup: processes are added by pid; ``throttled()`` reads how often the quota held them back."""

    def __init__(self, path: Path, version: int, cpus: float | None) -> None:
        self.path = path
        self.version = version
        self.cpus = cpus

    def add(self, pid: int) -> None:
        """Move the process (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def throttled(self) -> tuple[int, float]:
        """(periods in which the group was throttled, seconds it spent throttled) since it was created."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if " " in line)
        if self.version == 2:
            return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9


class CpuGroups:
    """Groups under one parent; ``close()`` moves any process left back to the root and removes the groups."""

    def __init__(self, root: Path, parent: Path, version: int) -> None:
        self.root = root
        self.parent = parent
        self.version = version
        self.groups: list[Group] = []

    @property
    def mechanism(self) -> str:
        if self.version == 2:
            return f"cgroup v2 cpu.max under {self.parent}"
        return f"cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us under {self.parent}"

    @classmethod
    def open(cls, label: str) -> tuple[CpuGroups | None, str]:
        """Groups of the first hierarchy that accepts a quota, with a sentence saying which (or why none)."""
        reasons = []
        for mount, fstype, options in sorted(_mounts(), key=lambda m: m[1] != "cgroup2"):  # v2 first
            root = Path(mount)
            if fstype == "cgroup2":
                try:
                    controllers = (root / "cgroup.controllers").read_text().split()
                except OSError as exc:
                    reasons.append(f"{mount}: {exc}")
                    continue
                if "cpu" not in controllers:
                    offered = " ".join(controllers) or "none"
                    reasons.append(f"{mount} (cgroup v2): no cpu controller offered ({offered})")
                    continue
                version = 2
            elif "cpu" in options.split(","):
                version = 1
            else:
                continue
            parent = root / f"{label}-{os.getpid()}"
            try:
                if version == 2:
                    (root / "cgroup.subtree_control").write_text("+cpu\n")
                parent.mkdir()
                groups = cls(root, parent, version)
                if version == 2:
                    (parent / "cpu.weight").write_text(f"{PARENT_WEIGHT_V2}\n")
                    (parent / "cgroup.subtree_control").write_text("+cpu\n")
                else:
                    (parent / "cpu.shares").write_text(f"{PARENT_SHARES_V1}\n")
                probe = groups.group("probe", 0.1)  # proves a quota can be set and a process put in
                probe.add(os.getpid())
                (root / "cgroup.procs").write_text(f"{os.getpid()}\n")
                groups.groups.remove(probe)
                probe.path.rmdir()
                return groups, groups.mechanism
            except OSError as exc:
                reasons.append(f"{mount} (cgroup v{version}): {exc}")
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(f"{os.getpid()}\n")
                with contextlib.suppress(OSError):
                    for child in parent.iterdir():
                        if child.is_dir():
                            child.rmdir()
                    parent.rmdir()
        return None, "; ".join(reasons) or "no cgroup hierarchy with a cpu controller is mounted"

    def group(self, name: str, cpus: float | None) -> Group:
        """A child group limited to ``cpus`` CPUs (None: no limit, only the parent's weight)."""
        path = self.parent / name
        path.mkdir()
        if cpus is not None:
            quota = round(cpus * PERIOD_US)
            if self.version == 2:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}\n")
            else:
                (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        group = Group(path, self.version, cpus)
        self.groups.append(group)
        return group

    def release(self, group: Group) -> None:
        """Move what is left in ``group`` back to the root and remove it."""
        for pid in group.pids():
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(f"{pid}\n")
        with contextlib.suppress(OSError):
            group.path.rmdir()
        if group in self.groups:
            self.groups.remove(group)

    def close(self) -> None:
        for group in list(self.groups):
            self.release(group)
        with contextlib.suppress(OSError):
            self.parent.rmdir()
