"""Jobs and pipelines on the local machine.

A job's run hash covers its code (as snapshotted), command, params, outputs, its
environment's spec and the versions of its inputs; a pipeline step's also covers its
upstream steps' hashes. The plan runs a job when no completed run has its hash, and
apply adopts a completed run with that hash instead of running it again.
"""

from __future__ import annotations

import graphlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.data import checks
from mlinfra.data.handler import DataHandler
from mlinfra.data.versions import DataVersions
from mlinfra.handler import Applied, BaseHandler, Context, ProviderError, workspace_dir
from mlinfra.plan.model import Change, Observed
from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.runs.environments import CURRENT_PYTHON, env_dir
from mlinfra.runs.execute import JobSpec, RunFailed, execute, new_run_id
from mlinfra.runs.processes import stop_orphans, this_process
from mlinfra.runs.snapshot import CodeRefused, code_digest
from mlinfra.runs.store import Run, RunStore
from mlinfra.spec import sensitive
from mlinfra.spec.model import OUTPUT_REF, Ref, Resource, duration_s
from mlinfra.spec.storage import is_object_url
from mlinfra.state.model import ResourceState, digest
from mlinfra.state.store import HOST

_SLOTS: dict[str, threading.Semaphore] = {}
_SLOTS_LOCK = threading.Lock()


def artifact_store(ctx: Context) -> ArtifactStore:
    """The workspace's artifact store: a folder, or the object storage the stack's
    `artifacts:` names (with this machine's cache of it)."""
    folder = workspace_dir(ctx, ctx.config.workspace) / "artifacts"
    stack = ctx.config.stack
    if stack.artifacts and is_object_url(stack.artifacts):
        from mlinfra.data.objects import location_of
        from mlinfra.registry.object_artifacts import ObjectArtifactStore

        location = location_of(stack.artifacts, stack.settings.get("storage"),
                               f"{stack.file}: artifacts")
        return ObjectArtifactStore(location, folder)
    return ArtifactStore(folder)


def runs_root(ctx: Context) -> Path:
    return workspace_dir(ctx, ctx.config.workspace) / "runs"


def _slots(ctx: Context, compute: str | None) -> threading.Semaphore:
    res = ctx.config.get("Compute", compute) if compute else None
    limit = int(res.spec.get("max_concurrency", 2)) if res else 2
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(f"{ctx.root}:{compute}", threading.Semaphore(limit))


@dataclass
class DataInput:
    name: str
    version: int
    sha256: str
    path: Path
    registered: bool = True  # False: content apply will register as `version`

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


