"""The agent against the Lookout API of the local service (unmodified boto3 over HTTP on 127.0.0.1, a folder store
in tmp_path), and one S3 path through moto's server: discovery, provisioning, results → alarms, status.

The end-to-end test provisions from a synthetic history (3 days of training data, a fault injected later in
the replayed part), runs the agent on an accelerated clock into the same folder store the service reads,
and polls results into an AlarmEngine with a ``file`` hook; the poller is replaced by a new instance on the
same state folder between two polls. No row may be lost or handled twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from agent.alarms.config import AlarmsConfig, AnomalyRuleConfig, EventRuleConfig
from agent.alarms.engine import AlarmEngine
from agent.alarms.hook_config import FileHookConfig
from agent.alarms.hooks import build_hooks
from agent.config import load
from agent.core.clock import ScaledClock
from agent.core.errors import ConfigError, LookoutError
from agent.lookout.client import (
    DISCOVERY_FILE,
    bucket_prefix,
    discover,
    location_url,
    make_client,
    same_location,
    scheduler_status,
    store_of,
)
from agent.lookout.provision import provision, sibling_prefix
from agent.lookout.results import ResultsPoller
from agent.lookout.status import status
from agent.lookout_local import LocalLookoutService
from agent.pipeline.store import FileStore
from agent.pipeline.windows import results_key
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.conftest import free_port
from tests.lookout_local import synth

BUCKET = "plant-data"
S0 = pd.Timestamp("2026-01-04T00:00:00Z").timestamp()  # end of the 3-day training history
START = pd.Timestamp("2026-01-01T00:00:00Z").timestamp()
SENSORS = {c: list(s) for c, s in synth.COMPONENTS.items()}


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return value


@pytest.fixture(scope="module")
def history():
    """The same five synthetic days as the local service's tests (one frame per component)."""
    return synth.series(5 * synth.DAY)


def write_history(path: Path, history, minutes: int, fault_from: float | None = None) -> pd.DataFrame:
    """One historian CSV (Timestamp + every sensor) of the first ``minutes``; motor current +4σ after
    ``fault_from`` (a broken correlation the detector flags, as in the local service's lifecycle test)."""
    frame = pd.concat([f.set_index("Timestamp") for f in history.values()], axis=1).iloc[:minutes].copy()
    if fault_from is not None:
        late = frame.index > pd.Timestamp(fault_from, unit="s")
        frame.loc[late, "current"] += 4.0 * history["motor"]["current"].std()
    out = frame.copy()
    out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path)
    return frame


def components_toml(components: dict[str, list[str]]) -> str:
    return "\n".join(f"{c} = {json.dumps(s)}" for c, s in components.items())


def asset_toml(folder: Path, lookout: str, components=SENSORS, source: str = "history.csv",
               name: str = "asset.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent("""\
        asset = "pump-07"
        [lookout]
        {lookout}
        [components]
        {components}
        [window]
        grace_secs = 5
        fill_limit = 0
        [upload]
        backoff_initial_secs = 0.1
        backoff_max_secs = 0.5
        [[sources]]
        name = "history"
        kind = "replay"
        path = "{source}"
        """).format(lookout=lookout, components=components_toml(components), source=source))
    return path


def with_store(config, store_root: Path):
    """Set ``[lookout] store`` (kept out of the TOML so these tests do not depend on when the field lands)."""
    if store_of(config.lookout) is not None:
        return config
    lookout = config.lookout.model_copy(update={"store": store_root.as_uri() + "/"})
    return config.model_copy(update={"lookout": lookout})


def quiet_client(endpoint: str):
    """One attempt, short timeouts: for endpoints that are meant to be down."""
    return boto3.client("lookoutequipment", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2))


def module_client(endpoint: str):
    """For module-scoped fixtures, which run before the per-test environment gets its dummy credentials."""
    return boto3.client("lookoutequipment", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


# --------------------------------------------------------------------------------------------------------
# discovery and provisioning against a scheduler with non-default settings
# --------------------------------------------------------------------------------------------------------

FULL = """\
scheduler = "pump-07-scheduler"
upload_frequency = "PT10M"
delay_offset_minutes = 3
sampling_rate = "PT1M"
input = "{store}/{bucket}/pump-07/input/"
output = "{store}/{bucket}/pump-07/results/"
timestamp_format = "yyyy-MM-dd-HH-mm-ss"
delimiter = "-"
timezone_offset = "+01:00"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory, history):
    """A local service (system clock) with the asset provisioned from one day of history."""
    root = tmp_path_factory.mktemp("site")
    store_root = root / "store"
    write_history(root / "history.csv", history, synth.DAY)
    svc = LocalLookoutService(root / "svc", store_root.as_uri() + "/").start()
    client = module_client(svc.endpoint_url)
    path = asset_toml(root, FULL.format(store=store_root.as_uri(), bucket=BUCKET))
    config = with_store(load(path), store_root)
    lines: list[str] = []
    summary = provision(config, path, client, progress=lines.append, poll_secs=0.05, timeout_secs=60)
    yield {"root": root, "store_root": store_root, "svc": svc, "client": client, "config": config, "path": path,
           "summary": summary, "lines": lines}
    svc.stop()


