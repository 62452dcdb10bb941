"""Batch endpoints on this machine: a BatchEndpoint's deployments, and each declared
scoring (a BatchScore) scored by mlinfra.batch into a new version of its output Data
asset, with lineage. A scoring is identified by the model's and the input's content
and the output's form: the same one is never scored twice."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.data.versions import DataVersions, file_sha256
from mlinfra.handler import (
    Applied,
    BaseHandler,
    Context,
    ProviderError,
    ScoringLauncher,
    workspace_dir,
)
from mlinfra.plan.model import Change, Observed
from mlinfra.registry.models import ModelRegistry, ModelVersion, RegistryError
from mlinfra.runs.jobs import Resolver, artifact_store
from mlinfra.spec.model import Ref, Resource, duration_s
from mlinfra.state.model import ResourceState

if TYPE_CHECKING:
    from mlinfra.batch.scoring import Progress, Scoring, Summary


def governed(ctx: Context, model: str, alias: str) -> bool:
    """A Promotion moves that alias (so it may point nowhere until apply runs it)."""
    return any(p.spec.get("model") == model and p.spec.get("alias", "champion") == alias
               for p in ctx.config.of("Promotion").values())


def jobs_root(ctx: Context) -> Path:
    """Where the workspace's batch jobs keep their folders."""
    return workspace_dir(ctx, ctx.config.workspace) / "batch" / "jobs"


def deployment_of(ctx: Context, endpoint: Resource, name: str | None,
                  address: str) -> dict[str, Any]:
    deployments = {d["name"]: d for d in endpoint.spec["deployments"]}
    chosen = name or endpoint.spec.get("default") or next(iter(deployments))
    if chosen not in deployments:
        raise ProviderError(address, f"batch endpoint {endpoint.name} has no deployment "
                            f"'{chosen}' (it has {', '.join(deployments)})")
    return dict(deployments[chosen])


def resolve_model(ctx: Context, deployment: dict[str, Any], address: str
                  ) -> ModelVersion | None:
    """The version a deployment's reference names now; None while an alias a Promotion
    governs points nowhere yet (the apply that runs it decides)."""
    ref = Ref.parse(str(deployment["model"]))
    assert ref is not None  # validated
    registry = ModelRegistry(ctx.writer)
    try:
        return registry.resolve(ref.name, ref.version, ref.alias)
    except RegistryError as err:
        if ref.alias and governed(ctx, ref.name, ref.alias):
            return None
        if ref.version is None and ref.alias is None and ctx.config.get(
                "Model", ref.name) is not None:
            return None  # registered by this apply
        raise ProviderError(address, f"deployment {deployment['name']}: {err.message}"
                            ) from None


def scoring(ctx: Context, endpoint: Resource, deployment: dict[str, Any],
            model: ModelVersion, input_path: Path, input_format: str, input_label: str,
            input_sha256: str, address: str) -> Scoring:
    from mlinfra.batch.scoring import Output, Scoring, Settings

    store = artifact_store(ctx)
    if not store.exists(model.sha256):
        raise ProviderError(address, f"{model.ref}'s file is gone from the artifact store: "
                            "apply its Model again, or point the deployment at another "
                            "version")
    return Scoring(endpoint=endpoint.name, deployment=str(deployment["name"]),
                   model=model.name, version=model.version,
                   model_path=store.path(model.sha256), model_sha256=model.sha256,
                   input_path=input_path, input_format=input_format,
                   input_label=input_label, input_sha256=input_sha256,
                   settings=Settings.of(deployment, duration_s),
                   output=Output.of(dict(endpoint.spec.get("output") or {})))


def data_format(ctx: Context, name: str) -> str:
    data = ctx.config.get("Data", name)
    return str(data.spec.get("format", "csv")) if data else "csv"


