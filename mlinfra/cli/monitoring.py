"""mlinfra monitor run, mlinfra monitors list | show: drift, quality and performance of
what endpoints serve. Exit codes tell a script whether a monitor is breached."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mlinfra.cli.console import echo, emit, print_table, session_for, when

if TYPE_CHECKING:
    from mlinfra.monitoring.records import Window
    from mlinfra.monitoring.verdicts import Verdict

# A monitor is breached (alert_after drifting windows in a row): scripts and schedulers
# tell it from an error (1) and a wrong command line (2).
EXIT_BREACHED = 3


def _value(value: float | None) -> str:
    return "-" if value is None or value != value or math.isinf(value) else f"{value:.4g}"


def _window_line(window: Window) -> str:
    from mlinfra.monitoring.monitor import describe
    from mlinfra.monitoring.records import DRIFT

    drifted = [describe(s) for s in window.signals if s.verdict == DRIFT]
    scored = [describe(s) for s in window.signals if s.signal == "performance"]
    said = [w for w in (*scored, window.reason) if w]
    what = "; ".join(drifted[:3]) if drifted else "; ".join(said[:2])
    return (f"{when(window.start)}  {window.status:<12} {window.rows:>7} rows  "
            f"{window.model:<12} {what}")


def _print_verdict(verdict: Verdict) -> None:
    style = "bold red" if verdict.breached else "yellow" if verdict.streak else "green"
    emit(verdict.line(), style)
    for window in verdict.computed:
        echo("  " + _window_line(window))


def cmd_monitor(args: argparse.Namespace) -> int:
    from mlinfra.monitoring import run

    session = session_for(args, "monitor run", write=True)
    try:
        verdicts = run(session, args.name,
                       captures_base=Path(args.captures) if args.captures else None)
    finally:
        session.close()
    if args.json:
        echo(json.dumps([v.to_json() for v in verdicts], indent=2, default=str))
    else:
        for verdict in verdicts:
            _print_verdict(verdict)
        if not verdicts:
            echo("The project declares no Monitor.")
    return EXIT_BREACHED if any(v.breached for v in verdicts) else 0


def cmd_monitors(args: argparse.Namespace) -> int:
    from mlinfra.monitoring import records, status
    from mlinfra.monitoring.verdicts import settings

    session = session_for(args, f"monitors {args.monitors_command}", write=False)
    try:
        config, store = session.config, session.store
        if args.monitors_command == "list":
            verdicts = [status(store, config, name) for name in sorted(config.of("Monitor"))]
            if args.json:
                echo(json.dumps([v.to_json() for v in verdicts], indent=2, default=str))
            else:
                rows = []
                for v in verdicts:
                    chosen = settings(config, v.monitor)
                    watches = (f"endpoint.{chosen.endpoint}" if chosen.endpoint
                               else f"{chosen.model} on data.{chosen.data}")
                    rows.append([v.monitor, watches, v.state,
                                 when(v.latest.start) if v.latest else "-", v.summary()])
                print_table(["MONITOR", "WATCHES", "STATE", "LAST WINDOW", "SUMMARY"], rows)
            return EXIT_BREACHED if any(v.breached for v in verdicts) else 0
        verdict = status(store, config, args.name)
        kept = records.windows(store, args.name, limit=args.windows)
    finally:
        session.close()
    if args.json:
        echo(json.dumps({**verdict.to_json(), "windows": [w.to_json() for w in kept]},
                        indent=2, default=str))
        return EXIT_BREACHED if verdict.breached else 0
    _print_verdict(verdict)
    if not kept:
        return 0
    echo("")
    echo("Windows (oldest first):")
    for window in kept:
        echo("  " + _window_line(window))
    echo("")
    echo("Each feature's trend over these windows (oldest first; * drifted):")
    trend: dict[tuple[str, str, str], list[str]] = {}
    for i, window in enumerate(kept):
        for s in window.signals:
            cells = trend.setdefault((s.signal, s.feature, s.metric), ["-"] * len(kept))
            cells[i] = _value(s.value) + ("*" if s.verdict == "drift" else "")
    rows = [[signal, feature, metric, " ".join(cells)]
            for (signal, feature, metric), cells in sorted(trend.items())]
    print_table(["SIGNAL", "FEATURE", "METRIC", "VALUES"], rows)
    return EXIT_BREACHED if verdict.breached else 0