def minimal(site, folder: Path, extra: str = "", components=SENSORS, source: str = "history.csv"):
    folder.mkdir(exist_ok=True)
    if source == "history.csv":
        (folder / source).write_bytes((site["root"] / "history.csv").read_bytes())
    path = asset_toml(folder, 'scheduler = "pump-07-scheduler"\n' + extra, components, source)
    return with_store(load(path), site["store_root"]), path


def test_provision_creates_everything(site):
    summary, client = site["summary"], site["client"]
    assert summary["status"] == "PENDING"
    assert (summary["dataset"], summary["model"], summary["scheduler"]) == (
        "pump-07-dataset", "pump-07-model", "pump-07-scheduler")
    training = FileStore(site["store_root"] / BUCKET)
    assert sorted(training.list("pump-07/training-data/")) == [
        "pump-07/training-data/motor/motor.csv", "pump-07/training-data/pump/pump.csv"]
    header = training.get("pump-07/training-data/pump/pump.csv").decode().splitlines()[:2]
    assert header == ["Timestamp,flow,pressure,vibration,temperature", header[1]]
    assert header[1].startswith("2026-01-01T00:00:00.000000,")
    model = client.describe_model(ModelName="pump-07-model")
    assert model["Status"] == "SUCCESS"
    assert model["DataPreProcessingConfiguration"]["TargetSamplingRate"] == "PT1M"
    sched = client.describe_inference_scheduler(InferenceSchedulerName="pump-07-scheduler")
    assert sched["DataInputConfiguration"]["InferenceInputNameConfiguration"] == {
        "TimestampFormat": "yyyy-MM-dd-HH-mm-ss", "ComponentTimestampDelimiter": "-"}
    assert sched["DataInputConfiguration"]["InputTimeZoneOffset"] == "+01:00"
    assert sched["DataOutputConfiguration"]["S3OutputConfiguration"] == {"Bucket": BUCKET,
                                                                         "Prefix": "pump-07/results/"}
    assert any("ingestion SUCCESS" in line for line in site["lines"])
    assert any("training SUCCESS" in line for line in site["lines"])


def test_provision_again_reuses(site):
    lines: list[str] = []
    summary = provision(site["config"], site["path"], site["client"], progress=lines.append, poll_secs=0.05)
    assert summary["status"] in ("PENDING", "RUNNING")
    assert [line.split(":")[1].strip() for line in lines] == [
        "exists and is ACTIVE", "exists (SUCCESS)", f"exists ({summary['status']})"]


def test_provision_reports_differences_and_refuses_another_schema(site):
    config, lines = site["config"], []
    later = config.model_copy(update={"lookout": config.lookout.model_copy(update={"delay_offset_minutes": 7})})
    provision(later, site["path"], site["client"], progress=lines.append, poll_secs=0.05)
    assert any("differs from the file: delay_offset_minutes: scheduler has 3, file says 7 (not changed)" in line
               for line in lines)
    pump_only = config.model_copy(update={"components": {"pump": SENSORS["pump"]}})
    with pytest.raises(ConfigError) as err:
        provision(pump_only, site["path"], site["client"], progress=lines.append)
    assert err.value.key == "components" and "pump-07-dataset" in str(err.value)


