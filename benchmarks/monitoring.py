"""`mlinfra monitor run` beside Evidently's DataDriftPreset, on the same data, same run.

For each size (100k and 1M rows x 15 columns: 10 numeric, 5 categorical), a reference
and a production window are generated; the window shifts three columns (num_0 by 0.5
standard deviations, num_1 by 0.25, cat_0's shares) and leaves the others as they are.
mlinfra reads the window as an endpoint's Parquet captures (hour-partitioned, as the
server writes them) and judges it against the reference profile (computed once, as
registration does: its time is shown apart); Evidently (in a virtual environment of its
own, pandas<3) runs DataDriftPreset on the same two tables. Each side runs in its own
process, so its peak memory (ru_maxrss) is its own. Printed per size: seconds (wall,
and CPU: on a shared machine the CPU time is the steadier figure), peak MB, the ratios,
and each column's verdict on both sides.

Calm: `--resamples` (default 50) fresh samples of the reference's distribution with no
shift, at `--calm-rows` (default 100k), judged with mlinfra's defaults (false alarms per
100 column-windows), beside KS p < 0.05 without correction on the same windows; then a
window where one feature moved by 0.5 std: is it detected in that first window?

    .venv/bin/python benchmarks/monitoring.py [--rows 100000 1000000] [--resamples 50]

Goal: at 1M rows at least 100x faster than Evidently, under 500 MB, the same verdict
per column on the injected shifts; at most 1 false alarm per 100 column-windows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

NUMERIC, CATEGORICAL = 10, 5
CACHE = Path(os.environ.get("MLINFRA_CACHE_DIR", Path.home() / ".cache" / "mlinfra"))
EVIDENTLY_VENV = CACHE / "bench" / "evidently"
HOUR = 1_700_000_000 - 1_700_000_000 % 3600  # a past hour: its window is complete

GENERATE = """
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, sys
rows, seed, shift, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = np.random.default_rng(seed)
columns = {}
for i in range(NUMERIC):
    values = rng.normal(100 + 10 * i, 5 + i, rows)
    if shift == "shift" and i == 0:
        values += 0.5 * (5 + i)
    if shift == "shift" and i == 1:
        values += 0.25 * (5 + i)
    if shift == "one" and i == 0:
        values += 0.5 * (5 + i)
    columns[f"num_{i}"] = values
kinds = np.array([f"k{j}" for j in range(8)])
for i in range(CATEGORICAL):
    p = np.linspace(1, 2, 8); p = p / p.sum()
    if shift == "shift" and i == 0:
        p = p[::-1].copy()
    columns[f"cat_{i}"] = kinds[rng.choice(8, rows, p=p)]
pq.write_table(pa.table(columns), out)
""".replace("CATEGORICAL", str(CATEGORICAL)).replace("NUMERIC", str(NUMERIC))

# mlinfra, in two processes: first the reference profile (as registration computes it)
# and the window written as captures; then `monitoring.run` alone, whose time and peak
# memory are measured.
PREPARE = """
import json, sys, time
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
reference_path, current_path = sys.argv[1], sys.argv[2]
root, hour = Path(sys.argv[3]), int(sys.argv[4])
from mlinfra.monitoring import profile, records
from mlinfra.engine import open_session
started = time.perf_counter()
table = pq.read_table(reference_path)
columns = {n: (table.column(n).to_numpy() if n.startswith("num") else
               np.asarray(table.column(n).to_pylist(), dtype=object)) for n in table.column_names}
ref = profile.table(columns, "reference")
profiled = time.perf_counter() - started
del table, columns
current = pq.read_table(current_path)
n = current.num_rows
folder = root / "data" / "captures" / "api" / "requests" / "hour=2023-11-14T22"
folder.mkdir(parents=True, exist_ok=True)
extra = {"request_id": pa.array(np.char.add("r", np.arange(n).astype(str))),
         "row": pa.array(np.zeros(n, dtype=np.int32)),
         "time": pa.array(np.full(n, hour * 1000, dtype="datetime64[ms]"),
                          pa.timestamp("ms", tz="UTC")),
         "deployment": pa.array(np.full(n, "blue")), "model": pa.array(np.full(n, "m")),
         "version": pa.array(np.ones(n, dtype=np.int64))}
