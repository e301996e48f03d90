"""``l4e-agent status CONFIG``: one screen about an asset, from the Lookout API and the state directory.

Shows the scheduler's state and latest result, its last executions (window, status, max anomaly score or
FailedReason), the last window written locally (progress.json), the outbox backlog (windows written but not
yet confirmed by the store) and the results cursor. Read-only: nothing in the state directory is created
or changed, and an unreachable API or store is reported in the text instead of raised. A state directory
that cannot be read (permission denied, an I/O error: the CLI exits 75) or is not a folder (a regular file:
78) raises StateError with the reason; one that does not exist yet is said so in the text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.config import AssetConfig
from agent.core.clock import iso_utc
from agent.core.errors import LookoutError, StateError, StoreError
from agent.lookout.client import bucket_store, call, scheduler_status, store_of
from agent.lookout.results import CURSOR_FILE, parse_results_jsonl

LAST_EXECUTIONS = 5


def _read_json(path: Path) -> dict | None:
    """The file's JSON object; None when absent or not JSON (a torn write). Raises StateError when unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        return None


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except NotADirectoryError as exc:
        raise StateError(f"{folder} is not a directory (a regular file or another kind of file)") from exc
    except OSError as exc:
        raise StateError(f"cannot read {folder}: {exc.strerror or exc}") from exc


def check_state_dir(state_dir: Path) -> bool:
    """True when ``state_dir`` (and its outbox) can be read, False when it does not exist; StateError else."""
    if not os.path.lexists(state_dir):
        return False
    if "outbox" in _listdir(state_dir):
        _listdir(Path(state_dir) / "outbox")
    return True


def outbox_backlog(state_dir: Path) -> tuple[int, int, int | None]:
    """(windows, files, oldest window end) waiting in ``<state_dir>/outbox``; read-only."""
    folder = Path(state_dir) / "outbox"
    ends, files = [], 0
    if folder.is_dir():
        for sub in folder.iterdir():
            if sub.is_dir() and sub.name.isdigit():
                count = sum(1 for _ in sub.iterdir())
                if count:
                    ends.append(int(sub.name))
                    files += count
    return len(ends), files, min(ends) if ends else None


def _max_score(config: AssetConfig, execution: dict, s3_client_factory) -> str:
    obj = execution.get("CustomerResultObject") or {}
    if not obj.get("Key"):
        return "no results object"
    try:
        data = bucket_store(obj["Bucket"], store_of(config.lookout), s3_client_factory).get(obj["Key"])
    except KeyError:
        return "results object missing"
    except StoreError as exc:
        return f"results unreadable ({exc})"
    rows, bad = parse_results_jsonl(data, int(execution["DataStartTime"].timestamp()))
    scores = [r.score for r in rows if r.score is not None]
    text = f"max score {max(scores):.3f}" if scores else "no scores"
    text += f", {sum(r.prediction for r in rows)}/{len(rows)} anomalous"
    return text + (f", {bad} malformed lines" if bad else "")


def _api_lines(config: AssetConfig, client, s3_client_factory) -> list[str]:
    name = config.lookout.scheduler
    if not name:
        return ["scheduler: none configured (results are read from the output prefix, if set)"]
    if client is None:
        return [f"scheduler: {name} (no API client)"]
    st = scheduler_status(client, name)
    lines = [f"scheduler: {name}: {st.status}" + (f", latest result {st.latest}" if st.latest else "")
             + (f", model {st.model}" if st.model else "")]
    if st.warning:
        lines.append(f"  warning: {st.warning}")
    if st.status in ("UNREACHABLE", "NOT_FOUND", "ERROR"):
        return lines
    try:
        page = call(client, "list_inference_executions", InferenceSchedulerName=name, MaxResults=50)
    except LookoutError as exc:
        return [*lines, f"  executions: unavailable ({exc})"]
    execs = sorted(page.get("InferenceExecutionSummaries", []), key=lambda e: e["DataStartTime"], reverse=True)
    more = "+" if page.get("NextToken") else ""
    lines.append(f"last executions ({min(len(execs), LAST_EXECUTIONS)} of {len(execs)}{more}):")
    for e in execs[:LAST_EXECUTIONS]:
        window = f"({iso_utc(e['DataStartTime'].timestamp())}, {iso_utc(e['DataEndTime'].timestamp())}]"
        status = e.get("Status", "?")
        if status == "SUCCESS":
            detail = _max_score(config, e, s3_client_factory)
        elif status == "FAILED":
            detail = (e.get("FailedReason") or "")[:160]
        else:
            detail = ""
        lines.append(f"  {window} {status}" + (f": {detail}" if detail else ""))
    return lines


def _local_lines(state_dir: Path) -> list[str]:
    progress = _read_json(Path(state_dir) / "progress.json") or {}
    last = progress.get("last_written")
    lines = [f"last window written: {'ending ' + iso_utc(last) if last else 'none yet'}"]
    windows, files, oldest = outbox_backlog(state_dir)
    lines.append(f"upload backlog: {windows} window(s), {files} file(s)"
                 + (f", oldest ending {iso_utc(oldest)}" if oldest else ""))
    cursor = _read_json(Path(state_dir) / CURSOR_FILE) or {}
    start = cursor.get("last_start")
    lines.append(f"results handled up to window starting: {iso_utc(start) if start is not None else 'none yet'}")
    lines += _backfill_lines(Path(state_dir))
    return lines


def _backfill_lines(state_dir: Path) -> list[str]:
    """Per OPC-UA source with a history backfill, its progress file (connectors.opcua.backfill)."""
    lines: list[str] = []
    if not (state_dir / "backfill").is_dir():
        return lines
    for name in sorted(_listdir(state_dir / "backfill")):
        if not name.endswith(".json"):
            continue
        data = _read_json(state_dir / "backfill" / name) or {}
        gaps = [g for gs in (data.get("gaps") or {}).values() for g in gs]
        totals = data.get("totals") or {}
        pending = sum(max(0.0, float(g[1]) - float(g[2])) for g in gaps)
        none = totals.get("no_history") or []
        lines.append(f"backfill {name[:-5]}: {totals.get('values', 0)} values filled, {len(gaps)} gap(s) pending "
                     f"({pending:.0f} s to read), {totals.get('out_of_reach_gaps', 0)} out of reach "
                     f"({float(totals.get('out_of_reach_secs', 0)):.0f} s)"
                     + (f", no history: {', '.join(none)}" if none else ""))
    return lines


def status(config: AssetConfig, state_dir: Path, client, *, s3_client_factory=None) -> str:
    """The status text (several lines, no trailing newline). ``client`` may be None (no API section)."""
    exists = check_state_dir(Path(state_dir))  # before any network call: a wrong folder fails fast
    lines = [f"asset: {config.asset}  state: {state_dir}" + ("" if exists else " (does not exist yet: the agent "
                                                               "has not run with this folder)")]
    lines += _api_lines(config, client, s3_client_factory)
    try:
        lines += _local_lines(Path(state_dir))
    except OSError as exc:  # e.g. one window folder of the outbox unreadable
        raise StateError(f"cannot read {exc.filename or state_dir}: {exc.strerror or exc}") from exc
    return "\n".join(lines)