def test_locations_and_buckets(tmp_path):
    root = tmp_path.as_uri() + "/"
    assert location_url("bk1", "a/input/", None) == "s3://bk1/a/input/"
    assert location_url("bk1", "a/input/", root) == f"{root}bk1/a/input/"
    assert bucket_prefix(f"{root}bk1/a/input/", root) == ("bk1", "a/input/")
    assert bucket_prefix(f"{root}bk1/", root) == ("bk1", "")
    assert bucket_prefix("s3://bk1/x/", root) == ("bk1", "x/")
    for url, store in ((f"{root}bk1/a/", None), ("file:///elsewhere/bk1/a/", root), (f"{root}B_1/", root)):
        with pytest.raises(ConfigError) as err:
            bucket_prefix(url, store)
        assert err.value.key == "lookout.store"
    assert (sibling_prefix("a/b/input/", "output"), sibling_prefix("input/", "x"), sibling_prefix("", "x")) == (
        "a/b/output/", "x/", "x/")


def test_provision_dry_run_changes_nothing(site, tmp_path):
    client = site["client"]
    before = client.list_datasets()["DatasetSummaries"]
    lines: list[str] = []
    names = {"dataset": "dry-dataset", "model": "dry-model", "scheduler": "dry-scheduler"}
    summary = provision(site["config"], site["path"], client, dry_run=True, names=names, progress=lines.append,
                        training_range=(START, START + 43200))
    assert summary["status"] == "NOT_CREATED"
    assert all(line.startswith("[dry-run] ") for line in lines)
    text = "\n".join(lines)
    for word in ("export", "dry-dataset: create", "ingest", "dry-model: train", "dry-scheduler: create"):
        assert word in text
    assert client.list_datasets()["DatasetSummaries"] == before
    assert client.list_models(ModelNameBeginsWith="dry")["ModelSummaries"] == []


def test_discovery_fills_a_minimal_file(site, tmp_path):
    config, path = minimal(site, tmp_path)
    assert config.lookout.upload_frequency is None
    found = discover(config, path, tmp_path / "state", site["client"])
    full, lk = site["config"].lookout, found.lookout
    for key in ("upload_frequency", "delay_offset_minutes", "sampling_rate", "timestamp_format", "delimiter",
                "timezone_offset", "timestamp_column"):
        assert getattr(lk, key) == getattr(full, key), key
    assert same_location(lk.input, full.input) and same_location(lk.output, full.output)
    assert found.components == SENSORS
    assert json.loads((tmp_path / "state" / DISCOVERY_FILE).read_text())["model"] == "pump-07-model"
    assert discover(site["config"], site["path"], tmp_path / "state2", site["client"]).lookout.input == full.input


@pytest.mark.parametrize(("extra", "key", "mine", "theirs"), [
    ('upload_frequency = "PT5M"\nsampling_rate = "PT1M"', "lookout.upload_frequency", "'PT5M'", "'PT10M'"),
    ("delay_offset_minutes = 2", "lookout.delay_offset_minutes", "2", "3"),
    ('delimiter = "_"', "lookout.delimiter", "'_'", "'-'"),
    ('timezone_offset = "+00:00"', "lookout.timezone_offset", "'+00:00'", "'+01:00'"),
    ('sampling_rate = "PT5M"', "lookout.sampling_rate", "'PT5M'", "'PT1M'"),
    ('input = "{store}/{bucket}/pump-07/other/"', "lookout.input", "pump-07/other/", "pump-07/input/"),
])
def test_a_disagreeing_value_names_both(site, tmp_path, extra, key, mine, theirs):
    config, path = minimal(site, tmp_path, extra.format(store=site["store_root"].as_uri(), bucket=BUCKET))
    with pytest.raises(ConfigError) as err:
        discover(config, path, tmp_path / "state", site["client"])
    assert err.value.key == key and err.value.file == str(path)
    assert mine in str(err.value) and theirs in str(err.value)


def test_schema_sensor_without_source(site, tmp_path):
    folder = tmp_path / "asset"
    folder.mkdir()
    frame = pd.read_csv(site["root"] / "history.csv").drop(columns=["winding"])
    frame.to_csv(folder / "partial.csv", index=False)
    partial = {"pump": SENSORS["pump"], "motor": ["current", "speed"]}
    config, path = minimal(site, folder, components=partial, source="partial.csv")
    with pytest.raises(ConfigError) as err:
        discover(config, path, tmp_path / "state", site["client"])
    assert err.value.key == "components"
    assert "'winding'" in str(err.value) and "no source" in str(err.value)


def test_components_must_match_the_schema(site, tmp_path):
    swapped = {"pump": list(reversed(SENSORS["pump"])), "motor": SENSORS["motor"]}
    config, path = minimal(site, tmp_path, components=swapped)
    with pytest.raises(ConfigError) as err:
        discover(config, path, tmp_path / "state", site["client"])
    assert err.value.key == "components" and "same order" in str(err.value)