captured = pa.table({**extra, **{c: current.column(c) for c in current.column_names}})
meta = {b"mlinfra.features": ",".join(current.column_names).encode(), b"mlinfra.outputs": b""}
pq.write_table(captured.replace_schema_metadata(meta), folder / "part-bench.parquet")
session = open_session(root, None, "monitor run", write=True)
records.save_profile(session.store, "m", 1, "reference", ref)
session.close()
print(json.dumps({"profile_seconds": profiled}))
"""

MLINFRA = """
import json, os, resource, sys, time
from pathlib import Path
root = Path(sys.argv[1])
from mlinfra.engine import open_session
import mlinfra.monitoring as monitoring
# imported before the clock, as in a long-running agent (pyarrow imports pandas on its
# first conversion); the command's own wall time, imports included, is measured apart
import mlinfra.monitoring.verdicts, numpy, pandas, pyarrow.compute, pyarrow.parquet
session = open_session(root, None, "monitor run", write=True)
started, cpu = time.perf_counter(), time.process_time()
if os.environ.get("MLINFRA_BENCH_PROFILE"):
    import cProfile, pstats
    cProfile.run('verdict = monitoring.run(session, "watch")[0]', "/tmp/mon.prof")
    pstats.Stats("/tmp/mon.prof", stream=sys.stderr).sort_stats("cumulative").print_stats(30)
else:
    verdict = monitoring.run(session, "watch")[0]
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
window = verdict.computed[0]
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": window.rows,
                  "drift": {s.feature: s.verdict == "drift" for s in window.signals},
                  "values": {s.feature: s.value for s in window.signals}}))
"""

EVIDENTLY = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
reference = pd.read_parquet(sys.argv[1]); current = pd.read_parquet(sys.argv[2])
started, cpu = time.perf_counter(), time.process_time()
result = Report([DataDriftPreset()]).run(current, reference)
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
drift, values = {}, {}
for metric in result.dict()["metrics"]:
    config = metric.get("config") or {}
    if not str(config.get("type", "")).endswith("ValueDrift"):
        continue
    column, method = config["column"], str(config.get("method", ""))
    threshold, value = float(config.get("threshold", 0.1)), float(metric["value"])
    values[column] = value
    tested = "p_value" in method or "test" in method.lower()
    drift[column] = value < threshold if tested else value >= threshold
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "drift": drift, "values": values,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PROJECT = {
    "mlinfra.yaml": "kind: Project\nname: bench\n",
    "base.yaml": """\
        kind: Datastore
        name: main
        path: ./data
        ---
        kind: Model
        name: m
        from: {path: m.onnx}
        ---
        kind: Endpoint
        name: api
        auth: none
        deployments: [{name: blue, model: m}]
        traffic: {blue: 100}
        collect: {sample: 1.0}
        ---
        kind: Monitor
        name: watch
        endpoint: api
        window: 1h
        min_rows: 1
        """,
}


def evidently_python() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable,
                        str(EVIDENTLY_VENV)], check=True)
        subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(python),
                        "evidently>=0.7,<0.8", "pandas<3", "pyarrow"], check=True)
    return python


def run_json(command: list[str]) -> dict[str, object]:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def project(root: Path) -> Path:
    root.mkdir()
    for name, text in PROJECT.items():
        (root / name).write_text(textwrap.dedent(text))
    (root / "data").mkdir()
    (root / "m.onnx").write_bytes(b"not scored here")
    return root


def compare(rows: int, work: Path, evidently: Path | None) -> None:
    reference, current = work / f"ref-{rows}.parquet", work / f"cur-{rows}.parquet"
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), "1", "none", str(reference)],
                   check=True)
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), "2", "shift", str(current)],
                   check=True)
    root = project(work / f"project-{rows}")
    prepared = run_json([sys.executable, "-c", PREPARE, str(reference), str(current),
                         str(root), str(HOUR)])
    again = work / f"project-{rows}-cli"
    shutil.copytree(root, again)
    mine = {**run_json([sys.executable, "-c", MLINFRA, str(root)]), **prepared}
    started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([str(Path(sys.executable).parent / "mlinfra"), "monitor", "run",
                           "-C", str(again)], capture_output=True, text=True, check=False)
    command_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    command_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    assert done.returncode == 3, done.stdout + done.stderr  # breached: three columns moved
    print(f"\n{rows:,} rows x {NUMERIC + CATEGORICAL} columns")
    print(f"  mlinfra monitor run: {mine['seconds']:.3f} s ({mine['cpu_seconds']:.3f} s CPU), "
          f"peak {mine['peak_mb']:.0f} MB (the command, Python's start and imports "
          f"included: {command_s:.2f} s, {command_cpu:.2f} s CPU; the reference profile, "
          f"once at registration: {mine['profile_seconds']:.2f} s)")
    theirs: dict[str, object] = {}
    if evidently is not None:
        theirs = run_json([str(evidently), "-c", EVIDENTLY, str(reference), str(current)])
        ratio = float(theirs["seconds"]) / float(mine["seconds"])  # type: ignore[arg-type]
        cpu_ratio = float(theirs["cpu_seconds"]) / float(mine["cpu_seconds"])  # type: ignore[arg-type]
        print(f"  Evidently DataDriftPreset: {theirs['seconds']:.2f} s "
              f"({theirs['cpu_seconds']:.2f} s CPU), peak {theirs['peak_mb']:.0f} MB; "
              f"mlinfra is {ratio:.0f}x faster ({cpu_ratio:.0f}x in CPU time; "
              f"{float(theirs['seconds']) / command_s:.0f}x counting the command's start, "  # type: ignore[arg-type]
              f"{float(theirs['cpu_seconds']) / command_cpu:.0f}x in CPU time)")  # type: ignore[arg-type]
    drift_mine: dict[str, bool] = mine["drift"]  # type: ignore[assignment]
    drift_theirs: dict[str, bool] = theirs.get("drift", {})  # type: ignore[assignment]
    values_mine: dict[str, float] = mine["values"]  # type: ignore[assignment]
    values_theirs: dict[str, float] = theirs.get("values", {})  # type: ignore[assignment]
    agree = 0
    for column in sorted(drift_mine):
        other = drift_theirs.get(column)
        agree += other == drift_mine[column]
        print(f"    {column:<7} mlinfra {'DRIFT' if drift_mine[column] else 'ok':<5} "
              f"{values_mine[column]:.4f}   Evidently "
              f"{'-' if other is None else 'DRIFT' if other else 'ok':<5} "
              f"{values_theirs.get(column, float('nan')):.4f}")
    if drift_theirs:
        print(f"  same verdict on {agree} of {len(drift_mine)} columns")


CALM = """
import json, sys
import numpy as np, pyarrow.parquet as pq
from mlinfra.monitoring import metrics, profile
reference = pq.read_table(sys.argv[1]); folder = sys.argv[2]; resamples = int(sys.argv[3])
ref = {}
for name in reference.column_names:
    column = reference.column(name)
    ref[name] = (profile.numeric(column.to_numpy()) if name.startswith("num")
                 else profile.categorical(np.asarray(column.to_pylist(), dtype=object)))
