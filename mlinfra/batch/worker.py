"""A scoring worker: one process, one onnxruntime session, shards in, shard files out.

The scorer starts `max_concurrency` of them; each session's intra-op threads are the
cores divided among them. A worker exits when the scorer sends None, and by itself
when the scorer is gone (killed), so a killed scoring leaves no process behind.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlinfra.batch.shards import JobFolder
from mlinfra.serving.model import LoadedModel
from mlinfra.serving.tensors import TensorSpec
from mlinfra.serving.zipmap import Labels

ROW_ID = "row_id"
# onnxruntime's sessions print only fatal messages: a failed call is recorded and
# reported by mlinfra with its mini-batch (errors.jsonl, the summary), and
# onnxruntime's own red line for each attempt would only write over the progress bar
QUIET = 4


def feeds(batch: pa.RecordBatch, fed: dict[str, list[str]], inputs: dict[str, TensorSpec]
          ) -> dict[str, np.ndarray]:
    """The model's inputs from a mini-batch's columns (already checked to be numbers)."""
    out = {}
    for name, columns in fed.items():
        spec = inputs[name]
        arrays = [_numpy(batch.column(batch.schema.get_field_index(c))) for c in columns]
        if len(spec.shape) == 2:
            array = np.empty((batch.num_rows, len(arrays)), dtype=spec.dtype)
            for i, column in enumerate(arrays):
                array[:, i] = _fit(name, column, spec.dtype)
        else:
            array = _fit(name, arrays[0], spec.dtype)
        out[name] = array
    return out


_NUMPY_TYPES: dict[pa.DataType, np.dtype[Any]] = {
    pa.float64(): np.dtype(np.float64), pa.int64(): np.dtype(np.int64),
    pa.float32(): np.dtype(np.float32), pa.int32(): np.dtype(np.int32)}


def _numpy(column: pa.Array) -> np.ndarray:
    """A column's values over its own memory: numbers without nulls (the scorer checked
    that) need no copy; booleans (bits) are unpacked.

    NOTE: read from the Arrow buffers directly, never with to_numpy() nor np.asarray():
    both import pandas, which cost each worker about a second of CPU, more than half
    of its work on 1M rows (benchmarks/batch.py, the mlinfra csv row: CPU s). And
    to_numpy(zero_copy_only=False) takes 60 ms for 10,000 doubles, a hundred times the
    model's call (measured)."""
    buffers = column.buffers()
    dtype = _NUMPY_TYPES.get(column.type)
    if dtype is not None and len(buffers) == 2 and buffers[1] is not None:
        values: np.ndarray = np.frombuffer(memoryview(buffers[1]), dtype=dtype,
                                           count=len(column),
                                           offset=column.offset * dtype.itemsize)
        return values
    if column.type == pa.bool_() and len(buffers) == 2 and buffers[1] is not None:
        bits = np.unpackbits(np.frombuffer(memoryview(buffers[1]), dtype=np.uint8),
                             bitorder="little")
        return bits[column.offset:column.offset + len(column)].astype(bool)
    found: np.ndarray = np.asarray(column)  # another type: pyarrow converts it
    return found


