"""mlinfra batch: invoke (score a file or a data version now), jobs (what ran)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.cli.console import echo, print_table, session_for, when
from mlinfra.errors import MlinfraError

if TYPE_CHECKING:
    from mlinfra.batch.scoring import Progress


def cmd_batch(args: argparse.Namespace) -> int:
    if args.batch_command == "invoke":
        _before_scoring()
    session = session_for(args, f"batch {args.batch_command}", write=False)
    try:
        if args.batch_command == "jobs":
            return _jobs(session.ctx, args)
        return _invoke(session.ctx, args)
    finally:
        session.close()


def _before_scoring() -> None:
    """First of all, before NumPy is imported: the fork server starts, its imports
    beside this command's own; and OpenBLAS starts no thread in this process, whose
    children are the fork server and the workers only.

    NOTE: NumPy's OpenBLAS threads only spin here (a scoring's arithmetic is
    onnxruntime's): a tenth of a second of CPU each just after the import, taken from
    the fork server's imports and the workers (benchmarks/batch.py, the `mlinfra
    batch invoke` rows: CPU s). A value the user set is kept."""
    from mlinfra.batch import start_fork_server

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    start_fork_server()


def _invoke(ctx: Any, args: argparse.Namespace) -> int:
    from mlinfra.batch.handler import (
        deployment_of,
        input_of,
        jobs_root,
        resolve_model,
        scoring,
    )
    from mlinfra.batch.scoring import BatchFailed, Scorer, render

    address = f"batchendpoint.{args.name}"
    endpoint = ctx.config.get("BatchEndpoint", args.name)
    if endpoint is None:
        known = ", ".join(sorted(ctx.config.of("BatchEndpoint"))) or "none"
        raise MlinfraError(f"no batch endpoint '{args.name}' in the project (batch "
                           f"endpoints: {known})")
    deployment = deployment_of(ctx, endpoint, args.deployment, address)
    model = resolve_model(ctx, deployment, address)
    if model is None:
        raise MlinfraError(f"{deployment['model']} names no version yet: apply the project "
                           "first")
    path, fmt, label, sha = input_of(ctx, args.input, address)
    job = scoring(ctx, endpoint, deployment, model, path, fmt, label, sha, address)
    if args.output and job.settings.output_action == "summary_only":
        raise MlinfraError(f"--output {args.output}: deployment {deployment['name']} of "
                           f"{endpoint.name} has output_action: summary_only, and writes "
                           "no scores: leave --output out, or use append_row")
    target = _target(args.output, job.file_name, path)
    _check_output_name(target, job.output.format, endpoint.name)
    with _ProgressBar(f"{model.ref} over {label}") as bar:
        try:
            summary = Scorer(job, jobs_root(ctx), bar.update).run()
        except BatchFailed as err:
            if args.json and err.summary is not None:  # the machine's summary too
                echo(json.dumps(err.summary.to_json(), indent=2))
            raise
    if target is not None and summary.output:
        try:
            _deliver(Path(summary.output), target)
        except OSError as err:
            raise MlinfraError(f"--output {args.output}: {err.strerror or err}; the scores "
                               f"are in {summary.output}") from None
        summary.output = str(target)
    echo(json.dumps(summary.to_json(), indent=2) if args.json else render(summary))
    return 0


def _target(output: str | None, file_name: str, source: Path) -> Path | None:
    """Where --output puts the scores: the file it names, or in the folder it names
    the job's file (predictions.csv), as cp would; never over the input."""
    if output is None:
        return None
    target = Path(output).expanduser()
    if target.is_dir():
        target = target / file_name
    if target.resolve() == source.resolve():
        raise MlinfraError(f"--output {output}: that is the input; name another file")
    return target


def _check_output_name(output: Path | None, fmt: str, endpoint: str) -> None:
    """--output names a file of the format the endpoint writes, or one mlinfra cannot
    tell the format of: never a .csv holding Parquet."""
    from mlinfra.batch.source import BatchInputError, format_of

    if output is None:
        return
    try:
        named = format_of(output)
    except BatchInputError:
        return
    if named != fmt:
        raise MlinfraError(f"--output {output}: batch endpoint {endpoint} writes {fmt} (its "
                           f"output.format): name a .{fmt} file, or change output.format")


def _deliver(source: Path, target: Path) -> None:
    """A copy of the output at `target`, put in place whole: the user's own, which
    they may change, never the job's (which a scoring asked again hands out)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _ProgressBar:
    """rows/s, mini-batches done and failed, on a terminal (rich); nothing otherwise.
    On 80 columns: the description gives way (an ellipsis), the figures never; the
    share done when the input's rows are known (Parquet)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _ProgressBar:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.table import Column

            described = Column(ratio=1, no_wrap=True, overflow="ellipsis", min_width=10)
            self.bar = Progress(TextColumn("{task.description}", table_column=described),
                                TaskProgressColumn(),
                                TextColumn("{task.completed:,.0f} rows"),
                                TextColumn("{task.fields[rate]:,.0f}/s"),
                                TextColumn("{task.fields[batches]} mini-batches"),
                                TextColumn("{task.fields[failed]} failed"),
                                TimeElapsedColumn(), console=Console(stderr=True),
                                transient=False, expand=True)
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=None, rate=0.0, batches=0,
                                          failed=0)
        return self

    def update(self, progress: Progress) -> None:
        if self.bar is None:
            return
        rate = progress.rows / progress.elapsed_s if progress.elapsed_s else 0.0
        self.bar.update(self.task, completed=progress.rows, total=progress.total_rows,
                        rate=rate, batches=progress.mini_batches,
                        failed=progress.failed_mini_batches)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _jobs(ctx: Any, args: argparse.Namespace) -> int:
    from mlinfra.batch.handler import jobs_root
    from mlinfra.batch.jobs import list_jobs

    jobs = list_jobs(jobs_root(ctx))
    if args.json:
        echo(json.dumps([j.to_json() for j in jobs], indent=2))
        return 0
    print_table(["JOB", "STATUS", "ENDPOINT", "MODEL", "INPUT", "ROWS", "FAILED", "STARTED"],
                [[j.job, j.status, f"{j.endpoint}/{j.deployment}", j.model, j.input,
                  "-" if j.rows is None else str(j.rows),
                  "-" if j.failed_rows is None else str(j.failed_rows), when(j.started_at)]
                 for j in jobs])
    return 0
