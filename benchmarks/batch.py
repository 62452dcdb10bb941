"""Batch scoring speed and memory: mlinfra's scorer beside what users run instead, on
the same model and the same files, in the same run.

The quickstart's model (its training script's pipeline: StandardScaler + logistic
regression, ONNX with feature names) scores a table of the quickstart's five feature
columns, as CSV and as Parquet, of --rows rows (default 1,000,000). Each contender runs
in its own process: --repeat times alone (default 3; the median is reported), for the
wall clock and the CPU time of its process tree, then once sampled every 50 ms for its
peak memory (the largest sum of the memory of the process and its children).

- `mlinfra batch invoke`: the command a user runs, on a project of the model
  (registered, its alias set) and a batch endpoint with the deployment's defaults
  (mini-batches of 10,000 rows, max_concurrency = the cores), output CSV with row_id;
- mlinfra in-process: the same scoring through `mlinfra.batch.scoring` from Python,
  without the command's project, state and registry;
- `mlflow models predict` (MLflow 3, --env-manager local, the same ONNX file saved with
  mlflow.onnx), from its own virtual environment under benchmarks/.work made with uv;
  it reads CSV or JSON only, so it has no Parquet figure;
- the plain loop a user would write: pandas read_csv (read_parquet) of the whole file,
  one onnxruntime session, to_csv, one process;
- the in-memory limit: the whole file read with pyarrow (all cores), one session with
  every core over the whole array, the output written with pyarrow. Its inference
  alone is also printed.

Then `mlinfra batch invoke`'s peak memory at --big rows (default 10,000,000), CSV and
Parquet, to show that it does not grow with the input; and `mlflow models predict`
once over the --big CSV (a minute), where the fixed start-up costs weigh a tenth as
much per row.

    .venv/bin/python benchmarks/batch.py [--rows 1000000] [--big 10000000] [--no-mlflow]

Goals: at least 10x MLflow's rows/s, at least the plain loop's, at least 70% of the
limit's, and a peak under 500 MB at 1M and 10M rows, counted both ways (PSS, and the
sum of RSS, which counts each shared library once per process). Two ratio columns:
`batch invoke`'s rows/s over each contender's, and the in-process scoring's. The
start-up rows (the first 1,000 rows) show the fixed cost: imports, the project and
state (the command), the fork server, a worker's start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "batch"
REPO = HERE.parent
FEATURES = ["amount", "hour", "merchant_risk", "distance_km", "card_age_days"]
# kept between runs (building it takes minutes): XDG_CACHE_HOME or ~/.cache
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlinfra-bench"
MLFLOW_VENV = CACHE / "mlflow-venv"


def train_model(path: Path) -> None:
    """The quickstart's model, trained as its train.py trains it."""
    import csv

    import numpy as np
    from onnx.helper import set_model_props
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with open(REPO / "examples" / "quickstart" / "data" / "transactions.csv") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in FEATURES] for r in rows], dtype=np.float32)
    y = np.array([int(r["is_fraud"]) for r in rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(x, y)
    onnx_model = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        options={LogisticRegression: {"zipmap": False}}, target_opset=17)
    set_model_props(onnx_model, {"feature_names": json.dumps(FEATURES)})
    path.write_bytes(onnx_model.SerializeToString())


def make_table(rows: int, csv_path: Path, parquet_path: Path) -> None:
    """Rows like the quickstart's transactions, written a million at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if csv_path.exists() and parquet_path.exists():
        return
    rng = np.random.default_rng(0)
    schema = pa.schema([(c, pa.float64()) for c in FEATURES])
    with pcsv.CSVWriter(str(csv_path), schema) as cw, pq.ParquetWriter(
            str(parquet_path), schema) as pw:
        done = 0
        while done < rows:
            n = min(1_000_000, rows - done)
            table = pa.table({
                "amount": np.round(rng.gamma(2.0, 60.0, n), 2),
                "hour": rng.integers(0, 24, n).astype(float),
                "merchant_risk": np.round(rng.random(n), 3),
                "distance_km": np.round(rng.gamma(1.5, 20.0, n), 1),
                "card_age_days": rng.integers(1, 4000, n).astype(float)}, schema=schema)
            cw.write_table(table)
            pw.write_table(table)
            done += n


INVOKE, IN_PROCESS = "mlinfra batch invoke", "mlinfra in-process"
REPEAT = 3  # timed runs of each contender: its median is reported (--repeat)


def measure(command: list[str], env: dict[str, str] | None = None,
            fresh: Callable[[], None] = lambda: None) -> tuple[float, float, float, float]:
    """(seconds, CPU seconds, peak PSS MB, peak RSS MB) of running `command`: the median
    of REPEAT runs alone, for its seconds and CPU seconds (user + system of every
    process of its tree, counted by the kernel as each exits), then one run sampled
    every 50 ms for its memory (`fresh` is called before each). Sampling memory reads
    each process's smaps: on two cores the sampler took CPU from a contender that uses
    both. PSS counts a page shared by several processes (a library each maps) once in
    all; the sum of RSS counts it in each."""
    timed = sorted(_timed(command, env, fresh) for _ in range(REPEAT))
    elapsed, cpu = timed[len(timed) // 2]
    fresh()
    sampled = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    peak = [0, 0]
    while sampled.poll() is None:
        pss = rss = 0
        try:
            root = psutil.Process(sampled.pid)
            for p in [root, *root.children(recursive=True)]:
                info = p.memory_full_info()
                pss, rss = pss + info.pss, rss + info.rss
        except psutil.Error:
            pass
        peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
        time.sleep(0.05)
    _reap_orphans()
    return elapsed, cpu, peak[0] / 2**20, peak[1] / 2**20


def _timed(command: list[str], env: dict[str, str] | None,
           fresh: Callable[[], None]) -> tuple[float, float]:
    fresh()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _become_subreaper() -> None:
    """Processes a contender leaves behind (a fork server, its workers) become this
    process's children when their parent exits, so their CPU time is counted too."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        print("note: not a subreaper: CPU s leaves out what outlives a contender's main "
              "process", file=sys.stderr)


