"""Batch endpoints: scoring a whole table with a model version, as Azure ML's batch
endpoints do, without ever holding the table in memory.

A scoring is a job with an identity (the model's and the input's content, the
mini-batch size, the output's form): its input is streamed with pyarrow (CSV, Parquet,
JSONL) and cut into mini-batches (shards) of `mini_batch_size` rows; worker processes,
each with one onnxruntime session, score them; each scored shard is one file put in
place whole, so a scoring killed at any instant resumes where it stopped with no row
lost or scored twice; the output is written in input order with `row_id`.

- `source`: reading inputs in mini-batches, columns to model inputs, bad input;
- `worker`: the worker process (one session, shards in, shard files out);
- `shards`: a job's folder, its manifest, lock and shard files;
- `scoring`: the scorer (dispatch, retries, error threshold, timeouts, output);
- `jobs`: listing what ran.

This module imports nothing heavy: a command that will score starts the fork server
before it imports NumPy, pyarrow and onnxruntime itself.
"""

from __future__ import annotations

from typing import Any


def start_fork_server() -> Any:
    """The fork server the workers are forked from, started now (nothing if it runs);
    returns the multiprocessing context.

    NOTE: a fork server started clean (never a fork of this process, whose pyarrow and
    apply threads a fork would copy mid-flight) imports the worker's modules once;
    each worker is a fork of it, sharing those pages. Those imports take a quarter of
    a second of CPU before the first worker is ready: `mlinfra batch invoke` starts
    the server first of all, so that they run beside the command's own imports and
    checks (benchmarks/batch.py, the `mlinfra batch invoke` rows: seconds)."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlinfra.batch.forkserver", "mlinfra.batch.worker",
                                     "onnxruntime"])
    forkserver.ensure_running()
    return context
