"""The scorer: a job's mini-batches through worker processes, its output in input order.

The input is read lazily: a mini-batch is cut only when a worker is free for it, so at
most one per worker is in memory. Scored shards are appended to the output in index
order as soon as they are contiguous, and the output is put in place whole at the end.
A mini-batch whose model call fails (or outlives `timeout`, or whose worker dies) is
tried again up to `retries` times, then its rows are counted as failed and listed in
errors.jsonl; past `error_threshold` failed rows (-1: any number) the job stops,
keeping its shards and errors, and fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlinfra.batch.shards import JobFolder, read_json, write_json
from mlinfra.batch.source import fed_columns, header, mini_batches, numeric_types
from mlinfra.batch.worker import ROW_ID, output_table
from mlinfra.errors import MlinfraError

OUTPUT_FORMATS = ("csv", "parquet", "jsonl")
ACTIONS = ("append_row", "summary_only")


class BatchFailed(MlinfraError):
    """The job stopped: more failed rows than its error threshold allows."""


@dataclass(frozen=True)
class Settings:
    """A batch deployment's knobs, with Azure ML's names and defaults."""

    mini_batch_size: int = 10_000
    max_concurrency: int = 2
    error_threshold: int = 0
    retries: int = 3
    timeout_s: float = 600.0
    output_action: str = "append_row"
    output_file_name: str = ""

    @classmethod
    def of(cls, deployment: dict[str, Any], duration: Callable[[Any], float | None]
           ) -> Settings:
        return cls(
            mini_batch_size=int(deployment.get("mini_batch_size", 10_000)),
            max_concurrency=int(deployment.get("max_concurrency", 2)),
            error_threshold=int(deployment.get("error_threshold", 0)),
            retries=int(deployment.get("retries", 3)),
            timeout_s=duration(deployment.get("timeout", "10m")) or 600.0,
            output_action=str(deployment.get("output_action", "append_row")),
            output_file_name=str(deployment.get("output_file_name", "")))


@dataclass(frozen=True)
class Output:
    """What the output holds: `columns` among row_id, the model's outputs and the kept
    input columns (default: row_id, the kept columns, then every output)."""

    format: str = "csv"
    columns: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Output:
        return cls(format=str(spec.get("format", "csv")),
                   columns=tuple(spec.get("columns") or ()),
                   keep=tuple(spec.get("keep_input_columns") or ()))


@dataclass(frozen=True)
class Scoring:
    """One scoring asked for: a model version over an input. Its identity (`job_id`)
    is what decides its output: the same one is never scored twice."""

    endpoint: str
    deployment: str
    model: str
    version: int
    model_path: Path
    model_sha256: str
    input_path: Path
    input_format: str
    input_label: str  # data:3, or the file's path
    input_sha256: str
    settings: Settings = field(default_factory=Settings)
    output: Output = field(default_factory=Output)

    @property
    def job_id(self) -> str:
        identity = {"model": self.model_sha256, "input": self.input_sha256,
                    "format": self.input_format, "mini_batch_size":
                    self.settings.mini_batch_size, "action": self.settings.output_action,
                    "output": asdict(self.output)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return self.settings.output_file_name or f"predictions.{self.output.format}"


@dataclass
class Progress:
    rows: int = 0
    total_rows: int | None = None
    mini_batches: int = 0
    failed_mini_batches: int = 0
    failed_rows: int = 0
    retries: int = 0
    resumed: int = 0  # mini-batches already scored by an earlier, interrupted run
    elapsed_s: float = 0.0


@dataclass
class Summary:
    job: str
    status: str
    endpoint: str
    deployment: str
    model: str
    input: str
    rows: int
    scored_rows: int
    failed_rows: int
    mini_batches: int
    failed_mini_batches: int
    retries: int
    resumed_mini_batches: int
    elapsed_s: float
    rows_per_s: float
    output: str | None
    errors: str | None
    folder: str
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Task:
    __slots__ = ("attempts", "batch", "index", "start")

    def __init__(self, index: int, start: int, batch: pa.RecordBatch) -> None:
        self.index, self.start, self.batch, self.attempts = index, start, batch, 0


class _Writer:
    """The output, shard after shard in index order, to a temporary file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: Any = None
        self._file: Any = None
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            self._open()
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        if self.fmt == "jsonl":
            import orjson

            for row in table.to_pylist():
                self._file.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        else:
            self._writer.write_table(table)

    def _open(self) -> None:
        assert self.schema is not None
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(str(self.tmp), self.schema)
        elif self.fmt == "csv":
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(str(self.tmp), self.schema,
                                          write_options=pcsv.WriteOptions(
                                              quoting_style="needed"))
        else:
            self._file = open(self.tmp, "wb")  # noqa: SIM115 (closed in finish)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        for handle in (self._writer, self._file):
            if handle is not None:
                handle.close()
        self.tmp.unlink(missing_ok=True)