def test_unknown_scheduler_is_a_config_error(site, tmp_path):
    config, path = minimal(site, tmp_path)
    config = config.model_copy(update={"lookout": config.lookout.model_copy(update={"scheduler": "nope"})})
    with pytest.raises(ConfigError) as err:
        discover(config, path, tmp_path / "state", site["client"])
    assert err.value.key == "lookout.scheduler"


def test_api_unreachable_uses_the_cached_discovery(site, tmp_path, caplog):
    config, path = minimal(site, tmp_path)
    online = discover(config, path, tmp_path / "state", site["client"])
    dead = quiet_client(f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="l4e.lookout"):
        offline = discover(config, path, tmp_path / "state", dead)
    assert offline == online
    assert any("unreachable" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    with pytest.raises(LookoutError, match="no cached discovery"):
        discover(config, path, tmp_path / "fresh", dead)


def test_scheduler_status_and_status_text(site, tmp_path):
    client = site["client"]
    wait_for(lambda: scheduler_status(client, "pump-07-scheduler").status == "RUNNING")
    assert scheduler_status(client, "pump-07-scheduler").warning is None
    gone = scheduler_status(client, "nope")
    assert gone.status == "NOT_FOUND" and "nope" in gone.warning
    down = scheduler_status(quiet_client(f"http://127.0.0.1:{free_port()}"), "pump-07-scheduler")
    assert down.status == "UNREACHABLE" and down.warning
    text = status(site["config"], tmp_path / "state", client)
    assert "pump-07-scheduler: RUNNING" in text
    assert "upload backlog: 0 window(s)" in text and "none yet" in text


# --------------------------------------------------------------------------------------------------------
# provision → agent at 300× → executions → results → alarms, with a poller restart in between
# --------------------------------------------------------------------------------------------------------

SPEED = 300.0          # one 5-minute window per wall second
FAULT = S0 + 30 * 60   # motor current jumps after this: windows 7.. are faulty
RUN_UNTIL = S0 + 47 * 60 + 10  # window 9 ends at S0 + 45 min and is scored 2 minutes later
END_TO_END = """\
scheduler = "pump-07-scheduler"
upload_frequency = "PT5M"
delay_offset_minutes = 2
sampling_rate = "PT1M"
input = "{input}"
"""


class Recorder:
    """Counts what reaches the alarm layer, then passes it on to the engine."""

    def __init__(self, engine: AlarmEngine) -> None:
        self.engine = engine
        self.rows: list = []
        self.events: list = []

    async def on_results(self, rows) -> None:
        self.rows += rows
        await self.engine.on_results(rows)

    async def on_event(self, event) -> None:
        self.events.append(event)
        await self.engine.on_event(event)


async def poll_until(poller: ResultsPoller, rec: Recorder, done) -> None:
    while not done():
        await poller.poll_once(rec.on_results, rec.on_event)
        await asyncio.sleep(0.2)


@pytest.mark.timeout(90)
async def test_provision_run_alarms_every_result_once(tmp_path, history):
    store_root = tmp_path / "store"
    input_url = (store_root / BUCKET).as_uri() + "/pump-07/input/"
    write_history(tmp_path / "history.csv", history, 3 * synth.DAY + 120, fault_from=FAULT)
    path = asset_toml(tmp_path, END_TO_END.format(input=input_url))
    config = with_store(load(path), store_root)

    # provision on a clock that barely moves, so the scheduler's first window is known: (S0 − 5 min, S0]
    svc = LocalLookoutService(tmp_path / "svc", store_root.as_uri() + "/", clock=ScaledClock(S0 - 60, 1.0),
                              tick_secs=0.05).start()
    try:
        summary = await asyncio.to_thread(provision, config, path, make_client(svc.endpoint_url),
                                          training_range=(START, S0 - 60), progress=lambda _line: None,
                                          poll_secs=0.05, timeout_secs=60)
    finally:
        svc.stop()
    assert summary["output"].endswith("/pump-07/output/")

    # the same service state on the accelerated timeline the agent runs on
    clock = ScaledClock(S0 - 20, SPEED)
    svc = LocalLookoutService(tmp_path / "svc", store_root.as_uri() + "/", clock=clock, tick_secs=0.05).start()
    try:
        client = make_client(svc.endpoint_url)
        config = discover(config, path, tmp_path / "state", client)  # fills output from the scheduler
        assert same_location(config.lookout.output, summary["output"])
        journal = tmp_path / "alarms.jsonl"
        alarms = AlarmsConfig(
            rules=[AnomalyRuleConfig(kind="anomaly", name="anomaly", min_consecutive=2, hooks=["journal"]),
                   EventRuleConfig(kind="execution_failed", name="failed", hooks=["journal"])],
            hooks={"journal": FileHookConfig(kind="file", path=journal)})
        engine = AlarmEngine("pump-07", alarms, tmp_path / "state", build_hooks(alarms, tmp_path), clock,
                             window_secs=300)
        rec = Recorder(engine)
        runner = AssetRunner(config, path, tmp_path / "state", clock)
        agent = asyncio.create_task(Agent([runner], clock).run(until=RUN_UNTIL))

        first = ResultsPoller("pump-07", config.lookout, tmp_path / "state", clock, client=client)
        stats = first.stats
        await asyncio.wait_for(poll_until(first, rec, lambda: stats.executions_succeeded >= 3), 30)
        del first  # "killed" between two polls: a new instance continues from the saved cursor
        second = ResultsPoller("pump-07", config.lookout, tmp_path / "state", clock, client=client)
        await asyncio.wait_for(poll_until(second, rec, agent.done), 40)
        assert agent.result() == 0

        def scored_through_window_9():
            execs = client.list_inference_executions(InferenceSchedulerName="pump-07-scheduler")
            return any(e["DataStartTime"].timestamp() >= S0 + 40 * 60 for e in execs["InferenceExecutionSummaries"])

        await asyncio.to_thread(wait_for, scored_through_window_9, 20)
        client.stop_inference_scheduler(InferenceSchedulerName="pump-07-scheduler")
        await asyncio.to_thread(wait_for, lambda: client.describe_inference_scheduler(
            InferenceSchedulerName="pump-07-scheduler")["Status"] == "STOPPED", 20)
        await second.poll_once(rec.on_results, rec.on_event)
        assert await second.poll_once(rec.on_results, rec.on_event) == 0
        text = status(config, tmp_path / "state", client)
    finally:
        svc.stop()
    await engine.drain(10)
    await engine.close()

    # every row of every results file reached the alarm layer exactly once
    out = FileStore(store_root / BUCKET)
    keys = [k for k in out.list("pump-07/output/") if k.endswith("/results.jsonl")]
    lines = [json.loads(line) for k in keys for line in out.get(k).decode().splitlines() if line.strip()]
    assert len(keys) >= 9
    assert len(rec.rows) == len(lines)
    assert sorted(r.ts for r in rec.rows) == sorted(pd.Timestamp(d["timestamp"], tz="UTC").timestamp() for d in lines)
    assert len({r.ts for r in rec.rows}) == len(rec.rows)
    succeeded = [e for e in rec.events if e.kind == "execution_succeeded"]
    assert len(succeeded) == len(keys) and ordered_and_unique(succeeded)
    assert results_key("pump-07/output/", _window(S0 + 1800)) in keys  # the first faulty window was scored

    # the fault is visible: an anomaly alarm raised after it, none before, pointing at the motor current
    delivered = [json.loads(line) for line in journal.read_text().splitlines()]
    raised = [a for a in delivered if a["rule"] == "anomaly" and a["state"] == "raised"]
    assert raised, delivered
    assert all(a["ts"] > FAULT for a in raised)
    assert raised[0]["ts"] <= FAULT + 600
    assert raised[0]["diagnostics"][0]["name"] == "motor\\current"
    assert max(r.score for r in rec.rows if r.ts <= FAULT) < 0.5
    assert "pump-07-scheduler: STOPPED" in text and "max score" in text


def _window(start: float):
    from agent.core.model import Window

    return Window(int(start), int(start) + 300)


def ordered_and_unique(events) -> bool:
    starts = [e.details["window_start"] for e in events]
    return len(starts) == len(set(starts)) and starts == sorted(starts)


# --------------------------------------------------------------------------------------------------------
# results from moto's S3 server over HTTP (listing mode: no scheduler name)
# --------------------------------------------------------------------------------------------------------


async def test_results_from_s3_listing(tmp_path, moto_s3):
    from agent.config import LookoutConfig
    from agent.core.model import Window
    from agent.pipeline.windows import format_csv_time

    s3 = moto_s3.client()
    s3.create_bucket(Bucket="results-bkt")
    windows = [Window(int(S0) + 300 * k, int(S0) + 300 * (k + 1)) for k in range(3)]
    for k, w in enumerate(windows):
        lines = [json.dumps({"timestamp": format_csv_time(w.start + 60 * i), "prediction": 0,
                             "prediction_reason": "NO_ANOMALY_DETECTED", "anomaly_score": 0.1,
                             "diagnostics": [{"name": "pump\\flow", "value": 1.0}]}) for i in range(1, 6)]
        if k == 1:
            lines.insert(2, '{"timestamp": "2026-01-04T00:07:00", "prediction": "x"}')
        s3.put_object(Bucket="results-bkt", Key=results_key("pump-07/output/", w),
                      Body=("\n".join(lines) + "\n").encode())
    lookout = LookoutConfig(upload_frequency="PT5M", sampling_rate="PT1M", input="s3://results-bkt/pump-07/input/",
                            output="s3://results-bkt/pump-07/output/")
    clock = ScaledClock(S0 + 3600, 1.0)
    got, events = [], []

    async def on_results(rows):
        got.extend(rows)

    async def on_event(event):
        events.append(event)

    poller = ResultsPoller("pump-07", lookout, tmp_path / "state", clock, s3_client_factory=moto_s3.client)
    assert await poller.poll_once(on_results, on_event) == 3
    assert (poller.stats.results_processed, poller.stats.malformed_lines) == (15, 1)
    assert [e.details["window_start"] for e in events] == [w.start for w in windows]
    again = ResultsPoller("pump-07", lookout, tmp_path / "state", clock, s3_client_factory=moto_s3.client)
    assert await again.poll_once(on_results, on_event) == 0
    assert len(got) == 15


async def test_provision_discover_and_results_over_s3(tmp_path, moto_s3, history, monkeypatch):
    """The whole API path with the buckets in S3 (moto over HTTP): provision exports to S3, the service ingests
    from it, discovery gives s3:// locations, the poller reads the results object from S3."""
    from agent.core.model import Window
    from agent.pipeline.windows import object_key

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.url)  # for the service's own S3 client
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="plant-s3")
    write_history(tmp_path / "history.csv", history, synth.DAY)
    path = asset_toml(tmp_path, END_TO_END.format(input="s3://plant-s3/pump-07/input/"))
    config = load(path)
    clock = ScaledClock(START + synth.DAY, 300.0)
    with LocalLookoutService(tmp_path / "svc", "s3", clock=clock, tick_secs=0.05) as svc:
        client = make_client(svc.endpoint_url)
        await asyncio.to_thread(provision, config, path, client, s3_client_factory=moto_s3.client,
                                progress=lambda _line: None, poll_secs=0.05, timeout_secs=60)
        assert "pump-07/training-data/motor/motor.csv" in {
            o["Key"] for o in s3.list_objects_v2(Bucket="plant-s3")["Contents"]}
        found = discover(config, path, tmp_path / "state", client)
        assert (found.lookout.input, found.lookout.output) == ("s3://plant-s3/pump-07/input/",
                                                               "s3://plant-s3/pump-07/output/")
        created = client.describe_inference_scheduler(InferenceSchedulerName="pump-07-scheduler")["CreatedAt"]
        start = int(created.timestamp() // 300) * 300
        window = Window(start, start + 300)
        lo, hi = synth.minute_index(window.start), synth.minute_index(window.end)
        for comp, frame in history.items():
            key = object_key("pump-07/input/", comp, "_", window.start, "yyyyMMddHHmmss")
            s3.put_object(Bucket="plant-s3", Key=key, Body=synth.to_csv(frame.iloc[lo:hi + 1]))
        poller = ResultsPoller("pump-07", found.lookout, tmp_path / "state", clock, client=client,
                               s3_client_factory=moto_s3.client)
        rows, events = [], []

        async def on_results(batch):
            rows.extend(batch)

        async def on_event(event):
            events.append(event)

        deadline = time.monotonic() + 30
        while not any(e.details.get("window_start") == window.start for e in events):
            assert time.monotonic() < deadline, events
            await poller.poll_once(on_results, on_event)
            await asyncio.sleep(0.1)
    succeeded = [e for e in events if e.kind == "execution_succeeded"]
    assert [e.details["window_start"] for e in succeeded] == [window.start]
    assert [r.ts for r in rows] == [window.start + 60 * i for i in range(1, 6)]
    assert poller.stats.missing_objects == 0
