"""``l4e-agent demo``: the whole loop on one machine, on a scaled clock, in under two minutes.

simulated plant (OPC-UA + Modbus servers) → agent (real connectors, spool, windows, uploads into a local folder
store) → local L4E service (dataset, ingestion, model, scheduler, executions) → results → alarms (file + log).

Timeline (clock time, T = the start of live streaming):
- history: ``history_days`` of healthy 1-minute data before T, exported and used to train the model;
- provisioning runs with the clock held still at T − 2 min (training time does not eat plant time);
- live: the clock runs at ``speed``×; a cavitation fault is on from T + ``fault_start_min`` to
  T + ``fault_end_min``; the agent stops at T + ``live_min`` and drains.

Outputs in ``--out``: ``store/`` (the bucket folders: input windows, training data, results), ``alarms.jsonl``
(every alarm transition), ``demo-chart.html`` (sensors and anomaly score over time, alarm spans shaded), and
``summary.json``. Exit 0 when an anomaly alarm was raised during the fault and none before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.clock import ScaledClock, iso_utc, parse_instant

log = logging.getLogger("l4e.demo")
ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "config" / "demo" / "pump-07.toml"


@dataclass(frozen=True)
class Plan:
    live_start: float
    speed: float
    history_days: float
    fault_start_min: float
    fault_end_min: float
    live_min: float
    seed: int
    status_port: int = 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="l4e-agent demo", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (replaced)")
    p.add_argument("--speed", type=float, default=120.0, help="clock speed during live streaming")
    p.add_argument("--start", default="2026-03-02T08:00:00Z", help="clock time where live streaming begins")
    p.add_argument("--history-days", type=float, default=10.0)
    p.add_argument("--fault-start-min", type=float, default=25.0)
    p.add_argument("--fault-end-min", type=float, default=45.0)
    p.add_argument("--live-min", type=float, default=70.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="shorter run for CI (fewer history days, faster clock)")
    p.add_argument("--status-port", type=int, default=0,
                   help="port of the status page on 127.0.0.1 while the agent runs (0: a free one, printed)")
    return p.parse_args(argv)


def demo_main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.quick:
        args.history_days = min(args.history_days, 4.0)
        args.speed = max(args.speed, 180.0)
    plan = Plan(parse_instant(args.start), args.speed, args.history_days, args.fault_start_min, args.fault_end_min,
                args.live_min, args.seed, args.status_port)
    return asyncio.run(run_demo(plan, args.out.resolve()))


def say(text: str) -> None:
    print(text, flush=True)


def demo_config(out: Path, scheduler: str, endpoint: str, opcua_endpoint: str, modbus_port: int):
    """The shipped demo asset file, pointed at this run's folders, ports and scheduler."""
    from agent.config import load

    base = load(DEMO_CONFIG, check_sources=False)
    store = out / "store"
    lookout = base.lookout.model_copy(update={
        "input": f"file://{store}/plant-l4e/pump-07/input/", "output": f"file://{store}/plant-l4e/pump-07/output/",
        "store": f"file://{store}/", "scheduler": scheduler, "endpoint_url": endpoint})
    sources = []
    for src in base.sources:
        if src.kind == "opcua":
            src = src.model_copy(update={"endpoint": opcua_endpoint})
        elif src.kind == "modbus":
            src = src.model_copy(update={"port": modbus_port})
        sources.append(src)
    hooks = dict(base.alarms.hooks)
    hooks["history"] = hooks["history"].model_copy(update={"path": out / "alarms.jsonl"})
    alarms = base.alarms.model_copy(update={"hooks": hooks})
    return base.model_copy(update={"lookout": lookout, "sources": sources, "alarms": alarms})


