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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlinfra.batch import start_fork_server
from mlinfra.batch.shards import JobFolder, csv_header, read_json, write_json
from mlinfra.batch.source import (
    BatchInputError,
    check_kept_for_csv,
    fed_columns,
    header,
    mini_batches,
    numeric_types,
)
from mlinfra.batch.worker import QUIET, ROW_ID, expanded, output_names, output_table
from mlinfra.errors import MlinfraError
from mlinfra.runs.processes import this_process
from mlinfra.state.store import HOST

OUTPUT_FORMATS = ("csv", "parquet", "jsonl")
ACTIONS = ("append_row", "summary_only")


class BatchFailed(MlinfraError):
    """The job stopped: more failed rows than its error threshold allows. `summary`:
    the job's, as it stopped."""

    def __init__(self, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


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

    def passes(self, failed_rows: int) -> bool:
        return self.error_threshold == -1 or failed_rows <= self.error_threshold

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
    """The output, shard after shard in index order, to a temporary file: a CSV or JSON
    lines shard's bytes are appended as they are (after a CSV header of `schema`'s
    names); a Parquet shard is read and written as a row group."""

    def __init__(self, folder: JobFolder, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.folder, self.path, self.fmt = folder, path, fmt
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._parquet: Any = None
        self._file: Any = None
        if fmt != "parquet":
            self._file = open(self.tmp, "wb")  # noqa: SIM115 (closed in finish)
            if fmt == "csv":
                self._file.write(csv_header(schema))
        self.schema = schema

    def append(self, index: int) -> None:
        if self._file is not None:
            self._file.write(self.folder.shard(index).read_bytes())
            return
        table = self.folder.read_shard(index)
        if self._parquet is None:
            import pyarrow.parquet as pq

            # the shards' own schema: a kept column's type is known only from the data
            self.schema = table.schema
            self._parquet = pq.ParquetWriter(str(self.tmp), self.schema)
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self._parquet.write_table(table)

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            if self._parquet is None:  # no row scored: the columns alone
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetWriter(str(self.tmp), self.schema)
            self._parquet.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        for handle in (self._parquet, self._file):
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
        self.folder = JobFolder(jobs_root / scoring.job_id, scoring.output.format if
                                scoring.settings.output_action == "append_row" else "")
        self.on_progress = on_progress
        self.progress = Progress()
        self.model: Any = None

    # --- what the job reads and writes ----------------------------------------------

    def _prepare(self) -> tuple[dict[str, list[str]], dict[str, pa.DataType], list[str],
                                pa.Schema]:
        """Columns fed to each input, kept columns, output columns and the output's
        schema: every column problem is found before any row is scored."""
        from mlinfra.serving.model import LoadedModel, ModelLoadError

        s = self.scoring
        try:
            model = LoadedModel.load(s.model, s.version, s.model_path, s.model_sha256,
                                     log_severity=QUIET)
        except ModelLoadError as err:
            raise MlinfraError(f"{s.model}:{s.version}: {err}") from None
        fed = fed_columns(s.input_path, header(s.input_path, s.input_format), model.inputs,
                          model.features, s.output.keep)
        if s.output.format == "csv" and s.settings.output_action == "append_row":
            check_kept_for_csv(s.input_path, s.input_format, s.output.keep)
        probe = {i.name: np.zeros([1 if d is None else d for d in i.shape], i.dtype)
                 for i in model.inputs}
        outputs = model.run(probe)
        for name, array in zip(model.output_names, outputs, strict=True):
            if array.ndim > 2 or array.ndim == 0:
                raise MlinfraError(f"{s.model}:{s.version}: output {name} has shape "
                                   f"{list(array.shape)}: batch scoring writes outputs of "
                                   "one number or one row of numbers per input row")
        # an output, whole (all its class columns), or one class column of a 2-D output:
        # the names a user sees in the output (probabilities_0, or a ZipMap's label)
        classes = {name: names for name, array in zip(model.output_names, outputs, strict=True)
                   if (names := output_names(name, array, model.labels.get(name))) != [name]}
        known = [ROW_ID, *model.output_names, *(c for n in classes.values() for c in n),
                 *s.output.keep]
        unknown = [c for c in s.output.columns if c not in known]
        if unknown:
            what = ", ".join(f"{name} (or its columns {', '.join(classes[name])})"
                             if name in classes else name for name in model.output_names)
            keeps = ", ".join(s.output.keep) or "none: keep_input_columns names them"
            raise MlinfraError(f"output columns {unknown} are neither row_id, an output of "
                               f"{s.model}:{s.version} ({what}), nor a kept input column "
                               f"({keeps})")
        chosen = expanded(s.output.columns, classes)
        twice = sorted({c for c in chosen if chosen.count(c) > 1})
        if twice:
            raise MlinfraError(f"output columns {list(s.output.columns)} name {twice} twice "
                               "(an output stands for all its class columns)")
        columns = list(s.output.columns) or [ROW_ID, *s.output.keep, *model.output_names]
        numeric = numeric_types(fed, model.inputs)
        # a CSV's kept columns are text, but for those the model reads: numbers
        kept_types = {c: numeric.get(c, pa.string()) for c in s.output.keep} \
            if s.input_format == "csv" else {}
        kept = pa.RecordBatch.from_arrays(
            [pa.array([None], type=kept_types.get(c, pa.null())) for c in s.output.keep],
            names=list(s.output.keep)) if s.output.keep else None
        empty = output_table(0, kept, model.output_names, [o[:1] for o in outputs],
                             model.labels, columns).slice(0, 0)
        self.model = model  # scores while the workers start (_head_start)
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
                # a job passed under a laxer error_threshold (another deployment's) is
                # judged again: scored again under this one's retries and threshold
                if done and s.settings.passes(int(done.get("failed_rows") or 0)):
                    # named as asked now: the same scoring may be asked under two names
                    return Summary(**{**done, "endpoint": s.endpoint, "deployment":
                                      s.deployment, "input": s.input_label,
                                      "message": "already scored: not scored again"})
            context = start_fork_server()
            fed, numeric, columns, schema = self._prepare()
            folder.create()
            scored = folder.scored()
            folder.forget_failures()
            pid, pid_started = this_process()
            write_json(folder.manifest, {
                "job": s.job_id, "status": "running", "pid": pid,
                "pid_started": pid_started, "host": HOST, "started_at": time.time(),
                "endpoint": s.endpoint, "deployment": s.deployment,
                "model": f"{s.model}:{s.version}", "model_sha256": s.model_sha256,
                "input": s.input_label,
                "input_path": str(s.input_path), "input_format": s.input_format,
                "input_sha256": s.input_sha256, "settings": asdict(s.settings),
                "output": asdict(s.output), "resumed": len(scored)})
            self.progress = Progress(total_rows=self._total_rows(), resumed=len(scored))
            started = time.monotonic()
            writer = None if s.settings.output_action == "summary_only" else _Writer(
                folder, output_path, s.output.format, schema)
            try:
                failures = self._score(context, fed, numeric, columns, scored, writer,
                                       started)
            except BaseException as err:
                if writer is not None:
                    writer.discard()
                # a value that is not a number: the input must change, a new job
                bad = err.message if isinstance(err, BatchInputError) else None
                write_json(folder.manifest, {**read_json(folder.manifest), "status":
                                             "interrupted" if bad is None else "bad input",
                                             **({"error": bad} if bad else {})})
                raise
            return self._finish(failures, writer, started)

    def _finish(self, failures: list[dict[str, Any]], writer: _Writer | None,
                started: float) -> Summary:
        s, folder, p = self.scoring, self.folder, self.progress
        folder.errors.unlink(missing_ok=True)
        with open(folder.errors, "w") if failures else _nowhere() as errors:
            for failure in failures:
                for row in range(failure["start"], failure["start"] + failure["rows"]):
                    errors.write(json.dumps({"row_id": row, "mini_batch": failure["index"],
                                             "attempts": failure["attempts"],
                                             "error": failure["error"]}) + "\n")
        threshold = s.settings.error_threshold
        over = not s.settings.passes(p.failed_rows)
        if writer is not None and not over:
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
            told = render(Summary(**{**summary.to_json(), "message": ""}))  # said once
            raise BatchFailed(f"batch job {s.job_id}: {message}\n{told}", summary)
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
        most = self._most_mini_batches(len(numeric)) - len(scored)
        concurrency = max(1, min(settings.max_concurrency, most))
        spec = {"parent": os.getpid(), "folder": str(folder.root), "shards": folder.suffix,
                "model": s.model,
                "version": s.version, "path": str(s.model_path), "sha256": s.model_sha256,
                "threads": max(1, cores() // concurrency), "fed": fed, "keep": keep,
                "columns": columns, "timeout_s": settings.timeout_s}
        pool = _Pool(context, context.Queue(), spec, concurrency)
        failures: list[dict[str, Any]] = []
        resolved: dict[int, bool] = {}  # index -> scored (True) or failed (False)
        backlog = _Backlog(_numbered(batches, settings.mini_batch_size), scored, p,
                           resolved)
        next_out = 0

        def over() -> bool:
            return not settings.passes(p.failed_rows)

        def advance() -> None:
            nonlocal next_out
            while next_out in resolved:
                if resolved.pop(next_out) and writer is not None:
                    writer.append(next_out)
                next_out += 1
            self._report(started)

        def settle(kind: str, task: _Task, message: str) -> None:
            if kind == "again":
                backlog.retry.appendleft(task)
            elif kind == "done":
                p.rows += task.batch.num_rows
                p.mini_batches += 1
                resolved[task.index] = True
            elif task.attempts <= settings.retries:
                p.retries += 1
                backlog.retry.append(task)
            else:
                p.failed_mini_batches += 1
                p.failed_rows += task.batch.num_rows
                failure = {"index": task.index, "start": task.start,
                           "rows": task.batch.num_rows, "attempts": task.attempts,
                           "error": message}
                write_json(folder.failed_record(task.index), failure)
                failures.append(failure)
                resolved[task.index] = False

        try:
            if most > 1:
                pool.start()
            self._head_start(pool, backlog, spec, settle, advance)
            if not backlog.empty:
                pool.start()
                pool.wait_started()
            while True:
                while not over() and pool.idle():
                    task = backlog.take()
                    if task is None:
                        break
                    pool.send(task)
                advance()
                if not pool.busy() and (backlog.empty or over()):
                    break
                for kind, task, message in pool.collect(settings.timeout_s):
                    settle(kind, task, message)
            advance()
        finally:
            pool.close()
        return failures

    def _head_start(self, pool: _Pool, backlog: _Backlog, spec: dict[str, Any],
                    settle: Callable[[str, _Task, str], None],
                    advance: Callable[[], None]) -> None:
        """Scores mini-batches here, with the session that checked the columns, until a
        worker is ready (an input of one mini-batch starts none). An attempt here
        counts as any other; one that fails or outlives the timeout (its call is then left
        to end in its thread) ends the head start, leaving what follows to the workers.

        NOTE: the fork server's imports and the workers' start take a fifth of a second
        or more, in which this process had nothing to do (benchmarks/batch.py, the
        mlinfra rows: seconds; the start-up row)."""
        from mlinfra.batch.worker import attempt, bounded

        model, self.model = self.model, None
        # the timeout holds here too: a call past it is left to its thread
        run = bounded(model.run, float(spec["timeout_s"])) if model is not None else None
        while model is not None:
            if pool.started():
                for item in pool.collect(0.0, wait=0.0):  # ready messages: none was sent
                    settle(*item)
                if pool.idle():
                    return
            task = backlog.take()
            if task is None:
                return
            task.attempts += 1
            why = attempt(model, self.folder, spec, task.index, task.start, task.batch,
                          run)
            settle("failed" if why else "done", task, why or "")
            if why:
                return
            advance()

    def _report(self, started: float) -> None:
        self.progress.elapsed_s = time.monotonic() - started
        self.on_progress(self.progress)


class _Backlog:
    """The mini-batches still to score: those to try again first, then the input's next
    ones, past those a killed run had scored (which count as scored)."""

    def __init__(self, source: Iterator[_Task], scored: set[int], progress: Progress,
                 resolved: dict[int, bool]) -> None:
        self.source, self.scored, self.progress, self.resolved = (source, scored,
                                                                  progress, resolved)
        self.retry: deque[_Task] = deque()
        self.exhausted = False

    @property
    def empty(self) -> bool:
        return self.exhausted and not self.retry

    def take(self) -> _Task | None:
        if self.retry:
            return self.retry.popleft()
        while not self.exhausted:
            found = next(self.source, None)
            if found is None:
                self.exhausted = True
            elif found.index in self.scored:  # resumed: scored before the kill
                self.progress.rows += found.batch.num_rows
                self.progress.mini_batches += 1
                self.resolved[found.index] = True
            else:
                return found
        return None


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


# Mini-batches a worker holds at once: the one it scores and the next, so it never
# waits for the scorer between two. NOTE: with one, each worker was busy about half of
# the scoring (benchmarks/batch.py, the mlinfra rows: seconds).
DEPTH = 2


class _Pool:
    """The worker processes, each fed through its own queue, so the scorer knows which
    tasks each holds: the first is being scored (since `since`), for timeouts and
    deaths; the others wait behind it."""

    def __init__(self, context: Any, results: Any, spec: dict[str, Any], size: int) -> None:
        from mlinfra.batch.worker import main

        self.context, self.results, self.spec, self.main = context, results, spec, main
        self.workers: dict[int, tuple[Any, Any]] = {}  # pid -> (process, queue)
        self.holding: dict[int, deque[_Task]] = {}  # pid -> its tasks, in order
        self.since: dict[int, float] = {}  # pid -> when it began its first task
        self.ready: set[int] = set()
        self.size = size
        self._starter: threading.Thread | None = None
        self._failed: BaseException | None = None

    def start(self) -> None:
        """Starts the workers, in the background (each start waits for the fork server,
        which may still be importing); nothing once started."""
        if self._starter is None:
            self._starter = threading.Thread(target=self._start_all, daemon=True)
            self._starter.start()

    def _start_all(self) -> None:
        try:
            for _ in range(self.size):
                self._start()
        except BaseException as err:  # raised in the scorer's thread (started())
            self._failed = err

    def started(self) -> bool:
        """Whether every worker was started (not necessarily ready yet)."""
        if self._starter is None or self._starter.is_alive():
            return False
        if self._failed is not None:
            raise self._failed
        return True

    def wait_started(self) -> None:
        if self._starter is not None:
            self._starter.join()
        self.started()

    def _start(self) -> None:
        tasks = self.context.Queue()
        process = self.context.Process(target=self.main, args=(tasks, self.results,
                                                               self.spec), daemon=True)
        process.start()
        assert process.pid is not None
        self.workers[process.pid] = (process, tasks)
        self.holding[process.pid] = deque()

    def idle(self) -> bool:
        return self.started() and any(len(self.holding[pid]) < DEPTH for pid in self.ready)

    def busy(self) -> bool:
        return any(self.holding.values())

    def send(self, task: _Task) -> None:
        pid = min((pid for pid in self.ready if len(self.holding[pid]) < DEPTH),
                  key=lambda pid: (len(self.holding[pid]), pid))
        task.attempts += 1
        if not self.holding[pid]:
            self.since[pid] = time.monotonic()
        self.holding[pid].append(task)
        self.workers[pid][1].put((task.index, task.start, _compact(task.batch)))

    def collect(self, timeout_s: float, wait: float = 0.2) -> list[tuple[str, _Task, str]]:
        """What the workers finished (or failed) since the last call, waiting up to
        `wait` for the first; a task past `timeout_s` or whose worker died is failed, and
        the tasks waiting behind it come back as `again` (not tried, not counted). Only
        once started()."""
        out: list[tuple[str, _Task, str]] = []
        try:
            item = self.results.get(timeout=wait) if wait else self.results.get_nowait()
            while True:
                kind, _, _, message, _, pid = item
                if kind == "ready":
                    self.ready.add(pid)
                elif self.holding.get(pid):
                    out.append((kind, self.holding[pid].popleft(), message))
                    self.since[pid] = time.monotonic()
                item = self.results.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        for pid, (process, _) in list(self.workers.items()):
            held = self.holding[pid]
            late = bool(held) and now - self.since[pid] > timeout_s
            if process.is_alive() and not late:
                continue
            if not process.is_alive() and pid not in self.ready and not held:
                if process.exitcode is None:
                    continue
                raise MlinfraError(f"a scoring worker could not start (exit code "
                                   f"{process.exitcode}): see the messages above")
            process.kill()
            process.join()
            _abandon(self.workers[pid][1])
            del self.workers[pid], self.holding[pid]
            self.ready.discard(pid)
            if held:
                why = (f"timed out after {timeout_s:g}s" if late else
                       f"its worker died (exit code {process.exitcode})")
                out.append(("failed", held.popleft(), why))
                for task in held:
                    task.attempts -= 1
                    out.append(("again", task, ""))
            self._start()
        return out

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        for process, tasks in self.workers.values():
            if process.is_alive():
                tasks.put(None)
        deadline = time.monotonic() + 5
        for process, tasks in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            _abandon(tasks)
        self.results.close()


def _abandon(tasks: Any) -> None:
    """A worker's queue once the worker is gone: what it did not read is dropped. (A
    queue's thread writes a mini-batch into its pipe in the background, and this
    process would wait for it at exit, forever, once no worker reads the pipe.)"""
    tasks.cancel_join_thread()
    tasks.close()


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