class Resolver:
    """Resolves what a job's inputs are now: data versions, environments, code."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.versions = DataVersions(ctx.writer)
        self._jobs: dict[str, tuple[str, dict[str, str]]] = {}

    def data(self, res: Resource, text: str) -> DataInput:
        ref = Ref.parse(text)
        data = self.ctx.config.get("Data", ref.name) if ref else None
        if ref is None or data is None:
            raise ProviderError(res.address, f"input '{text}' names no Data")
        # A plan reads no object storage content it has seen; an apply reads the data.
        try:
            sha, path = DataHandler().locate(data, self.ctx,
                                             fetch=not self.ctx.store.readonly)
        except ProviderError as err:
            raise ProviderError(res.address, f"input data {ref.name}: {err.reason}") from None
        found = self.versions.find(ref.name, sha)
        current = found or self.versions.next_version(ref.name)
        if ref.version is not None and ref.version != current:
            pinned = self.versions.get(ref.name, ref.version)
            if pinned is None:
                raise ProviderError(res.address, f"data {ref.name} has no version "
                                    f"{ref.version}")
            store = artifact_store(self.ctx)
            if not store.exists(pinned.sha256):
                raise ProviderError(res.address, f"data {ref.name}:{ref.version} is not the "
                                    "current content and was never stored by a run")
            return DataInput(ref.name, ref.version, pinned.sha256, store.path(pinned.sha256))
        return DataInput(ref.name, current, sha, path, registered=found is not None)

    def environment(self, job: Resource) -> tuple[str, Path | None, dict[str, Any]]:
        """The environment's identity (its lock's hash), venv and `env` (secrets still
        references)."""
        name = job.spec.get("environment")
        env = self.ctx.config.get("Environment", name) if name else None
        if env is None:
            return f"python{CURRENT_PYTHON}", None, {}
        facts = self.ctx.facts(env)
        # An environment is what it resolved: its lock's hash, not its requirement list.
        env_hash = str(facts.get("env_hash") or facts["spec_hash"])
        return env_hash, env_dir(env_hash), dict(env.spec.get("env") or {})

    def code(self, job: Resource) -> str:
        code = self.ctx.root / str(job.spec.get("code", "."))
        try:
            return code_digest(code, self.ctx.root, self.versions.content_sha256)
        except CodeRefused as err:
            raise ProviderError(job.address, f"code: {err.message}") from err

    def run_hash(self, job: Resource, inputs: dict[str, str], params: dict[str, Any]
                 ) -> tuple[str, dict[str, Any]]:
        """The job's run hash and its readable parts; `inputs` holds each input's
        resolved identity (a data version's sha256 or an upstream run hash)."""
        env_hash, _, _ = self.environment(job)
        parts = {"command": job.spec["command"], "params": params,
                 "outputs": job.spec.get("outputs") or {}, "code": self.code(job),
                 "environment": env_hash, "inputs": inputs}
        return digest(parts), parts

    def job(self, res: Resource) -> tuple[str, dict[str, str]]:
        """A standalone job's run hash and its inputs' labels. An input that is another
        job's output is identified by that job's run hash and the output's name."""
        if res.name in self._jobs:
            return self._jobs[res.name]

        def upstream(name: str) -> str:
            producer = self.ctx.config.get("Job", name)
            assert producer is not None  # validated
            return self.job(producer)[0]

        found = run_identity(self, res, res, res.spec.get("inputs") or {},
                             res.spec.get("params") or {}, upstream)
        self._jobs[res.name] = found
        return found


def run_identity(resolver: Resolver, owner: Resource, job: Resource, inputs: dict[str, Any],
                 params: dict[str, Any], upstream: Callable[[str], str]
                 ) -> tuple[str, dict[str, str]]:
    """A run's identity: the run hash of `job` reading `inputs` with `params`, and each
    input's label. The one function a standalone job and a pipeline step are planned
    with: a data input is identified by its content, another run's output by that run's
    hash (`upstream(name)`: the producing job's or step's) and the output's name."""
    identities, labels = {}, {}
    for key, value in inputs.items():
        match = OUTPUT_REF.match(str(value))
        if match:
            kind, name, output = match.group(1), match.group(2), match.group(3)
            identities[key] = f"{upstream(name)}:{output}"
            labels[key] = f"{'step' if kind == 'steps' else 'job'} {name} output {output}"
        else:
            data = resolver.data(owner, str(value))
            identities[key], labels[key] = data.sha256, data.label
    run_hash, _ = resolver.run_hash(job, identities, params)
    return run_hash, labels


def launchable(ctx: Context, job: Resource) -> None:
    """A job whose runs the stack's provider cannot start is a plan error, not a
    failure halfway through an apply."""
    if ctx.provider is not None:
        ctx.provider.job_launcher(ctx, job)


def pipelines_using(ctx: Context, job: str) -> list[str]:
    return sorted(p.name for p in ctx.config.of("Pipeline").values()
                  if any(isinstance(s, dict) and s.get("job") == job
                         for s in (p.spec.get("steps") or {}).values()))


class JobHandler(BaseHandler):
    """A job runs when its run hash has no completed run; a job used as a pipeline step
    runs only as that step."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        used_by = pipelines_using(ctx, res.name)
        if used_by:
            return {"runs_as_step_of": used_by}
        launchable(ctx, res)
        run_hash, labels = Resolver(ctx).job(res)
        return {"inputs_resolved": labels, "run_hash": run_hash}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        if "runs_as_step_of" in after:
            return Applied({"runs_as_step_of": after["runs_as_step_of"]})
        res = ctx.config.get("Job", change.name)
        assert res is not None
        run = run_job(ctx, res, str(after["run_hash"]), Resolver(ctx))
        return Applied({"run_id": run.id, "outputs": run.outputs, "status": run.status,
                        "reused": run.reused_from is not None}, provider_id=run.id)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        return _read_run(state.outputs, ctx)


def _read_run(outputs: dict[str, Any], ctx: Context) -> Observed:
    run_id = outputs.get("run_id")
    if run_id is None:
        return Observed()
    run = RunStore(ctx.store, ctx.work).get(str(run_id))
    if run is None or run.status != "completed":
        return Observed(False, f"run {run_id} is missing or not completed")
    store = artifact_store(ctx)
    missing = [name for name, sha in run.outputs.items() if not store.present(str(sha))]
    if missing:
        return Observed(False, f"outputs {', '.join(missing)} of run {run_id} are missing "
                        "from the artifact store")
    return Observed()


def _gate(ctx: Context, res: Resource, data: DataInput) -> None:
    """Data expectations are checked before any run reads the data."""
    asset = ctx.config.get("Data", data.name)
    expectations = (asset.spec.get("expectations") or []) if asset else []
    if not expectations:
        return
    fmt = str(asset.spec.get("format", "csv")) if asset else "csv"
    try:
        checks.DataChecks(ctx.store).require(data.name, data.sha256, data.path, fmt,
                                             expectations, data.label)
    except checks.DataCheckFailed as err:
        raise ProviderError(res.address, f"{err.message}\nno run started") from err


@dataclass
class UpstreamOutput:
    """Another run's output that a run reads: the stored copy, its identity in the run
    hash (the producer's run hash and the output's name) and what lineage records."""

    path: Path
    identity: str
    label: str


def reusable_run(ctx: Context, job: str, run_hash: str) -> Run | None:
    """The newest completed run of `job` with this hash whose outputs are all still in
    the artifact store, whole. A run whose outputs were deleted or damaged is not reused:
    the job runs again."""
    store = artifact_store(ctx)
    for run in RunStore(ctx.store, ctx.work).completed(job, run_hash):
        if all(store.intact(str(sha)) for sha in run.outputs.values()):
            return run
    return None


def run_job(ctx: Context, res: Resource, run_hash: str, resolver: Resolver,
            upstream: dict[str, UpstreamOutput] | None = None,
            overrides: dict[str, Any] | None = None, parent: Run | None = None,
            step: str | None = None) -> Run:
    """Adopt the completed run with this hash, or run the job now. The run reads stored
    copies of its inputs, and its hash is computed again from them: what changed since
    the plan is never run under the plan's hash."""
    runs = RunStore(ctx.store, ctx.work)
    stop_orphans(runs, ctx.log)
    job_name = res.name
    existing = reusable_run(ctx, job_name, run_hash)
    if existing is not None:
        return existing
    overrides = overrides or {}
    spec = res.spec
    store = artifact_store(ctx)
    upstream = dict(upstream or {})
    staged: dict[str, tuple[DataInput, str, Path]] = {}  # as resolved; as stored
    for key, value in {**(spec.get("inputs") or {}), **overrides.get("inputs", {})}.items():
        if key in upstream:
            continue
        match = OUTPUT_REF.match(str(value))
        if match:
            upstream[key] = job_output(ctx, resolver, res, match.group(2), match.group(3))
            continue
        # The run reads a stored copy: its content, not the file's at plan time, is what
        # the run hash covers and what lineage records.
        data = resolver.data(res, str(value))
        sha = store.put(data.path)
        stored = materialize(ctx, store, sha, data.path.name)
        if stored.is_dir():  # a folder's version is its files' digest, as the plan's is
            sha = resolver.versions.content_sha256(stored)
        staged[key] = data, sha, stored
    params = {**(spec.get("params") or {}), **overrides.get("params", {})}
    identities = {**{k: v.identity for k, v in upstream.items()},
                  **{k: sha for k, (_, sha, _) in staged.items()}}
    actual, parts = resolver.run_hash(res, identities, params)
    if actual != run_hash:
        # What this machine remembered of the files was wrong (or they changed since the
        # plan): the next plan reads them again rather than failing here forever.
        for data, _, _ in staged.values():
            resolver.versions.forget(data.path)
        resolver.versions.forget(ctx.root / str(spec.get("code", ".")))
        reading = ", ".join(f"{d.name} (sha256 {sha[:12]})" for d, sha, _ in staged.values())
        raise ProviderError(res.address, "its inputs, code or environment changed since the "
                            f"plan: plan again (it would read {reading or 'no data'}; run hash "
                            f"{actual[:12]}, planned {run_hash[:12]})")
    inputs: dict[str, Path] = {k: v.path for k, v in upstream.items()}
    versions: dict[str, str] = {k: v.label for k, v in upstream.items()}
    for key, (data, sha, stored) in staged.items():
        # The stored copy is checked by the gate, before its content takes a version
        # number: the run records exactly the version it read and was validated.
        _gate(ctx, res, DataInput(data.name, data.version, sha, stored))
        version = resolver.versions.register(data.name, sha, {"path": str(data.path)})
        copy = DataInput(data.name, version, sha, stored)
        inputs[key] = copy.path
        versions[key] = copy.label
    _, venv, env = resolver.environment(res)
    # Secrets in the command and params reach the job as MLINFRA_SECRET_* variables that
    # its shell expands, so the run records references only; its env gets the values.
    secrets = ctx.secret_environment([spec["command"], params])
    env = {**env, **(spec.get("env") or {})}
    secret_env = sorted(secrets) + sorted(k for k, v in env.items() if sensitive.holds(v))
    job = JobSpec(job=job_name, experiment=str(spec.get("experiment") or
                                               (parent.job if parent else job_name)),
                  command=str(spec["command"]), code=ctx.root / str(spec.get("code", ".")),
                  root=ctx.root, run_hash=run_hash, inputs=inputs, input_versions=versions,
                  params=params, outputs=dict(spec.get("outputs") or {}),
                  env={**secrets, **{k: str(v) for k, v in ctx.resolve_secrets(env).items()}},
                  venv=venv, timeout_s=duration_s(spec.get("timeout")),
                  pipeline=parent.job if parent else None, step=step,
                  parent=parent.id if parent else None, code_digest=str(parts["code"]),
                  secret_env=tuple(secret_env), withheld=ctx.withheld_environment())
    prefix = f"{res.address}{'/' + step if step else ''}"
    launcher = ctx.provider.job_launcher(ctx, res) if ctx.provider is not None else None
    with _slots(ctx, spec.get("compute")):
        try:
            return execute(job, runs, store, runs_root(ctx),
                           on_line=lambda line: ctx.log(f"{prefix}: {line}"),
                           launcher=launcher)
        except RunFailed as err:
            raise ProviderError(res.address, err.message) from err


def job_output(ctx: Context, resolver: Resolver, res: Resource, producer_name: str,
               output: str) -> UpstreamOutput:
    """Output `output` of job `producer_name`'s completed run with its current inputs
    (the graph applies that job first), copied for `res` to read."""
    producer = ctx.config.get("Job", producer_name)
    assert producer is not None  # validated
    producer_hash, _ = resolver.job(producer)
    run = reusable_run(ctx, producer.name, producer_hash)
    if run is None or output not in run.outputs:
        used_by = pipelines_using(ctx, producer.name)
        where = (f"; it runs only as a step of pipeline {', '.join(used_by)}, which may give "
                 "it other inputs" if used_by else "")
        raise ProviderError(res.address, f"job {producer.name} has no completed run with "
                            f"output '{output}' for its current inputs (run hash "
                            f"{producer_hash[:12]}){where}: apply job.{producer.name} first")
    filename = Path(str((producer.spec.get("outputs") or {}).get(output, output))).name
    return UpstreamOutput(materialize(ctx, artifact_store(ctx), str(run.outputs[output]),
                                      filename),
                          f"{producer_hash}:{output}",
                          f"job {producer.name} output {output} (run {run.id})")


def materialize(ctx: Context, store: ArtifactStore, sha: str, filename: str) -> Path:
    """A read-only copy of a stored artifact under its own file name, once per content.
    It is checked against its sha256 each time a run is to read it: a copy that was
    changed is replaced from the artifact store."""
    dest = runs_root(ctx) / "inputs" / sha[:16] / filename
    if dest.exists() or dest.is_symlink():
        if store.is_copy(sha, dest):
            return dest
        ctx.log(f"{dest} does not hold artifact {sha[:12]}: copied again from the store")
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    # A name no other writer (process or machine sharing the folder) picks.
    tmp = dest.with_name(f".{filename}.{os.urandom(8).hex()}")
    store.materialize(sha, tmp)
    try:
        os.replace(tmp, dest)
    except OSError:  # another writer's folder got there first: the same content
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp)
    return dest