def _reap_orphans(timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.01)


MLINFRA = """
import sys, os
from pathlib import Path
from mlinfra.batch.scoring import Output, Scorer, Scoring, Settings, cores
from mlinfra.data.versions import file_sha256
model, source, jobs, fmt = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
if __name__ == "__main__":
    scoring = Scoring("bench", "main", "fraud", 1, model, file_sha256(model), source,
                      fmt, str(source), file_sha256(source),
                      Settings(max_concurrency=cores()), Output(format="csv"))
    summary = Scorer(scoring, jobs).run()
    assert summary.scored_rows > 0, summary
"""

PLAIN = """
import sys
import numpy as np, onnxruntime as ort, pandas as pd
model, source, out = sys.argv[1], sys.argv[2], sys.argv[3]
frame = pd.read_parquet(source) if source.endswith(".parquet") else pd.read_csv(source)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = frame[FEATURES].to_numpy(dtype=np.float32)
label, probabilities = session.run(None, {"features": x})
result = pd.DataFrame({"label": label, "probabilities_0": probabilities[:, 0],
                       "probabilities_1": probabilities[:, 1]})
result.to_csv(out, index_label="row_id")
""".replace("FEATURES", repr(FEATURES))

LIMIT = """
import os, sys, time
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.csv as pcsv
import pyarrow.parquet as pq
model, source, out = sys.argv[1], sys.argv[2], sys.argv[3]
table = pq.read_table(source) if source.endswith(".parquet") else pcsv.read_csv(source)
options = ort.SessionOptions()
options.intra_op_num_threads = len(os.sched_getaffinity(0))
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.column_stack([table[c].to_numpy() for c in FEATURES]).astype(np.float32)
start = time.perf_counter()
label, probabilities = session.run(None, {"features": x})
print(f"inference {time.perf_counter() - start:.4f}", file=sys.stderr)
pcsv.write_csv(pa.table({"row_id": np.arange(len(x)), "label": label,
                         "probabilities_0": probabilities[:, 0],
                         "probabilities_1": probabilities[:, 1]}), out)
""".replace("FEATURES", repr(FEATURES))


MLINFRA_CLI = Path(sys.executable).parent / "mlinfra"
PROJECT = {
    "mlinfra.yaml": "kind: Project\nname: bench\n",
    "base.yaml": "kind: Workspace\nname: ws\ndefault_datastore: main\n---\nkind: Compute\n"
                 "name: cpu\ntype: local\n---\nkind: Datastore\nname: main\npath: ./data\n",
    "model.yaml": "kind: Model\nname: fraud\nfrom: {path: fraud.onnx}\n",
    "batch.yaml": "kind: BatchEndpoint\nname: fraud-batch\ncompute: cpu\ndeployments:\n"
                  "  - {name: main, model: fraud@champion, max_concurrency: CORES}\n"
                  "default: main\noutput: {format: csv}\n"}


