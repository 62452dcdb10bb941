"""mlinfra runs, models, data: what training produced."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.cli.console import echo, emit, print_table, seconds, session_for, when
from mlinfra.errors import MlinfraError
from mlinfra.registry.usage import serving_endpoints

if TYPE_CHECKING:
    pass


def cmd_runs(args: argparse.Namespace) -> int:
    from mlinfra.runs.store import RunStore

    session = session_for(args, f"runs {args.runs_command}",
                          write=args.runs_command == "cancel")
    try:
        runs = RunStore(session.store)
        if args.runs_command == "list":
            rows = [[r.id, r.experiment, r.step or "", r.status, when(r.started_at),
                     seconds(r.duration)] for r in runs.recent(args.experiment, args.limit)]
            print_table(["RUN", "EXPERIMENT", "STEP", "STATUS", "STARTED", "DURATION"], rows)
            return 0
        found = [_find_run(runs, run_id) for run_id in args.run_id]
        if args.runs_command == "show":
            for run in found:
                echo(json.dumps({
                    "id": run.id, "experiment": run.experiment, "job": run.job,
                    "pipeline": run.pipeline, "step": run.step, "parent": run.parent,
                    "status": run.status, "error": run.error, "started": when(run.started_at),
                    "duration_s": run.duration, "exit_code": run.exit_code,
                    "command": run.command, "params": {**run.params,
                                                       **runs.logged_params(run.id)},
                    "inputs": run.inputs, "outputs": run.outputs,
                    "metrics": {k: v[-1][1] for k, v in runs.metrics(run.id).items()},
                    "git": run.git, "environment": run.environment, "run_dir": run.run_dir},
                    indent=2, default=str))
        elif args.runs_command == "logs":
            return _logs(runs, found[0], args.follow)
        elif args.runs_command == "compare":
            _compare(runs, found)
        elif args.runs_command == "cancel":
            _cancel(runs, found)
        return 0
    finally:
        session.close()


def _find_run(runs: Any, run_id: str) -> Any:
    run = runs.find(run_id)
    if run is None:
        raise MlinfraError(f"no run '{run_id}': mlinfra runs list shows them")
    return run


def _logs(runs: Any, run: Any, follow: bool) -> int:
    import time

    path = Path(run.run_dir) / "output.log"
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        current = runs.get(run.id)
        if not follow or current is None or current.status not in ("queued", "running"):
            return 0
        time.sleep(0.5)


def _compare(runs: Any, found: list[Any]) -> None:
    params = [{**r.params, **runs.logged_params(r.id)} for r in found]
    metrics = [{k: v[-1][1] for k, v in runs.metrics(r.id).items()} for r in found]
    rows = [["status", *[r.status for r in found]],
            ["duration", *[seconds(r.duration) for r in found]]]
    for key in sorted({k for p in params for k in p}):
        rows.append([f"param {key}", *[str(p.get(key, "-")) for p in params]])
    for key in sorted({k for m in metrics for k in m}):
        rows.append([f"metric {key}", *[f"{m[key]:.6g}" if key in m else "-"
                                        for m in metrics]])
    print_table(["", *[r.id for r in found]], rows)


def _cancel(runs: Any, found: list[Any]) -> None:
    from mlinfra.runs.processes import cancel

    for run in found:
        if run.status not in ("queued", "running"):
            raise MlinfraError(f"run {run.id} is {run.status}; only a queued or running run "
                               "can be canceled")
        echo(cancel(runs, run))


def cmd_models(args: argparse.Namespace) -> int:
    from mlinfra.registry.models import GATES_TAG, ModelRegistry
    from mlinfra.spec.model import Ref

    session = session_for(args, f"models {args.models_command}",
                          write=args.models_command in ("alias", "tag", "archive"))
    try:
        registry = ModelRegistry(session.store)
        if args.models_command == "list":
            from mlinfra.registry.decisions import figures

            rows = []
            versions = registry.versions(args.name)
            # Each metric with the digits that tell apart the versions listed beside it.
            shown: dict[tuple[str, int, str], str] = {}
            for key in {k for v in versions for k in v.metrics}:
                listed = [(v, v.metrics[key]) for v in versions
                          if isinstance(v.metrics.get(key), int | float)]
                for (version, _), text in zip(listed, figures(*(m for _, m in listed)),
                                              strict=True):
                    shown[(version.name, version.version, key)] = text
            for version in versions:
                aliases = [a for a, v in registry.aliases(version.name).items()
                           if v == version.version]
                metrics = ", ".join(f"{k}={shown[(version.name, version.version, k)]}"
                                    for k, v in version.metrics.items()
                                    if isinstance(v, int | float))
                status = ("archived" if version.archived else "gates failed" if
                          version.tags.get(GATES_TAG) == "failed" else "")
                rows.append([version.ref, ",".join(aliases), when(version.created_at),
                             version.run_id or "-", metrics, status])
            print_table(["MODEL", "ALIASES", "CREATED", "RUN", "METRICS", "STATUS"], rows)
            return 0
        ref = Ref.parse(args.ref)
        if ref is None:
            raise MlinfraError(f"'{args.ref}' is not NAME, NAME:VERSION or NAME@ALIAS")
        if args.models_command == "show":
            from mlinfra.monitoring import profile, records

            found = registry.resolve(ref.name, ref.version, ref.alias)
            kept = records.profile_of(session.store, found.name, found.version)
            reference = None if kept is None else {
                "source": kept.get("source"), "rows": kept.get("rows"),
                "columns": dict(profile.summary(kept))}
            echo(json.dumps({**vars(found), "aliases": registry.aliases(found.name),
                             "reference_profile": reference}, indent=2, default=str))
            return 0
        from mlinfra.engine import operation, writing

        # These move what a plan resolves: one writer at a time, as apply, each change
        # a journaled operation committed in one transaction.
        with writing(session, f"models {args.models_command}", args.lock_timeout), \
                operation(session, f"model.{ref.name}", args.models_command) as work:
            echo(_change_registry(session, ModelRegistry(work), ref, args))
        return 0
    finally:
        session.close()


def _change_registry(session: Any, registry: Any, ref: Any, args: argparse.Namespace) -> str:
    """models alias, tag or archive; returns what to print."""
    if args.models_command == "alias":
        if ref.alias is None:
            raise MlinfraError("give NAME@ALIAS, e.g. fraud@champion")
        registry.set_alias(ref.name, ref.alias, args.version, "set by mlinfra models alias")
        return f"{ref.name}@{ref.alias} -> {ref.name}:{args.version}"
    found = registry.resolve(ref.name, ref.version, ref.alias)
    if args.models_command == "tag":
        malformed = [item for item in args.tags if "=" not in item or item.startswith("=")]
        if malformed:
            raise MlinfraError(f"tags are KEY=VALUE; got {', '.join(malformed)}")
        tags = dict(item.split("=", 1) for item in args.tags)
        registry.set_tags(found.name, found.version, tags)
        return f"tagged {found.ref}: {tags}"
    registry.archive(found.name, found.version,
                     serving_endpoints(session.config, registry, found))
    return f"archived {found.ref}"


def cmd_data(args: argparse.Namespace) -> int:
    from mlinfra.data.checks import DataChecks
    from mlinfra.runs.jobs import Resolver

    session = session_for(args, "data validate", write=False)
    try:
        res = session.config.get("Data", args.name)
        if res is None:
            from mlinfra.spec.validate import did_you_mean

            raise MlinfraError(f"no Data named '{args.name}'"
                               + did_you_mean(args.name, session.config.of("Data")))
        resolver = Resolver(session.ctx)
        data = resolver.data(res, args.name)
        expectations = res.spec.get("expectations") or []
        if not expectations:
            echo(f"data {args.name} declares no expectations")
            return 0
        # What apply found for this content is shown, not checked again.
        label = (data.label if resolver.versions.find(data.name, data.sha256) is not None
                 else f"{data.name} (sha256 {data.sha256[:12]}, no version)")
        record = DataChecks(session.store).check(
            data.name, data.sha256, data.path, str(res.spec.get("format", "csv")),
            expectations, label)
    finally:
        session.close()
    for result in record.results:
        emit(f"{'ok  ' if result.success else 'FAIL'} {result.describe()}",
             "green" if result.success else "bold red")
    failed = len(record.failures)
    checked = f"checked {when(record.checked_at)}" + (", recorded" if record.reused else "")
    echo(f"\n{label}: {len(record.results) - failed} passed, {failed} failed ({checked})")
    return 1 if failed else 0
