"""results.jsonl parsing (malformed lines and wrong types counted and skipped) and the poller's handling of
FAILED, IN_PROGRESS and missing results objects, against a stand-in for ListInferenceExecutions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.config import LookoutConfig
from agent.core.clock import ScaledClock
from agent.core.model import Diagnostic, Window
from agent.lookout.results import CURSOR_FILE, ResultsPoller, parse_results_jsonl
from agent.pipeline.store import FileStore
from agent.pipeline.windows import format_csv_time, results_key

W0 = int(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp())

GOOD = {"timestamp": "2026-03-01T12:01:00.000000", "prediction": 1, "prediction_reason": "ANOMALY_DETECTED",
        "anomaly_score": 0.72385, "diagnostics": [{"name": "pump\\flow", "value": 0.7},
                                                  {"name": "pump\\temp", "value": 0.3}]}


def dumps(*docs) -> bytes:
    return "".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs).encode()


def test_aws_example_lines():
    data = dumps(
        {"timestamp": "2021-03-11T22:24:00.000000", "prediction": 0, "prediction_reason": "MACHINE_OFF"},
        {"timestamp": "2021-03-11T22:25:00.000000", "prediction": 1, "prediction_reason": "ANOMALY_DETECTED",
         "anomaly_score": 0.72385, "diagnostics": [{"name": "component_5feceb66\\sensor0", "value": 0.02346}]})
    rows, bad = parse_results_jsonl(data, 1615501200)
    assert bad == 0
    off, hit = rows
    assert off.ts == datetime(2021, 3, 11, 22, 24, tzinfo=UTC).timestamp()  # no zone → UTC
    assert (off.prediction, off.reason, off.score, off.diagnostics) == (0, "MACHINE_OFF", None, ())
    assert hit.score == 0.72385 and hit.window_start == 1615501200
    assert hit.diagnostics == (Diagnostic("component_5feceb66\\sensor0", 0.02346),)


def test_zone_suffix_and_integer_score():
    rows, bad = parse_results_jsonl(dumps({**GOOD, "timestamp": "2026-03-01T13:01:00+01:00", "anomaly_score": 1}), W0)
    assert bad == 0 and rows[0].ts == W0 + 60 and rows[0].score == 1.0


@pytest.mark.parametrize("line", [
    "{not json",
    "[1, 2]",
    '"text"',
    json.dumps({k: v for k, v in GOOD.items() if k != "timestamp"}),
    json.dumps({**GOOD, "timestamp": 1614000000}),
    json.dumps({**GOOD, "timestamp": "yesterday"}),
    json.dumps({**GOOD, "prediction": "1"}),
    json.dumps({**GOOD, "prediction": 2}),
    json.dumps({**GOOD, "prediction": True}),
    json.dumps({**GOOD, "prediction_reason": "MAYBE"}),
    json.dumps({**GOOD, "anomaly_score": "0.5"}),
    json.dumps({**GOOD, "anomaly_score": False}),
    json.dumps({**GOOD, "diagnostics": {"pump\\flow": 1.0}}),
    json.dumps({**GOOD, "diagnostics": [{"name": "pump\\flow"}]}),
    json.dumps({**GOOD, "diagnostics": [{"name": 3, "value": 1.0}]}),
    json.dumps({**GOOD, "diagnostics": ["pump\\flow"]}),
])
def test_malformed_line_is_counted_and_the_rest_kept(line):
    data = dumps(GOOD, line, {**GOOD, "timestamp": "2026-03-01T12:02:00.000000"})
    rows, bad = parse_results_jsonl(data, W0)
    assert bad == 1
    assert [r.ts for r in rows] == [W0 + 60, W0 + 120]


def test_blank_lines_and_bad_bytes():
    data = dumps(GOOD) + b"\n  \n" + b"\xff\xfe{\n" + dumps({**GOOD, "timestamp": "2026-03-01T12:02:00"})
    rows, bad = parse_results_jsonl(data, W0)
    assert (len(rows), bad) == (2, 1)
    assert parse_results_jsonl(b"", W0) == ([], 0)
    assert parse_results_jsonl(dumps(GOOD).rstrip(b"\n"), W0)[1] == 0  # no final newline: still fine


# --------------------------------------------------------------------------------------------------------
# the poller against a stand-in ListInferenceExecutions (newest first, inclusive filter, 2 per page)
# --------------------------------------------------------------------------------------------------------


class FakeLookout:
    """ListInferenceExecutions only: what the poller calls."""

    def __init__(self) -> None:
        self.executions: list[dict] = []
        self.calls = 0

    def add(self, window: Window, status: str, key: str | None = None, reason: str | None = None) -> None:
        e = {"DataStartTime": datetime.fromtimestamp(window.start, UTC),
             "DataEndTime": datetime.fromtimestamp(window.end, UTC),
             "ScheduledStartTime": datetime.fromtimestamp(window.end + 120, UTC), "Status": status}
        if key:
            e["CustomerResultObject"] = {"Bucket": "plant-data", "Key": key}
        if reason:
            e["FailedReason"] = reason
        self.executions.append(e)

    def list_inference_executions(self, InferenceSchedulerName, DataStartTimeAfter=None, MaxResults=50,
                                  NextToken=None):
        self.calls += 1
        items = sorted((e for e in self.executions if DataStartTimeAfter is None
                        or e["DataStartTime"] >= DataStartTimeAfter), key=lambda e: e["DataStartTime"],
                       reverse=True)
        offset = int(NextToken or 0)
        page = {"InferenceExecutionSummaries": items[offset:offset + 2]}
        if offset + 2 < len(items):
            page["NextToken"] = str(offset + 2)
        return page


class Sink:
    def __init__(self) -> None:
        self.rows, self.events = [], []

    async def on_results(self, rows):
        self.rows += rows

    async def on_event(self, event):
        self.events.append(event)


def window(k: int) -> Window:
    return Window(W0 + 300 * k, W0 + 300 * (k + 1))


def result_file(w: Window, n: int = 5, bad: int = 0) -> bytes:
    lines = [{**GOOD, "timestamp": format_csv_time(w.start + 60 * (i + 1))} for i in range(n)]
    return dumps(*lines, *(["{broken"] * bad))


@pytest.fixture
def world(tmp_path):
    store_root = tmp_path / "store"
    bucket = FileStore(store_root / "plant-data")
    lookout = LookoutConfig(scheduler="s1", upload_frequency="PT5M", sampling_rate="PT1M",
                            output=(store_root / "plant-data").as_uri() + "/out/")
    lookout = lookout.model_copy(update={"store": store_root.as_uri() + "/"})
    clock = ScaledClock(W0 + 3600, 1.0)
    return bucket, lookout, clock, tmp_path / "state"


async def test_failed_missing_and_in_progress(world):
    bucket, lookout, clock, state = world
    fake = FakeLookout()
    for k in (0, 2, 4, 5):
        bucket.put(results_key("out/", window(k)), result_file(window(k), bad=1 if k == 2 else 0))
    fake.add(window(0), "SUCCESS", results_key("out/", window(0)))
    fake.add(window(1), "FAILED", reason="Could not find data file for sensor pump within expected range")
    fake.add(window(2), "SUCCESS", results_key("out/", window(2)))
    fake.add(window(3), "SUCCESS", results_key("out/", window(3)))  # its object was never written
    fake.add(window(4), "IN_PROGRESS")
    fake.add(window(5), "SUCCESS", results_key("out/", window(5)))  # after the running one: must wait
    poller = ResultsPoller("pump-07", lookout, state, clock, client=fake)
    sink = Sink()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 4
    s = poller.stats
    assert (s.results_processed, s.malformed_lines, s.missing_objects, s.executions_failed) == (10, 1, 1, 1)
    assert [e.kind for e in sink.events] == ["execution_succeeded", "execution_failed", "execution_succeeded"]
    failed = sink.events[1]
    assert failed.subject == "pump-07" and failed.message.startswith("Could not find data file")
    assert failed.details == {"window_start": window(1).start, "window_end": window(1).end}
    assert failed.ts == window(1).end + 120
    assert json.loads((state / CURSOR_FILE).read_text())["last_start"] == window(3).start
    assert {r.window_start for r in sink.rows} == {window(0).start, window(2).start}

    # the running window finishes: the next poll resumes right after the cursor, from a new instance too
    fake.executions[4]["Status"] = "SUCCESS"
    fake.executions[4]["CustomerResultObject"] = {"Bucket": "plant-data", "Key": results_key("out/", window(4))}
    again = ResultsPoller("pump-07", lookout, state, clock, client=fake)
    assert await again.poll_once(sink.on_results, sink.on_event) == 2
    timestamps = [r.ts for r in sink.rows]
    assert len(timestamps) == 20 and len(set(timestamps)) == 20  # nothing twice
    assert await again.poll_once(sink.on_results, sink.on_event) == 0


async def test_callback_failure_keeps_the_cursor(world):
    bucket, lookout, clock, state = world
    fake = FakeLookout()
    bucket.put(results_key("out/", window(0)), result_file(window(0)))
    fake.add(window(0), "SUCCESS", results_key("out/", window(0)))
    poller = ResultsPoller("pump-07", lookout, state, clock, client=fake)

    async def broken(rows):
        raise OSError("disk full")

    sink = Sink()
    with pytest.raises(OSError):
        await poller.poll_once(broken, sink.on_event)
    assert not (state / CURSOR_FILE).exists()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 1
    assert len(sink.rows) == 5


async def test_listing_mode_without_scheduler(world):
    bucket, lookout, clock, state = world
    lookout = lookout.model_copy(update={"scheduler": None})
    for k in (1, 0, 3):
        bucket.put(results_key("out/", window(k)), result_file(window(k)))
    bucket.put("out/notes.txt", b"x")
    bucket.put("out/2026-03-01T12:00:00Z/other.json", b"{}")
    poller = ResultsPoller("pump-07", lookout, state, clock)
    sink = Sink()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 3
    assert [e.details["window_start"] for e in sink.events] == [window(k).start for k in (0, 1, 3)]
    assert sink.events[0].details["window_end"] == window(0).end
    # a late object for an older window than the cursor is not handled (the cursor only moves forward)
    bucket.put(results_key("out/", window(2)), result_file(window(2)))
    bucket.put(results_key("out/", window(4)), result_file(window(4)))
    assert await ResultsPoller("pump-07", lookout, state, clock).poll_once(sink.on_results, sink.on_event) == 1
    assert len(sink.rows) == 20


async def test_api_unreachable_falls_back_to_listing(world):
    bucket, lookout, clock, state = world
    import boto3
    from botocore.config import Config

    from tests.conftest import free_port

    client = boto3.client("lookoutequipment", endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
                          region_name="us-east-1", config=Config(retries={"total_max_attempts": 1}))
    bucket.put(results_key("out/", window(0)), result_file(window(0)))
    poller = ResultsPoller("pump-07", lookout, state, clock, client=client)
    sink = Sink()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 1
    no_output = ResultsPoller("pump-07", lookout.model_copy(update={"output": None}), state, clock, client=client)
    assert await no_output.poll_once(sink.on_results, sink.on_event) == 0
    assert no_output.stats.poll_errors == 1


async def test_store_outage_stops_the_poll_without_advancing(world):
    from agent.core.errors import StoreUnavailable

    bucket, lookout, clock, state = world
    fake = FakeLookout()
    for k in (0, 1):
        bucket.put(results_key("out/", window(k)), result_file(window(k)))
        fake.add(window(k), "SUCCESS", results_key("out/", window(k)))

    class Flaky:
        """The bucket, failing the second read once (a network outage)."""

        reads = 0

        def get(self, key):
            Flaky.reads += 1
            if Flaky.reads == 2:
                raise StoreUnavailable("connection reset")
            return bucket.get(key)

        def describe(self):
            return "flaky://"

    poller = ResultsPoller("pump-07", lookout, state, clock, client=fake)
    poller._stores["plant-data"] = Flaky()
    sink = Sink()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 1
    assert poller.stats.poll_errors == 1 and poller.cursor == window(0).start
    assert await poller.poll_once(sink.on_results, sink.on_event) == 1
    assert [r.ts for r in sink.rows] == [window(0).start + 60 * i for i in range(1, 11)]


async def test_api_refusal_is_counted_not_raised(world):
    from agent.core.errors import ConfigError

    _bucket, lookout, clock, state = world

    class Refusing:
        def list_inference_executions(self, **_kwargs):
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "ListInferenceExecutions")

    poller = ResultsPoller("pump-07", lookout.model_copy(update={"output": None}), state, clock, client=Refusing())
    sink = Sink()
    assert await poller.poll_once(sink.on_results, sink.on_event) == 0
    assert poller.stats.poll_errors == 1 and sink.events == []
    with pytest.raises(ConfigError):  # neither a usable API nor an output location
        ResultsPoller("pump-07", lookout.model_copy(update={"output": None}), state, clock)