class BatchEndpointHandler(BaseHandler):
    """Nothing runs between scorings: the resource records what each deployment's
    reference names, and a plan refuses one that names nothing."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        for deployment in res.spec["deployments"]:
            resolve_model(ctx, deployment, res.address)
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("BatchEndpoint", change.name)
        assert res is not None
        found = {d["name"]: resolve_model(ctx, d, change.address)
                 for d in res.spec["deployments"]}
        return Applied({"deployments": {name: v.ref if v else None
                                        for name, v in found.items()}})


class BatchScoreHandler(BaseHandler):
    """A declared scoring: rescored when its model version, its input data version or
    the output's form changes, never twice for the same ones."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        """The input's data version and what decides the model's: its reference and,
        for a declared Model, its source (a retrain in this apply may give the reference
        a new version). The version a reference names is read at refresh (`read`): an
        alias moved since the last scoring is a change to make."""
        endpoint = ctx.config.get("BatchEndpoint", str(res.spec["endpoint"]))
        assert endpoint is not None
        deployment = deployment_of(ctx, endpoint, str(res.spec["deployment"]), res.address)
        data = Resolver(ctx).data(res, str(res.spec["data"]))
        resolve_model(ctx, deployment, res.address)  # a reference naming nothing: refused
        if ctx.provider is not None:  # a stack whose containers cannot score: refused
            ctx.provider.scoring_launcher(ctx, res)
        ref = Ref.parse(str(deployment["model"]))
        assert ref is not None
        declared = ctx.config.get("Model", ref.name)
        # a retrain moves only the latest version, or an alias a Promotion governs
        moves = ref.version is None and (ref.alias is None or governed(ctx, ref.name,
                                                                        ref.alias))
        return {
            "input": data.label, "input_sha256": data.sha256,
            "model": str(deployment["model"]),
            "model_source": ctx.facts(declared) if declared is not None and moves else {},
            "scoring": {k: deployment[k] for k in ("mini_batch_size", "output_action")
                        if k in deployment} | {"output": endpoint.spec.get("output") or {}},
        }

    def create(self, change: Change, ctx: Context) -> Applied:
        from mlinfra.batch.scoring import BatchFailed, Scorer, render
        from mlinfra.batch.shards import JobBusy
        from mlinfra.batch.source import BatchInputError

        res = ctx.config.get("BatchScore", change.name)
        assert res is not None
        endpoint = ctx.config.get("BatchEndpoint", str(res.spec["endpoint"]))
        assert endpoint is not None
        deployment = deployment_of(ctx, endpoint, str(res.spec["deployment"]), res.address)
        data = Resolver(ctx).data(res, str(res.spec["data"]))
        planned = (change.after or {}).get("input_sha256")
        if planned and planned != data.sha256:
            raise ProviderError(change.address, f"{data.name} changed since the plan was "
                                "made: plan again")
        model = resolve_model(ctx, deployment, res.address)
        if model is None:
            raise ProviderError(change.address, f"{deployment['model']} names no version "
                                "after the models and promotions of this apply")
        job = scoring(ctx, endpoint, deployment, model, data.path,
                      data_format(ctx, data.name), data.label, data.sha256, res.address)
        kept = self._scored_before(ctx, change.name, job)
        if kept is not None:
            ctx.log(f"{change.address}: {model.ref} over {data.label} was scored before "
                    f"({change.name}:{kept['version']}): not scored again")
            return Applied(kept, provider_id=f"{change.name}:{kept['version']}")
        ctx.log(f"{change.address}: scoring {data.label} with {model.ref} "
                f"({endpoint.name}/{deployment['name']})")
        launcher = ctx.provider.scoring_launcher(ctx, res) if ctx.provider else None
        try:
            if launcher is None:
                summary = Scorer(job, jobs_root(ctx), _progress_log(ctx, change.address)
                                 ).run()
            else:
                summary = _in_containers(ctx, job, launcher, change.address)
        except (BatchFailed, BatchInputError, JobBusy) as err:
            raise ProviderError(change.address, err.message) from None
        ctx.log(render(summary))
        return self._register(ctx, change.name, job, summary)

    def _scored_before(self, ctx: Context, name: str, job: Scoring) -> dict[str, Any] | None:
        """The output's version `job` gave before, if it is kept and passes `job`'s
        error threshold (one scored under a laxer one is scored again)."""
        store = artifact_store(ctx)
        for version in reversed(DataVersions(ctx.writer).list(name)):
            lineage = version.metadata.get("lineage", {})
            if lineage.get("job") == job.job_id and job.settings.passes(int(
                    lineage.get("failed_rows") or 0)) and store.exists(version.sha256):
                return _outputs(version.version, version.sha256, version.metadata)
        return None

    def _register(self, ctx: Context, name: str, job: Scoring, summary: Summary
                  ) -> Applied:
        assert summary.output is not None  # a declared scoring appends rows
        store = artifact_store(ctx)
        sha = store.put(Path(summary.output))
        metadata = {
            "path": str(store.path(sha)), "format": job.output.format,
            "rows": summary.scored_rows, "bytes": Path(summary.output).stat().st_size,
            "lineage": {"job": job.job_id, "endpoint": job.endpoint,
                        "deployment": job.deployment, "model": f"{job.model}:{job.version}",
                        "model_sha256": job.model_sha256, "data": job.input_label,
                        "data_sha256": job.input_sha256,
                        "failed_rows": summary.failed_rows}}
        versions = DataVersions(ctx.writer)
        before = versions.find(name, sha)
        version = before if before is not None else versions.register(name, sha, metadata)
        if before is None:
            ctx.log(f"batchscore.{name}: registered data version {name}:{version}")
        else:  # content-addressed, as any Data: its lineage is its first scoring's
            ctx.log(f"batchscore.{name}: the scores are those of {name}:{version}, which "
                    "stays the version, with the lineage of the scoring that wrote it")
        return Applied(_outputs(version, sha, metadata), provider_id=f"{name}:{version}")

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        version = state.outputs.get("version")
        if version is None:
            return Observed()
        found = DataVersions(ctx.writer).get(state.name, int(version))
        if found is None:
            return Observed(False, f"version {version} is missing from the registry")
        if not artifact_store(ctx).exists(found.sha256):
            return Observed(False, f"the scores of version {version} are missing from the "
                            "artifact store")
        return self._model_moved(state, ctx)

    def _model_moved(self, state: ResourceState, ctx: Context) -> Observed:
        """The deployment's reference names another version than the one scored (an
        alias moved, a newer latest): scored again by an update."""
        res = ctx.config.get("BatchScore", state.name)
        endpoint = ctx.config.get("BatchEndpoint", str(res.spec["endpoint"])) if res else None
        if res is None or endpoint is None:
            return Observed()
        deployments = {d["name"]: d for d in endpoint.spec["deployments"]}
        deployment = deployments.get(str(res.spec["deployment"]))
        ref = Ref.parse(str(deployment["model"])) if deployment else None
        scored = str(state.outputs.get("model") or "")
        if ref is None or not scored or deployment is None:
            return Observed()
        try:
            now = ModelRegistry(ctx.writer).resolve(ref.name, ref.version, ref.alias)
        except RegistryError:
            return Observed()
        if now.ref == scored:
            return Observed()
        before = scored.rpartition(":")[2]
        message = f"{ref} moved {before} -> {now.version}: it scored {scored}, {ref} is " \
            f"{now.ref} now"
        kept = self._kept_for(ctx, res, endpoint, deployment, now)
        if kept is not None:  # the alias moved back: apply takes that version again
            message += (f"; {now.ref} over {kept['input']} was scored before: "
                        f"{state.name}:{kept['version']}")
        return Observed(True, message, update=True)

    def _kept_for(self, ctx: Context, res: Resource, endpoint: Resource,
                  deployment: dict[str, Any], model: ModelVersion) -> dict[str, Any] | None:
        """The version of the output that `model` gave for the input as it is now, if
        one was scored (and is kept): what apply takes instead of scoring again."""
        data = Resolver(ctx).data(res, str(res.spec["data"]))
        try:
            job = scoring(ctx, endpoint, deployment, model, data.path,
                          data_format(ctx, data.name), data.label, data.sha256, res.address)
        except ProviderError:  # its file is gone: scored again, or refused, by apply
            return None
        return self._scored_before(ctx, res.name, job)


def _in_containers(ctx: Context, job: Scoring, launcher: ScoringLauncher, address: str
                   ) -> Summary:
    """Stage the scoring, have the provider's containers score its shards (an Indexed
    Job's pods, a docker container), then write the output from them here."""
    from dataclasses import asdict

    from mlinfra.batch.shard import assemble, stage

    root = jobs_root(ctx)
    shards = stage(job, root)
    ctx.log(f"{address}: {shards} mini-batches staged for the containers to score")
    error = launcher(job.job_id, root / job.job_id, shards, asdict(job.settings))
    if error:
        ctx.log(f"{address}: {error}")
    return assemble(job, root)