def _nowhere() -> Any:
    import io

    return io.StringIO()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


class Scorer:
    """Runs one Scoring in its job folder under `jobs_root`."""

    def __init__(self, scoring: Scoring, jobs_root: Path,
                 on_progress: Callable[[Progress], None] = lambda _: None) -> None:
        self.scoring = scoring
        self.folder = JobFolder(jobs_root / scoring.job_id)
        self.on_progress = on_progress
        self.progress = Progress()

    # --- what the job reads and writes ----------------------------------------------

    def _prepare(self) -> tuple[dict[str, list[str]], dict[str, pa.DataType], list[str],
                                pa.Schema]:
        """Columns fed to each input, kept columns, output columns and the output's
        schema: every column problem is found before any row is scored."""
        from mlinfra.serving.model import LoadedModel, ModelLoadError

        s = self.scoring
        try:
            model = LoadedModel.load(s.model, s.version, s.model_path, s.model_sha256)
        except ModelLoadError as err:
            raise MlinfraError(f"{s.model}:{s.version}: {err}") from None
        fed = fed_columns(s.input_path, header(s.input_path, s.input_format), model.inputs,
                          model.features, s.output.keep)
        probe = {i.name: np.zeros([1 if d is None else d for d in i.shape], i.dtype)
                 for i in model.inputs}
        outputs = model.run(probe)
        for name, array in zip(model.output_names, outputs, strict=True):
            if array.ndim > 2 or array.ndim == 0:
                raise MlinfraError(f"{s.model}:{s.version}: output {name} has shape "
                                   f"{list(array.shape)}: batch scoring writes outputs of "
                                   "one number or one row of numbers per input row")
        known = [ROW_ID, *model.output_names, *s.output.keep]
        unknown = [c for c in s.output.columns if c not in known]
        if unknown:
            raise MlinfraError(f"output columns {unknown} are neither row_id, an output of "
                               f"{s.model}:{s.version} ({model.output_names}) nor a kept "
                               "input column")
        columns = list(s.output.columns) or [ROW_ID, *s.output.keep, *model.output_names]
        kept_types = {c: pa.string() for c in s.output.keep} if s.input_format == "csv" \
            else {}
        kept = pa.RecordBatch.from_arrays(
            [pa.array([None], type=kept_types.get(c, pa.null())) for c in s.output.keep],
            names=list(s.output.keep)) if s.output.keep else None
        empty = output_table(0, kept, model.output_names, [o[:1] for o in outputs],
                             model.labels, columns).slice(0, 0)
        numeric = numeric_types(fed, model.inputs)
        del model
        return fed, numeric, columns, empty.schema

    def _total_rows(self) -> int | None:
        if self.scoring.input_format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.scoring.input_path).metadata.num_rows)
        return None

    def _most_mini_batches(self, columns: int) -> int:
        """At most how many mini-batches the input holds: Parquet says its rows; a CSV
        or JSON line holds at least two bytes per column read (a digit and a comma, a
        newline, a brace). NOTE: a worker fewer when the input fills fewer mini-batches
        than max_concurrency: each worker costs a model load and 0.1-0.2 CPU s to start
        (benchmarks/batch.py prints the CPU s; a 1,000-row CSV runs one worker)."""
        s = self.scoring
        rows = self.progress.total_rows
        if rows is None:
            rows = s.input_path.stat().st_size // (2 * max(1, columns)) + 1
        return max(1, -(-rows // max(1, s.settings.mini_batch_size)))

    # --- running ---------------------------------------------------------------------

    def run(self) -> Summary:
        """Score (or resume) the job; a job already completed is not scored again."""
        s, folder = self.scoring, self.folder
        output_path = folder.root / s.file_name
        with folder.locked():
            manifest = read_json(folder.manifest)
            if manifest.get("status") == "completed" and (
                    s.settings.output_action == "summary_only" or output_path.exists()):
                done = read_json(folder.summary)
                if done:
                    return Summary(**{**done, "message": "already scored: not scored "
                                      "again"})
            context = _workers_context()
            fed, numeric, columns, schema = self._prepare()
            folder.create()
            scored = folder.scored()
            folder.forget_failures()
            write_json(folder.manifest, {
                "job": s.job_id, "status": "running", "pid": os.getpid(),
                "started_at": time.time(), "endpoint": s.endpoint,
                "deployment": s.deployment, "model": f"{s.model}:{s.version}",
                "model_sha256": s.model_sha256, "input": s.input_label,
                "input_path": str(s.input_path), "input_format": s.input_format,
                "input_sha256": s.input_sha256, "settings": asdict(s.settings),
                "output": asdict(s.output), "resumed": len(scored)})
            self.progress = Progress(total_rows=self._total_rows(), resumed=len(scored))
            started = time.monotonic()
            writer = None if s.settings.output_action == "summary_only" else _Writer(
                output_path, s.output.format)
            try:
                failures = self._score(context, fed, numeric, columns, scored, writer,
                                       started)
            except BaseException:
                if writer is not None:
                    writer.discard()
                write_json(folder.manifest, {**read_json(folder.manifest),
                                             "status": "interrupted"})
                raise
            return self._finish(failures, writer, schema, started)

    def _finish(self, failures: list[dict[str, Any]], writer: _Writer | None,
                schema: pa.Schema, started: float) -> Summary:
        s, folder, p = self.scoring, self.folder, self.progress
        folder.errors.unlink(missing_ok=True)
        with open(folder.errors, "w") if failures else _nowhere() as errors:
            for failure in failures:
                for row in range(failure["start"], failure["start"] + failure["rows"]):
                    errors.write(json.dumps({"row_id": row, "mini_batch": failure["index"],
                                             "attempts": failure["attempts"],
                                             "error": failure["error"]}) + "\n")
        threshold = s.settings.error_threshold
        over = threshold != -1 and p.failed_rows > threshold
        if writer is not None and not over:
            if writer.schema is None:
                writer.write(schema.empty_table())
            writer.finish()
        elif writer is not None:
            writer.discard()
        elapsed = time.monotonic() - started
        status = "failed" if over else "completed"
        message = (f"{p.failed_rows} rows failed, more than error_threshold {threshold}: "
                   "the job stopped; its scored mini-batches and errors are kept, and "
                   "running it again resumes it" if over else "")
        summary = Summary(
            job=s.job_id, status=status, endpoint=s.endpoint, deployment=s.deployment,
            model=f"{s.model}:{s.version}", input=s.input_label,
            rows=p.rows + p.failed_rows, scored_rows=p.rows, failed_rows=p.failed_rows,
            mini_batches=p.mini_batches + p.failed_mini_batches,
            failed_mini_batches=p.failed_mini_batches, retries=p.retries,
            resumed_mini_batches=p.resumed, elapsed_s=round(elapsed, 3),
            rows_per_s=round(p.rows / elapsed, 1) if elapsed > 0 else 0.0,
            output=str(writer.path) if writer is not None and not over else None,
            errors=str(folder.errors) if failures else None, folder=str(folder.root),
            message=message)
        write_json(folder.summary, summary.to_json())
        write_json(folder.manifest, {**read_json(folder.manifest), "status": status,
                                     "finished_at": time.time(), "rows": summary.rows,
                                     "failed_rows": p.failed_rows})
        if over:
            raise BatchFailed(f"batch job {s.job_id}: {message}\n" + render(summary))
        if folder.shards.is_dir():
            folder.remove_shards()
        return summary

    def _score(self, context: Any, fed: dict[str, list[str]],
               numeric: dict[str, pa.DataType],
               columns: list[str],
               scored: set[int], writer: _Writer | None, started: float
               ) -> list[dict[str, Any]]:
        s, folder, p = self.scoring, self.folder, self.progress
        settings = s.settings
        keep = list(s.output.keep)
        batches = mini_batches(s.input_path, s.input_format, settings.mini_batch_size,
                               numeric, keep)
        concurrency = max(1, min(settings.max_concurrency,
                                 self._most_mini_batches(len(numeric)) - len(scored)))
        spec = {"parent": os.getpid(), "folder": str(folder.root), "model": s.model,
                "version": s.version, "path": str(s.model_path), "sha256": s.model_sha256,
                "threads": max(1, cores() // concurrency), "fed": fed, "keep": keep,
                "columns": columns, "timeout_s": settings.timeout_s}
        results: Any = context.Queue()
        pool = _Pool(context, results, spec, concurrency)
        retry: deque[_Task] = deque()
        failures: list[dict[str, Any]] = []
        resolved: dict[int, bool] = {}  # index -> scored (True) or failed (False)
        next_out = 0
        exhausted = False
        source = _numbered(batches, settings.mini_batch_size)
        threshold = settings.error_threshold

        def advance() -> None:
            nonlocal next_out
            while next_out in resolved:
                if resolved.pop(next_out) and writer is not None:
                    writer.write(folder.read_shard(next_out))
                next_out += 1

        try:
            while True:
                over = threshold != -1 and p.failed_rows > threshold
                while not over and pool.idle():
                    task = retry.popleft() if retry else None
                    while task is None and not exhausted:
                        found = next(source, None)
                        if found is None:
                            exhausted = True
                        elif found.index in scored:  # resumed: scored before the kill
                            p.rows += found.batch.num_rows
                            p.mini_batches += 1
                            resolved[found.index] = True
                        else:
                            task = found
                    if task is None:
                        break
                    pool.send(task)
                advance()
                self._report(started)
                if not pool.busy() and (exhausted or over) and not retry:
                    break
                for kind, task, message in pool.collect(settings.timeout_s):
                    if kind == "done":
                        p.rows += task.batch.num_rows
                        p.mini_batches += 1
                        resolved[task.index] = True
                    elif task.attempts <= settings.retries:
                        p.retries += 1
                        retry.append(task)
                    else:
                        p.failed_mini_batches += 1
                        p.failed_rows += task.batch.num_rows
                        failure = {"index": task.index, "start": task.start,
                                   "rows": task.batch.num_rows, "attempts": task.attempts,
                                   "error": message}
                        write_json(folder.failed_record(task.index), failure)
                        failures.append(failure)
                        resolved[task.index] = False
            advance()
            self._report(started)
        finally:
            pool.close()
        return failures

    def _report(self, started: float) -> None:
        self.progress.elapsed_s = time.monotonic() - started
        self.on_progress(self.progress)


def _workers_context() -> Any:
    """The fork server the workers are forked from, started now.

    NOTE: a fork server started clean (never a fork of this process, whose pyarrow and
    apply threads a fork would copy mid-flight) imports the worker's modules once; each
    worker is a fork of it, sharing those pages. It is started before the scorer loads
    the model to check the columns, so its imports (0.6 s the scorer used to wait for,
    blocked in its first Process.start) run beside that check on another core
    (benchmarks/batch.py, the mlinfra rows: seconds)."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlinfra.batch.worker"])
    forkserver.ensure_running()
    return context


def _numbered(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[_Task]:
    for index, batch in enumerate(batches):
        yield _Task(index, index * size, batch)


def _compact(batch: pa.RecordBatch) -> pa.Buffer:
    """The batch in Arrow's IPC stream format: only its own rows. Pickling a batch
    sliced from a larger block would send the whole block (seven times the bytes of a
    10,000-row slice of a CSV block, measured)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


class _Pool:
    """The worker processes, each fed one task at a time through its own queue, so
    the scorer knows which task each holds (for timeouts and deaths)."""

    def __init__(self, context: Any, results: Any, spec: dict[str, Any], size: int) -> None:
        from mlinfra.batch.worker import main

        self.context, self.results, self.spec, self.main = context, results, spec, main
        self.workers: dict[int, tuple[Any, Any]] = {}  # pid -> (process, queue)
        self.holding: dict[int, tuple[_Task, float]] = {}  # pid -> task, since
        self.ready: set[int] = set()
        for _ in range(size):
            self._start()

    def _start(self) -> None:
        tasks = self.context.Queue()
        process = self.context.Process(target=self.main, args=(tasks, self.results,
                                                               self.spec), daemon=True)
        process.start()
        assert process.pid is not None
        self.workers[process.pid] = (process, tasks)

    def idle(self) -> bool:
        return any(pid not in self.holding for pid in self.ready)

    def busy(self) -> bool:
        return bool(self.holding)

    def send(self, task: _Task) -> None:
        pid = next(pid for pid in sorted(self.ready) if pid not in self.holding)
        task.attempts += 1
        self.holding[pid] = (task, time.monotonic())
        self.workers[pid][1].put((task.index, task.start, _compact(task.batch)))

    def collect(self, timeout_s: float) -> list[tuple[str, _Task, str]]:
        """What the workers finished (or failed) since the last call, waiting a little
        for the first; a task past `timeout_s` or whose worker died is failed."""
        out: list[tuple[str, _Task, str]] = []
        try:
            item = self.results.get(timeout=0.2)
            while True:
                kind, _, _, message, _, pid = item
                if kind == "ready":
                    self.ready.add(pid)
                elif pid in self.holding:
                    task, _ = self.holding.pop(pid)
                    out.append((kind, task, message))
                item = self.results.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        for pid, (process, _) in list(self.workers.items()):
            held = self.holding.get(pid)
            late = held is not None and now - held[1] > timeout_s
            if process.is_alive() and not late:
                continue
            if not process.is_alive() and pid not in self.ready and held is None:
                if process.exitcode is None:
                    continue
                raise MlinfraError(f"a scoring worker could not start (exit code "
                                   f"{process.exitcode}): see the messages above")
            process.kill()
            process.join()
            del self.workers[pid]
            self.ready.discard(pid)
            if held is not None:
                self.holding.pop(pid)
                why = (f"timed out after {timeout_s:g}s" if late else
                       f"its worker died (exit code {process.exitcode})")
                out.append(("failed", held[0], why))
            self._start()
        return out

    def close(self) -> None:
        for process, tasks in self.workers.values():
            if process.is_alive():
                tasks.put(None)
        deadline = time.monotonic() + 5
        for process, _ in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self.results.close()


def render(summary: Summary) -> str:
    """The summary as a person reads it."""
    lines = [f"batch job {summary.job}: {summary.status}",
             f"  model {summary.model} over {summary.input} "
             f"({summary.endpoint}/{summary.deployment})",
             f"  rows: {summary.rows} ({summary.scored_rows} scored, {summary.failed_rows} "
             f"failed); mini-batches: {summary.mini_batches} ({summary.failed_mini_batches} "
             f"failed, {summary.retries} retries, {summary.resumed_mini_batches} resumed)",
             f"  {summary.elapsed_s:.2f}s, {summary.rows_per_s:,.0f} rows/s"]
    if summary.output:
        lines.append(f"  output: {summary.output}")
    if summary.errors:
        lines.append(f"  errors: {summary.errors}")
    if summary.message:
        lines.append(f"  {summary.message}")
    return "\n".join(lines)

