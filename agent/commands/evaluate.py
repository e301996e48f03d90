"""``l4e-agent lookout evaluate FILE_OR_DIR...``: judge the detector on labelled runs (``agent.detection``).

For each run: fit on its first ``--train-rows`` rows (or the rows inside ``--train-range``), score every later
row with the code CreateModel and inference use, then print the pooled point-wise F1, FAR and MAR and the event
figures (``--json`` for machines). ``--predictions OUT.csv`` writes one line per scored row
(``file,timestamp,anomaly_score,prediction``) so anyone can recompute the figures.

Exit codes: 0 figures printed; 65 (EX_DATAERR) a run that cannot be evaluated (no such file, an empty folder,
no label column, a non-numeric column, too few rows): one message naming the file, nothing else printed;
2 usage (as every l4e-agent command).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from agent.detection.detector import DetectorParams
from agent.detection.evaluate import RunResult, TrainSpec, evaluate_run, pooled
from agent.detection.runs import RunError, RunFormat, load_run, run_files

EX_DATAERR = 65


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l4e-agent lookout evaluate",
        description="Fit the local service's detector on the first rows of each labelled run, score the rest, "
                    "and print pooled point-wise F1, FAR, MAR and event figures.",
        epilog="SKAB's files as they are: --format skab (= --sep ';' --label anomaly --drop changepoint "
               "--time-column datetime --train-rows 400).")
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR",
                        help="run files (CSV), or folders whose *.csv files are runs")
    parser.add_argument("--format", choices=["skab"], help="a preset for a known layout (options given "
                        "explicitly override it)")
    parser.add_argument("--sep", help="column separator (default ',')")
    parser.add_argument("--label", help="the 0/1 label column (default 'label')")
    parser.add_argument("--no-label", action="store_true",
                        help="the runs have no label column: every row is normal (an anomaly-free run)")
    parser.add_argument("--drop", action="append", default=None, metavar="COLUMN",
                        help="a column that is neither a sensor nor the label (repeatable)")
    parser.add_argument("--time-column", help="the timestamp column (default: the first column)")
    parser.add_argument("--train-rows", type=int, help="fit on each run's first N rows, score the rest")
    parser.add_argument("--train-range", nargs=2, metavar=("START", "END"),
                        help="fit on the rows with START ≤ timestamp ≤ END (ISO 8601), score the rows after END")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--predictions", type=Path, metavar="OUT.csv",
                        help="write file,timestamp,anomaly_score,prediction for every scored row")
    return parser


def _format(args) -> RunFormat:
    fmt = RunFormat.skab() if args.format == "skab" else RunFormat()
    if args.sep is not None:
        fmt = replace(fmt, sep=args.sep)
    if args.label is not None:
        fmt = replace(fmt, label=args.label)
    if args.no_label:
        fmt = replace(fmt, label=None)
    if args.drop is not None:
        fmt = replace(fmt, drop=tuple(args.drop))
    if args.time_column is not None:
        fmt = replace(fmt, time_column=args.time_column)
    return fmt


def _train(args, parser: argparse.ArgumentParser) -> TrainSpec:
    if args.train_rows is not None and args.train_range is not None:
        parser.error("--train-rows and --train-range: give one")
    if args.train_range is not None:
        import pandas as pd

        try:
            start, end = (pd.Timestamp(t) for t in args.train_range)
        except ValueError as exc:
            parser.error(f"--train-range: {exc}")
        start, end = (t.tz_localize("UTC") if t.tzinfo is None else t for t in (start, end))
        return TrainSpec(start=start.timestamp(), end=end.timestamp())
    rows = args.train_rows if args.train_rows is not None else (400 if args.format == "skab" else None)
    if rows is None:
        parser.error("give --train-rows N or --train-range START END (or --format skab)")
    if rows < 1:
        parser.error(f"--train-rows {rows}: must be ≥ 1")
    return TrainSpec(rows=rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_text(results: list[RunResult], params: DetectorParams) -> str:
    """The human report: one line per run, the pooled line, the event figures."""
    lines = [f"{'run':<32} {'rows':>6} {'scored':>6} {'F1':>6} {'FAR %':>6} {'MAR %':>6} {'events':>7} "
             f"{'delay s':>8} {'false alarms':>12}"]
    for r in results:
        f = r.counts.figures()
        lines.append(f"{r.run.name[-32:]:<32} {len(r.run.values):>6} {len(r.scores):>6} {_num(f['f1']):>6} "
                     f"{_pct(f['far']):>6} {_pct(f['mar']):>6} {f['events_detected']:>3}/{f['events']:<3} "
                     f"{_num(f['median_delay_secs'], 0):>8} {f['false_alarm_events']:>12}")
    p = pooled(results)
    lines.append(f"{'pooled (' + str(len(results)) + ' runs)':<32} {sum(len(r.run.values) for r in results):>6} "
                 f"{sum(len(r.scores) for r in results):>6} {_num(p['f1']):>6} {_pct(p['far']):>6} "
                 f"{_pct(p['mar']):>6} {p['events_detected']:>3}/{p['events']:<3} "
                 f"{_num(p['median_delay_secs'], 0):>8} {p['false_alarm_events']:>12}")
    lines.append("")
    lines.append(f"F1 {_num(p['f1'])}  FAR {_pct(p['far'])} %  MAR {_pct(p['mar'])} %  "
                 f"(TP {p['tp']}, FP {p['fp']}, FN {p['fn']}, TN {p['tn']})")
    lines.append(f"labelled events detected {p['events_detected']}/{p['events']}, median detection delay "
                 f"{_num(p['median_delay_secs'], 0)} s, false alarm events {p['false_alarm_events']} "
                 f"({_num(p['false_alarm_events_per_day'], 1)} per day of normal data, "
                 f"{p['normal_days'] * 24:.2f} h scored)")
    lines.append("detector: " + ", ".join(f"{k}={v:g}" for k, v in asdict(params).items()))
    return "\n".join(lines)


def write_predictions(path: Path, results: list[RunResult]) -> None:
    import pandas as pd

    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["file", "timestamp", "anomaly_score", "prediction"])
        for r in results:
            stamps = pd.to_datetime(r.run.times[r.first_scored:], unit="s").strftime("%Y-%m-%dT%H:%M:%S.%f")
            for stamp, score, pred in zip(stamps, r.scores, r.predictions, strict=True):
                out.writerow([r.run.name, stamp, f"{score:.5f}", int(pred)])


def _name(path: Path, files: list[Path]) -> str:
    """A run's name: its path below the folder all runs share (``valve1/3.csv``), so reports stay short."""
    parents = {f.resolve().parent for f in files}
    common = Path(os.path.commonpath([str(p) for p in parents]))
    base = common.parent if len(parents) == 1 else common
    return str(path.resolve().relative_to(base))


def evaluate_main(argv: list[str]) -> int:
    """Run the command; returns the exit code (argparse exits 2 itself on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = _format(args)
    train = _train(args, parser)
    params = DetectorParams()
    try:
        files = run_files(args.paths)
        results = [evaluate_run(load_run(f, fmt, _name(f, files)), train, params) for f in files]
    except RunError as exc:  # nothing printed before: one message, naming the file
        print(f"l4e-agent lookout evaluate: {exc}", file=sys.stderr)
        return EX_DATAERR
    if args.predictions:
        write_predictions(args.predictions, results)
    if args.json:
        doc = {"detector": asdict(params), "pooled": pooled(results),
               "runs": [{"file": r.run.name, "rows": len(r.run.values), "scored": len(r.scores),
                         "rate_secs": r.run.rate, **r.counts.figures()} for r in results]}
        print(json.dumps(doc, indent=2))
    else:
        print(report_text(results, params))
    return 0