def project_ready(model: Path) -> Path:
    """A project of the model, registered as fraud:1 with fraud@champion, and a batch
    endpoint scoring with it: what `mlinfra batch invoke` needs."""
    import shutil

    root = WORK / "project"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    for name, text in PROJECT.items():
        (root / name).write_text(text.replace("CORES", str(len(os.sched_getaffinity(0)))))
    shutil.copyfile(model, root / "fraud.onnx")
    for command in (["apply", "--auto-approve", "--target", "model.fraud"],
                    ["models", "alias", "fraud@champion", "1"], ["apply", "--auto-approve"]):
        subprocess.run([str(MLINFRA_CLI), *command, "-C", str(root)], check=True,
                       capture_output=True)
    return root


def mlflow_ready(model: Path) -> Path | None:
    """MLflow in its own virtual environment, and the model saved by mlflow.onnx."""
    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        MLFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["uv", "venv", "-q", "--python", "3.11", str(MLFLOW_VENV)],
                       check=True)
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(python),
                        "mlflow-skinny>=3", "onnx", "onnxruntime", "pandas", "pyarrow"],
                       check=True)
    # each contender reads its modules' bytecode as an installed package would, even
    # where PYTHONDONTWRITEBYTECODE keeps Python from writing it
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", str(
        next((MLFLOW_VENV / "lib").glob("python3*/site-packages")))], check=False,
        capture_output=True)
    saved = WORK / "mlflow-model"
    if not saved.exists():
        subprocess.run([str(python), "-c", SAVE_FOR_MLFLOW, str(model), str(saved)],
                       check=True, capture_output=True)
    return saved


# NOTE: MLflow's ONNX flavor answers a DataFrame with one column per output and fails
# on a 2-D one ("All arrays must be of the same length"): it is given the same model
# with the probability of class 1 as a 1-D output instead of the [N, 2] one (less to
# write than the others write).
SAVE_FOR_MLFLOW = """
import sys, onnx, mlflow.onnx
from onnx import TensorProto, helper
model = onnx.load(sys.argv[1])
graph = model.graph
graph.initializer.append(helper.make_tensor("one", TensorProto.INT64, [], [1]))
graph.node.append(helper.make_node("Gather", ["probabilities", "one"], ["probability_1"],
                                   axis=1))
outputs = [o for o in graph.output if o.name != "probabilities"]
del graph.output[:]
graph.output.extend(outputs + [helper.make_tensor_value_info(
    "probability_1", TensorProto.FLOAT, [None])])
onnx.checker.check_model(model)
mlflow.onnx.save_model(model, sys.argv[2])
"""