def _outputs(version: int, sha: str, metadata: dict[str, Any]) -> dict[str, Any]:
    lineage = metadata.get("lineage") or {}
    return {"version": version, "sha256": sha, "path": metadata.get("path"),
            "format": metadata.get("format"), "rows": metadata.get("rows"),
            "model": lineage.get("model"), "input": lineage.get("data"),
            "job": lineage.get("job"), "failed_rows": lineage.get("failed_rows", 0)}


def _progress_log(ctx: Context, address: str) -> Any:
    import time

    last = [time.monotonic()]

    def report(progress: Progress) -> None:
        if progress.rows and time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            ctx.log(f"{address}: {progress.rows:,} rows scored, {progress.mini_batches} "
                    f"mini-batches, {progress.failed_rows} rows failed")

    return report


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def input_of(ctx: Context, text: str, address: str) -> tuple[Path, str, str, str]:
    """`--input`: a Data reference (NAME, NAME:VERSION) of the project, or a file.
    Returns its path, format, label and sha256."""
    from mlinfra.batch.source import format_of

    ref = Ref.parse(text)
    if ref is not None and ref.alias is None and ctx.config.get("Data", ref.name):
        found = Resolver(ctx).data(ctx.config.get("Data", ref.name), text)  # type: ignore[arg-type]
        label = found.label
        if not found.registered:  # plan's name for content apply will register
            if ref.version is not None:
                raise ProviderError(address, f"--input {text}: data {ref.name} has no "
                                    f"version {ref.version} yet: apply it first")
            label = f"{_shown(found.path, ctx.root)} (data {ref.name}, not applied)"
        return found.path, data_format(ctx, ref.name), label, found.sha256
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(ctx.config.of("Data"))) or "none"
        raise ProviderError(address, f"--input {text}: neither a file nor a Data of the "
                            f"project (Data: {known})")
    return path.resolve(), format_of(path), str(path), file_sha256(path)