def _fit(name: str, column: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind in "iu" and column.size and column.dtype != dtype:
        info = np.iinfo(dtype)
        if column.min() < info.min or column.max() > info.max:
            raise ValueError(f"input {name}: a value does not fit {dtype}")
    return column.astype(dtype, copy=False)


def arrow(array: np.ndarray) -> pa.Array:
    """A NumPy column as an Arrow array over the same memory. pa.array() would do, but
    it asks pandas whether the array is one of its own, and importing pandas costs a
    worker a second and 50 MB."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind in "iuf" and array.ndim == 1:
        return pa.Array.from_buffers(pa.from_numpy_dtype(array.dtype), len(array),
                                     [None, pa.py_buffer(array)])
    return pa.array(array)


def output_names(name: str, array: np.ndarray, labels: Labels | None) -> list[str]:
    """The columns an output becomes: its name when it is one number a row, else one
    column per class label (a ZipMap's) or per position: probabilities_0, ..."""
    if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
        return [name]
    width = array.shape[1]
    names = labels if labels is not None and len(labels) == width else range(width)
    return [f"{name}_{label}" for label in names]


def expanded(columns: Sequence[str], classes: dict[str, list[str]]) -> list[str]:
    """The output's columns: an output with a column a class stands for all of them."""
    return [c for wanted in columns for c in classes.get(wanted, [wanted])]


def output_table(start: int, kept: pa.RecordBatch | None, names: list[str],
                 outputs: list[np.ndarray], labels: dict[str, Labels],
                 columns: list[str]) -> pa.Table:
    """A shard's rows: `columns` of row_id, the kept input columns and the outputs (one
    column per class of a 2-D output)."""
    rows = len(outputs[0]) if outputs else (kept.num_rows if kept is not None else 0)
    available: dict[str, pa.Array] = {ROW_ID: arrow(np.arange(start, start + rows,
                                                              dtype=np.int64))}
    if kept is not None:
        for i, field in enumerate(kept.schema):
            available[field.name] = kept.column(i)
    classes: dict[str, list[str]] = {}
    for name, array in zip(names, outputs, strict=True):
        flat = array.reshape(len(array), -1) if array.ndim > 2 else array
        classes[name] = output_names(name, flat, labels.get(name))
        if flat.ndim == 1:
            available[name] = arrow(flat)
        elif flat.shape[1] == 1:
            available[name] = arrow(flat[:, 0])
        else:
            for i, column in enumerate(classes[name]):
                available[column] = arrow(flat[:, i])
    return pa.table({c: available[c] for c in expanded(columns, classes)})


def _orphaned(scorer: int) -> None:
    """Exit as soon as the scorer is gone (killed): a worker may be waiting for the
    rest of a mini-batch its scorer was sending when it died, which never comes. (The
    worker is the fork server's child, not the scorer's: the scorer's pid is asked.)"""
    while True:
        try:
            os.kill(scorer, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # a pid reused by another user's process: gone too
            os._exit(0)
        time.sleep(0.2)


class Late(Exception):
    """A model call past its timeout, left running in the thread it was made in."""


def bounded(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], timeout_s: float
            ) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """`run`, made in a thread and waited for `timeout_s` at most; past it, Late is
    raised and the call is left to end by itself (a daemon thread: it never holds up
    the process's exit). For the scorer's own attempts, which no kill can stop as the
    scorer stops a worker past its timeout."""

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        found: dict[str, Any] = {}

        def target() -> None:
            try:
                found["outputs"] = run(feed)
            except BaseException as err:  # raised again in the caller's thread
                found["error"] = err

        thread = threading.Thread(target=target, name="mlinfra-score", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise Late
        if "error" in found:
            raise found["error"]
        outputs: list[np.ndarray] = found["outputs"]
        return outputs

    return call


def attempt(model: LoadedModel, folder: JobFolder, job: dict[str, Any], index: int,
            start: int, batch: pa.RecordBatch,
            run: Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None = None
            ) -> str | None:
    """Scores mini-batch `index` (its first row is row `start`) into its shard; returns
    None, or why it failed: the model's error, or that its call outlived the timeout
    (late, though nothing stopped it: a timeout all the same, whenever the scorer looks
    at it). `job`: the columns fed, kept and written, and the timeout. `run`: how the
    model is called (default: model.run)."""
    began = time.perf_counter()
    timeout_s = float(job.get("timeout_s") or "inf")
    try:
        outputs = (run or model.run)(feeds(batch, job["fed"], model.input_specs))
        if time.perf_counter() - began > timeout_s:
            return f"timed out after {timeout_s:g}s"
        keep = job["keep"]
        kept = batch.select(keep) if keep else None
        folder.write_shard(index, output_table(start, kept, model.output_names, outputs,
                                               model.labels, job["columns"]))
    except Late:
        return f"timed out after {timeout_s:g}s"
    except Exception as err:  # the model failed on these rows: the scorer decides
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {message}"[:500]
    return None


def main(tasks: Any, results: Any, spec: dict[str, Any]) -> None:
    """The worker's loop: (index, start row, batch) in, ("done"|"failed", ...) out."""
    import onnxruntime as ort

    ort.set_default_logger_severity(QUIET)
    parent = int(spec["parent"])
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    folder = JobFolder(Path(spec["folder"]), spec["shards"])
    model = LoadedModel.load(spec["model"], int(spec["version"]), Path(spec["path"]),
                             spec["sha256"], int(spec["threads"]), QUIET)
    results.put(("ready", -1, 0, "", 0.0, os.getpid()))
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            continue
        if task is None:
            return
        index, start, payload = task
        batch = pa.ipc.open_stream(payload).read_next_batch()
        began = time.perf_counter()
        why = attempt(model, folder, spec, index, start, batch)
        results.put(("failed" if why else "done", index, batch.num_rows, why or "",
                     time.perf_counter() - began, os.getpid()))