async def run_demo(plan: Plan, out: Path) -> int:
    from agent.demo.chart import write_chart
    from agent.demo.pump_model import PumpModel, history_frame
    from agent.demo.simulator import PlantSimulator
    from agent.lookout.client import make_client
    from agent.lookout.provision import provision
    from agent.lookout.results import ResultsPoller
    from agent.lookout_local import LocalLookoutService
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner
    from agent.runtime.metrics_config import MetricsConfig

    t_begin = time.monotonic()
    # everything talks to 127.0.0.1; the local service takes any key pair, boto3 just needs one to sign with
    for key, value in (("AWS_ACCESS_KEY_ID", "local-demo"), ("AWS_SECRET_ACCESS_KEY", "local-demo"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(key, value)
    if out.exists():
        shutil.rmtree(out)
    (out / "store" / "plant-l4e").mkdir(parents=True)
    T = plan.live_start
    clock = ScaledClock(T - 120, 1e-9)  # held still while provisioning
    model = PumpModel(plan.seed)
    fault = (T + 60 * plan.fault_start_min, T + 60 * plan.fault_end_min)
    model.schedule_fault("cavitation", *fault)

    say(f"[demo] 1/4 plant history: {plan.history_days:g} days of 1-minute data before {iso_utc(T)}")
    frame = history_frame(model, T - plan.history_days * 86400, T - 120, 60)
    history = out / "history.csv"
    frame.index = frame.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.index.name = "Timestamp"
    frame.to_csv(history)

    service = LocalLookoutService(out / "lookout", f"file://{out / 'store'}/", clock=clock)
    service.start()
    sim = PlantSimulator(model, clock)
    try:
        await sim.start()
        config = demo_config(out, "pump-07-scheduler", service.endpoint_url, sim.opcua_endpoint, sim.modbus_port)
        config_path = DEMO_CONFIG
        client = make_client(service.endpoint_url, "us-east-1")
        say("[demo] 2/4 provisioning on the local L4E service: dataset → ingestion → model → scheduler")
        t0 = time.monotonic()
        await asyncio.to_thread(provision, config, config_path, client, history=history,
                                progress=lambda line: say(f"       {line}"), poll_secs=0.2)
        say(f"       provisioned in {time.monotonic() - t0:.1f}s")

        say(f"[demo] 3/4 live: plant → OPC-UA + Modbus → agent → store → scheduler, clock ×{plan.speed:g}; "
            f"cavitation fault {iso_utc(fault[0])} … {iso_utc(fault[1])}")
        clock.rebase(T - 60, plan.speed)
        runner = AssetRunner(config, config_path, out / "agent", clock)
        runner.results_poller = ResultsPoller(config.asset, config.lookout, out / "agent", clock, client=client,
                                              initial_lookback_secs=3600)
        progress = asyncio.create_task(show_progress(runner, client, out, clock, fault))
        # run past the last window's end + grace so it is uploaded (and not reported FAILED by the scheduler)
        until = T + 60 * plan.live_min + config.window.grace_secs + 10
        agent = Agent([runner], clock, metrics_config=MetricsConfig(enabled=True, port=plan.status_port))
        announce = asyncio.create_task(announce_status_page(agent))
        try:
            await agent.run(until=until)
        finally:
            announce.cancel()
        # let the scheduler run the last uploaded window (end + delay offset), then stop it so that windows
        # after the agent stopped do not show up as FAILED executions
        await asyncio.sleep(clock.real_seconds(60 * config.lookout.delay_offset_minutes + 30))
        await asyncio.to_thread(client.stop_inference_scheduler, InferenceSchedulerName="pump-07-scheduler")
        await asyncio.sleep(1.0)
        progress.cancel()
    finally:
        await sim.stop()
        service.stop()

    say("[demo] 4/4 results")
    alarms = read_alarms(out / "alarms.jsonl")
    summary = summarize(out, alarms, fault, runner, time.monotonic() - t_begin)
    rule = next((r for r in config.alarms.rules if r.kind == "anomaly" and r.name == "anomaly"), None)
    write_chart(out / "demo-chart.html", out / "store" / "plant-l4e" / "pump-07", alarms, fault,
                sensors=["suction_pressure", "discharge_pressure", "flow", "vibration"],
                score_threshold=rule.score_threshold if rule is not None else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for line in summary["lines"]:
        say("       " + line)
    say(f"       chart: {out / 'demo-chart.html'}")
    return 0 if summary["ok"] else 1


async def announce_status_page(agent) -> None:
    """Print the status page's address once the agent's listener is up."""
    while agent.metrics_server is None or agent.metrics_server._server is None:
        await asyncio.sleep(0.05)
    say(f"       status page: http://127.0.0.1:{agent.metrics_server.port}/ (while the agent runs; JSON at "
        "/api/status)")


async def show_progress(runner, client, out: Path, clock, fault) -> None:
    """Print windows uploaded, executions with their max score, and alarm transitions as they happen."""
    from botocore.exceptions import BotoCoreError, ClientError

    seen_keys, seen_exec, seen_alarms = 0, set(), 0
    while True:
        await asyncio.sleep(0.5)
        keys = runner.uploader.stats.uploaded_keys
        uploaded = runner.uploader.stats.uploaded
        if uploaded > seen_keys:
            for key in keys[-(uploaded - seen_keys):]:
                say(f"   {iso_utc(clock.now())}  uploaded {key.rsplit('/', 1)[-1]}")
            seen_keys = uploaded
        try:
            page = await asyncio.to_thread(client.list_inference_executions,
                                           InferenceSchedulerName="pump-07-scheduler", MaxResults=50)
        except (BotoCoreError, ClientError):  # progress display only: the next round asks again
            page = {"InferenceExecutionSummaries": []}
        for ex in sorted(page["InferenceExecutionSummaries"], key=lambda e: e["DataStartTime"]):
            key = (ex["DataStartTime"].timestamp(), ex["Status"])
            if key in seen_exec or ex["Status"] == "IN_PROGRESS":
                continue
            seen_exec.add(key)
            score = max_score(out, ex) if ex["Status"] == "SUCCESS" else None
            text = f"max score {score:.2f}" if score is not None else \
                textwrap.shorten(ex.get("FailedReason", ""), 100, placeholder=" …")  # cut between words
            flag = "  << fault" if fault[0] < ex["DataEndTime"].timestamp() <= fault[1] + 300 else ""
            say(f"   {iso_utc(clock.now())}  execution {iso_utc(ex['DataStartTime'].timestamp())} {ex['Status']}: "
                f"{text}{flag}")
        alarms = read_alarms(out / "alarms.jsonl")
        for alarm in alarms[seen_alarms:]:
            say(f"   {iso_utc(clock.now())}  ALARM {alarm['state'].upper()} {alarm['rule']} "
                f"score={alarm.get('score')} {alarm.get('message', '')}")  # whole: sensor names are not cut
        seen_alarms = len(alarms)


def max_score(out: Path, execution: dict) -> float | None:
    obj = execution.get("CustomerResultObject") or {}
    path = out / "store" / obj.get("Bucket", "") / obj.get("Key", "")
    try:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None
    scores = [x["anomaly_score"] for x in lines if "anomaly_score" in x]
    return max(scores) if scores else None


def read_alarms(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def summarize(out: Path, alarms: list[dict], fault, runner, elapsed: float) -> dict:
    raised = [a for a in alarms if a["state"] == "raised" and a["rule"] == "anomaly"]
    cleared = [a for a in alarms if a["state"] == "cleared" and a["rule"] == "anomaly"]
    before = [a for a in raised if (a.get("window_end") or a["ts"]) <= fault[0]]
    during = [a for a in raised if fault[0] < (a.get("window_end") or a["ts"]) <= fault[1] + 600]
    ok = bool(during) and not before
    lines = [
        f"windows uploaded: {runner.uploader.stats.uploaded} (late {runner.uploader.stats.windows_late})",
        f"results processed: {runner.results_poller.stats.results_processed if runner.results_poller else 0}",
        f"anomaly alarms raised: {len(raised)} (before the fault: {len(before)}, during it: {len(during)}), "
        f"cleared: {len(cleared)}",
        f"fault injected {iso_utc(fault[0])} … {iso_utc(fault[1])}",
        f"wall time {elapsed:.0f}s — {'OK: the alarm caught the fault' if ok else 'NOT OK'}",
    ]
    return {"ok": ok, "raised": raised, "cleared": cleared, "lines": lines, "elapsed_secs": elapsed}


if __name__ == "__main__":
    sys.exit(demo_main(sys.argv[1:]))