def step_order(steps: dict[str, Any]) -> list[str]:
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name, step in steps.items():
        sorter.add(name)
        for value in (step.get("inputs") or {}).values():
            match = OUTPUT_REF.match(str(value))
            if match and match.group(1) == "steps":
                sorter.add(name, match.group(2))
    return list(sorter.static_order())


class PipelineHandler(BaseHandler):
    """Steps run in dependency order as child runs; a step whose hash has a completed
    run is reused, not run again."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        resolver = Resolver(ctx)
        steps = res.spec.get("steps") or {}
        hashes: dict[str, str] = {}
        out: dict[str, Any] = {}
        for name in step_order(steps):
            step = steps[name]
            job = ctx.config.get("Job", step["job"])
            assert job is not None
            launchable(ctx, job)
            merged = {**(job.spec.get("inputs") or {}), **(step.get("inputs") or {})}
            params = {**(job.spec.get("params") or {}), **(step.get("params") or {})}

            def upstream(step_name: str) -> str:
                if step_name not in hashes:
                    raise ProviderError(res.address, f"{step_name} is not an earlier step "
                                        "of this pipeline")
                return hashes[step_name]

            hashes[name], labels = run_identity(resolver, res, job, merged, params, upstream)
            out[name] = {"job": job.name, "run_hash": hashes[name], "inputs_resolved": labels}
        return {"steps_resolved": out}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("Pipeline", change.name)
        assert res is not None
        planned = (change.after or {})["steps_resolved"]
        runs, store = RunStore(ctx.store, ctx.work), artifact_store(ctx)
        resolver = Resolver(ctx)
        stop_orphans(runs, ctx.log)
        owner_pid, owner_started = this_process()
        parent = Run(id=new_run_id(res.name), job=res.name, experiment=res.name,
                     run_hash=digest(planned), status="running", started_at=time.time(),
                     host=HOST, owner_pid=owner_pid, owner_started=owner_started)
        runs.save(parent)
        results: dict[str, Any] = {}
        steps = res.spec["steps"]
        try:
            for name in step_order(steps):
                step = steps[name]
                job = ctx.config.get("Job", step["job"])
                assert job is not None
                upstream: dict[str, UpstreamOutput] = {}
                for key, value in (step.get("inputs") or {}).items():
                    match = OUTPUT_REF.match(str(value))
                    if match and match.group(1) == "steps":
                        source, output = match.group(2), match.group(3)
                        sha = results[source]["outputs"][output]
                        producer = ctx.config.get("Job", steps[source]["job"])
                        filename = ((producer.spec.get("outputs") or {}).get(output)
                                    if producer else None) or output
                        upstream[key] = UpstreamOutput(
                            materialize(ctx, store, sha, Path(filename).name),
                            f"{planned[source]['run_hash']}:{output}",
                            f"step {source} output {output} (run {results[source]['run_id']})")
                run = run_job(ctx, job, planned[name]["run_hash"], resolver, upstream,
                              {"inputs": step.get("inputs") or {},
                               "params": step.get("params") or {}}, parent, name)
                reused = run.parent != parent.id
                if reused:
                    ctx.log(f"{change.address}/{name}: reused (inputs unchanged)")
                results[name] = {"run_id": run.id, "outputs": run.outputs, "reused": reused}
        except BaseException as err:
            # A canceled step (Ctrl-C, `mlinfra runs cancel`) cancels its pipeline run.
            canceled = isinstance(err, KeyboardInterrupt) or any(
                r.parent == parent.id and r.status == "canceled"
                for r in runs.recent(limit=200))
            parent.status = "canceled" if canceled else "failed"
            parent.error = str(err)[:500] or "canceled"
            parent.ended_at = time.time()
            parent.outputs = {"steps": results}
            runs.save(parent)
            raise
        parent.status, parent.ended_at, parent.outputs = "completed", time.time(), {
            "steps": results}
        runs.save(parent)
        return Applied({"run_id": parent.id, "steps": results}, provider_id=parent.id)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        for step in (state.outputs.get("steps") or {}).values():
            seen = _read_run(step, ctx)
            if not seen.exists:
                return seen
        return Observed()