def mlflow_predict(saved: Path, source: Path) -> tuple[float, float, float, float]:
    mlflow = MLFLOW_VENV / "bin" / "mlflow"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"file://{WORK / 'mlruns'}"}
    return measure([str(mlflow), "models", "predict", "-m", str(saved), "-i", str(source),
                    "-t", "csv", "-o", str(WORK / "mlflow-out.json"), "--env-manager",
                    "local"], env)


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000,
                        help="rows of the memory check (0: skip it)")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help="timed runs of each contender; the median is reported")
    args = parser.parse_args()
    REPEAT = max(1, args.repeat)
    _become_subreaper()
    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "fraud.onnx"
    if not model.exists():
        train_model(model)
    python = sys.executable
    results: list[tuple[str, str, int, float, float, float, float]] = []

    def mlinfra_run(rows: int, fmt: str, source: Path) -> tuple[float, float, float, float]:
        jobs = WORK / f"jobs-{rows}-{fmt}"

        def fresh() -> None:  # a job already scored is not scored again
            subprocess.run(["rm", "-rf", str(jobs)], check=True)

        found = measure([python, "-c", MLINFRA, str(model), str(source), str(jobs), fmt],
                        fresh=fresh)
        fresh()
        return found

    project = project_ready(model)

    def invoke(source: Path) -> tuple[float, float, float, float]:
        def fresh() -> None:  # a job already scored is not scored again
            for jobs in project.glob(".mlinfra/*/workspaces/*/batch/jobs"):
                subprocess.run(["rm", "-rf", str(jobs)], check=True)

        found = measure([str(MLINFRA_CLI), "batch", "invoke", "fraud-batch", "-C",
                         str(project), "--input", str(source)], fresh=fresh)
        fresh()
        return found

    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(REPO / "mlinfra")],
                   check=False, capture_output=True)
    saved = None if args.no_mlflow else mlflow_ready(model)
    csv_path, parquet_path = WORK / f"rows-{args.rows}.csv", WORK / f"rows-{args.rows}.parquet"
    make_table(args.rows, csv_path, parquet_path)
    out = WORK / "out.csv"
    for fmt, source in (("csv", csv_path), ("parquet", parquet_path)):
        results.append((INVOKE, fmt, args.rows, *invoke(source)))
        results.append((IN_PROCESS, fmt, args.rows, *mlinfra_run(args.rows, fmt, source)))
        results.append(("plain loop (pandas + onnxruntime)", fmt, args.rows,
                        *measure([python, "-c", PLAIN, str(model), str(source), str(out)])))
        results.append(("limit (in memory, all cores)", fmt, args.rows,
                        *measure([python, "-c", LIMIT, str(model), str(source), str(out)])))
        if saved is not None and fmt == "csv":
            results.append(("mlflow models predict", fmt, args.rows,
                            *mlflow_predict(saved, source)))
    # the fixed cost: the same command over the first 1,000 rows (one mini-batch)
    head = WORK / "rows-1000.csv"
    with open(csv_path) as full, open(head, "w") as part:
        part.writelines(line for _, line in zip(range(1001), full, strict=False))
    results.append(("batch invoke start-up (1,000 rows)", "csv", 1000, *invoke(head)))
    results.append(("in-process start-up (1,000 rows)", "csv", 1000,
                    *mlinfra_run(1000, "csv", head)))
    inference = subprocess.run([python, "-c", LIMIT, str(model), str(parquet_path),
                                str(out)], capture_output=True, text=True, check=True)
    print(f"\nbatch scoring, {args.rows:,} rows, {os.cpu_count()} cores\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(f"{'contender':36} {'input':8} {'seconds':>8} {'rows/s':>12} {'CPU s':>7} "
          f"{'PSS MB':>7} {'RSS MB':>7} {'invoke / it':>12} {'in-proc / it':>12}")
    rates = {(r[0], r[1]): r[2] / r[3] for r in results}
    for name, fmt, rows, seconds, cpu, pss, rss in results:
        rate = rows / seconds
        ratios = "".join(f" {rates[(ours, fmt)] / rate:12.2f}" if rows == args.rows else
                         f" {'':12}" for ours in (INVOKE, IN_PROCESS))
        print(f"{name:36} {fmt:8} {seconds:8.2f} {rate:12,.0f} {cpu:7.2f} {pss:7.0f} "
              f"{rss:7.0f}{ratios}")
    print(f"(the limit's {inference.stderr.strip()} s, on the whole array)")
    if args.big:
        big_csv, big_parquet = (WORK / f"rows-{args.big}.csv",
                                WORK / f"rows-{args.big}.parquet")
        make_table(args.big, big_csv, big_parquet)
        print("\n`mlinfra batch invoke`'s peak memory by input size (max_concurrency = "
              "cores)\n")
        measured = {(r[1], r[2]): r[3:] for r in results if r[0] == INVOKE}
        for fmt, big in (("csv", big_csv), ("parquet", big_parquet)):
            measured[(fmt, args.big)] = invoke(big)
            for rows in (args.rows, args.big):  # the 1M rows: the table's runs above
                seconds, cpu, pss, rss = measured[(fmt, rows)]
                print(f"  {fmt:8} {rows:>12,} rows  {seconds:7.2f} s ({cpu:.1f} CPU s)  "
                      f"{rows / seconds:12,.0f} rows/s  peak PSS {pss:5.0f} MB, "
                      f"RSS {rss:5.0f} MB")
        if saved is not None:
            # where the fixed costs weigh less: one timed run (it takes a minute)
            REPEAT = 1
            seconds, cpu, pss, rss = mlflow_predict(saved, big_csv)
            ours = measured[("csv", args.big)][0]
            print(f"\n`mlflow models predict` over the {args.big:,}-row CSV: {seconds:.2f} s "
                  f"({cpu:.1f} CPU s), {args.big / seconds:,.0f} rows/s, peak PSS {pss:.0f} "
                  f"MB, RSS {rss:.0f} MB; `mlinfra batch invoke` / it: {seconds / ours:.2f}")


if __name__ == "__main__":
    main()
