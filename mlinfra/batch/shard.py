"""A scoring staged for containers: each mini-batch scored by a process of its own.

On Kubernetes a scoring is an Indexed Job whose pod N scores shard N; in a docker
container one process scores them all. Both read the job's folder (on the artifacts
claim, or mounted): `task.json`, the model, and the input staged as Parquet with one
row group per mini-batch, so shard N is read directly, whatever the input's format.
A shard already scored is skipped, so a pod run again (a retry, a resumed Job) never
scores a row twice; the scorer on this machine then writes the output from the shards
in order (`Staged.assemble`).

    python -m mlinfra.batch.shard JOB_FOLDER [--index N | --all]

(N defaults to $JOB_COMPLETION_INDEX, which Kubernetes sets in an Indexed Job's pods.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from mlinfra.batch.shards import JobFolder, read_json, write_json

if TYPE_CHECKING:
    from mlinfra.batch.scoring import Scoring, Summary

INPUT, MODEL, TASK = "input.parquet", "model.onnx", "task.json"


def stage(scoring: Scoring, root: Path) -> int:
    """Write `scoring`'s job folder for containers (model, staged input, task); returns
    its number of shards. The input is read once, mini-batch after mini-batch."""
    import pyarrow.parquet as pq

    from mlinfra.batch.scoring import Scorer
    from mlinfra.batch.source import mini_batches

    scorer = Scorer(scoring, root)
    folder = scorer.folder
    fed, numeric, columns, schema = scorer._prepare()
    folder.create()
    shutil.copyfile(scoring.model_path, folder.root / MODEL)
    keep = list(scoring.output.keep)
    shards = 0
    staged = folder.root / INPUT
    tmp = staged.with_name(f".{INPUT}.tmp")
    writer = None
    for batch in mini_batches(scoring.input_path, scoring.input_format,
                              scoring.settings.mini_batch_size, numeric, keep):
        if writer is None:
            writer = pq.ParquetWriter(str(tmp), batch.schema)
        writer.write_batch(batch, row_group_size=scoring.settings.mini_batch_size)
        shards += 1
    if writer is not None:
        writer.close()
        os.replace(tmp, staged)
    write_json(folder.root / TASK, {
        "model": scoring.model, "version": scoring.version,
        "sha256": scoring.model_sha256, "fed": fed, "keep": keep, "columns": columns,
        "mini_batch_size": scoring.settings.mini_batch_size, "shards": shards,
        "shard_format": folder.suffix,
        "settings": asdict(scoring.settings), "schema": schema.to_string()})
    return shards


def assemble(scoring: Scoring, root: Path) -> Summary:
    """The output of a staged job from its shard files, in order, as the scorer on this
    machine writes it (summary, errors, error threshold); a shard without a file (its
    pod failed every attempt) counts its rows as failed. Returns the Summary."""
    import time

    import pyarrow.parquet as pq

    from mlinfra.batch.scoring import Scorer, _Writer

    scorer = Scorer(scoring, root)
    folder, progress = scorer.folder, scorer.progress
    _, _, _, schema = scorer._prepare()
    task = read_json(folder.root / TASK)
    source = pq.ParquetFile(folder.root / INPUT) if int(task.get("shards", 0)) else None
    started = time.monotonic()
    writer = None if scoring.settings.output_action == "summary_only" else _Writer(
        folder, folder.root / scoring.file_name, scoring.output.format, schema)
    failures: list[dict[str, object]] = []
    with folder.locked():
        for index in range(int(task.get("shards", 0))):
            assert source is not None
            rows = source.metadata.row_group(index).num_rows
            if folder.shard(index).exists():
                if writer is not None:
                    writer.append(index)
                progress.rows += rows
                progress.mini_batches += 1
                continue
            progress.failed_rows += rows
            progress.failed_mini_batches += 1
            failures.append({"index": index, "start": index * int(task["mini_batch_size"]),
                             "rows": rows, "attempts": scoring.settings.retries + 1,
                             "error": "its pod failed every attempt: see the Job's pods"})
        return scorer._finish(failures, writer, started)


def score_shards(root: Path, indexes: list[int], threads: int) -> list[int]:
    """Score `indexes` of the staged job at `root`; returns those that failed."""
    import pyarrow.parquet as pq

    from mlinfra.batch.worker import QUIET, attempt
    from mlinfra.serving.model import LoadedModel

    task = read_json(root / TASK)
    folder = JobFolder(root, str(task.get("shard_format", "arrow")))
    model = LoadedModel.load(task["model"], int(task["version"]), root / MODEL,
                             task["sha256"], threads, QUIET)
    source = pq.ParquetFile(root / INPUT)
    size = int(task["mini_batch_size"])
    failed = []
    for index in indexes:
        if folder.shard(index).exists():
            continue  # scored by an earlier attempt
        try:
            batch = pa.Table.from_batches(
                source.read_row_group(index).to_batches()).combine_chunks().to_batches()[0]
            why = attempt(model, folder, task, index, index * size, batch)
        except Exception as err:  # an unreadable row group
            why = f"{type(err).__name__}: {err}"
        if why is not None:  # reported; the Job's backoffLimitPerIndex retries it
            print(f"mini-batch {index}: {why}", file=sys.stderr)
            failed.append(index)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlinfra.batch.shard")
    parser.add_argument("folder", type=Path)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int)
    which.add_argument("--all", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    task = read_json(args.folder / TASK)
    if not task:
        print(f"{args.folder}: no {TASK}: not a staged scoring", file=sys.stderr)
        return 2
    if args.all:
        indexes = list(range(int(task["shards"])))
    else:
        index = args.index if args.index is not None else int(
            os.environ.get("JOB_COMPLETION_INDEX", "-1"))
        if not 0 <= index < int(task["shards"]):
            print(f"index {index} is not one of the {task['shards']} shards",
                  file=sys.stderr)
            return 2
        indexes = [index]
    from mlinfra.batch.scoring import cores

    failed = score_shards(args.folder, indexes, args.threads or cores())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