alarms = ks_alarms = windows = 0
for i in range(resamples):
    window = pq.read_table(f"{folder}/calm-{i}.parquet")
    for name in window.column_names:
        values = window.column(name)
        if name.startswith("num"):
            current = values.to_numpy()
            found = metrics.measure("normalized_wasserstein", ref[name], current, 0.1)
            ks_alarms += metrics.measure("ks", ref[name], current, 0.05).drifted
        else:
            found = metrics.measure("jensen_shannon", ref[name],
                                    np.asarray(values.to_pylist(), dtype=object), 0.1)
        alarms += found.drifted
        windows += 1
moved = pq.read_table(f"{folder}/moved.parquet").column("num_0").to_numpy()
first = metrics.measure("normalized_wasserstein", ref["num_0"], moved, 0.1)
print(json.dumps({"alarms": alarms, "ks_alarms": ks_alarms, "windows": windows,
                  "numeric_windows": resamples * NUMERIC, "detected": first.drifted,
                  "value": first.value}))
""".replace("NUMERIC", str(NUMERIC))


def calm(rows: int, resamples: int, work: Path) -> None:
    reference = work / f"calm-ref-{rows}.parquet"
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), "10", "none", str(reference)],
                   check=True)
    for i in range(resamples):
        subprocess.run([sys.executable, "-c", GENERATE, str(rows), str(100 + i), "none",
                        str(work / f"calm-{i}.parquet")], check=True)
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), "99", "one",
                    str(work / "moved.parquet")], check=True)
    found = run_json([sys.executable, "-c", CALM, str(reference), str(work), str(resamples)])
    windows = int(found["windows"])  # type: ignore[call-overload]
    per_100 = 100 * int(found["alarms"]) / windows  # type: ignore[call-overload]
    ks = 100 * int(found["ks_alarms"]) / int(found["numeric_windows"])  # type: ignore[call-overload]
    print(f"\nCalm: {resamples} resamples of the reference, {rows:,} rows each, no shift: "
          f"{found['alarms']} false alarms in {windows} column-windows ({per_100:.2f} per "
          f"100) with mlinfra's defaults; KS p < 0.05 uncorrected: {ks:.2f} per 100 numeric "
          "column-windows")
    print(f"A 0.5 std shift of num_0 in its first window: "
          f"{'detected' if found['detected'] else 'NOT detected'} (W {found['value']:.3f} "
          "> 0.1)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--calm-rows", type=int, default=100_000)
    parser.add_argument("--no-evidently", action="store_true",
                        help="measure mlinfra alone (no virtual environment built)")
    args = parser.parse_args()
    evidently = None if args.no_evidently else evidently_python()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-monitoring-") as tmp:
        work = Path(tmp)
        for rows in args.rows:
            compare(rows, work, evidently)
        if args.resamples:
            calm(args.calm_rows, args.resamples, work)
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
