"""Models on the local machine: register the producing run's output (or a file) as a
version, refuse what onnxruntime cannot load, and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.data.versions import file_sha256
from mlinfra.graph import address
from mlinfra.handler import Applied, BaseHandler, Context, ProviderError
from mlinfra.plan.model import Change, Observed
from mlinfra.registry.models import ModelRegistry
from mlinfra.runs.jobs import Resolver, artifact_store
from mlinfra.runs.store import Run, RunStore
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState

if TYPE_CHECKING:
    from mlinfra.registry.evaluate import Predictions, Table


def _run_hash(ctx: Context, source: dict[str, Any]) -> str | None:
    """The run hash of the job or pipeline step whose output `source` names, as planned."""
    if "job" in source:
        job = ctx.config.get("Job", source["job"])
        assert job is not None
        run_hash = ctx.facts(job).get("run_hash")
        return str(run_hash) if run_hash is not None else None
    pipeline = ctx.config.get("Pipeline", source["pipeline"])
    assert pipeline is not None
    return str(ctx.facts(pipeline)["steps_resolved"][source["step"]]["run_hash"])


def _describe(source: dict[str, Any]) -> str:
    if "job" in source:
        return f"job {source['job']} output {source['output']}"
    return f"pipeline {source['pipeline']} step {source['step']} output {source['output']}"


def run_output(ctx: Context, res: Resource, source: dict[str, Any]) -> tuple[Path, Run]:
    """The file a job's or pipeline step's latest run stored as `source['output']`, and
    that run, from the state of the job or pipeline."""
    if "job" in source:
        state = ctx.store.get(address("Job", source["job"]))
        run_id = (state.outputs.get("run_id") if state else None)
    else:
        state = ctx.store.get(address("Pipeline", source["pipeline"]))
        steps = (state.outputs.get("steps") or {}) if state else {}
        run_id = (steps.get(source["step"]) or {}).get("run_id")
    run = RunStore(ctx.store, ctx.work).get(str(run_id)) if run_id else None
    if run is None or run.status != "completed":
        raise ProviderError(res.address, f"the run of {_describe(source)} has not completed")
    sha = run.outputs.get(source["output"])
    if sha is None:
        raise ProviderError(res.address, f"run {run.id} has no output "
                            f"'{source['output']}'")
    return artifact_store(ctx).path(sha), run


def _output_format(ctx: Context, source: dict[str, Any]) -> str:
    """csv, unless the output's declared file name ends in .jsonl or .parquet."""
    job_name = source.get("job")
    if job_name is None:
        pipeline = ctx.config.get("Pipeline", source["pipeline"])
        job_name = ((pipeline.spec.get("steps") or {}).get(source["step"]) or {}).get(
            "job") if pipeline else None
    job = ctx.config.get("Job", str(job_name))
    filename = str(((job.spec.get("outputs") or {}) if job else {}).get(source["output"], ""))
    suffix = Path(filename).suffix.lstrip(".")
    return suffix if suffix in ("jsonl", "parquet") else "csv"


class ModelHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        source = res.spec["from"]
        facts: dict[str, Any] = {}
        if "path" in source:
            facts["source_sha256"] = file_sha256(ctx.root / str(source["path"]))
        else:
            facts["source_run_hash"] = _run_hash(ctx, source)
        evaluation = res.spec.get("evaluation")
        if evaluation:
            data = evaluation["data"]
            if isinstance(data, dict):
                run_hash = _run_hash(ctx, data)
                facts["evaluation_data"] = (f"{_describe(data)} of run hash "
                                            f"{(run_hash or 'unknown')[:12]}")
            else:
                facts["evaluation_data"] = Resolver(ctx).data(res, str(data)).label
        return facts

    def _artifact(self, res: Resource, ctx: Context) -> tuple[Path, str | None]:
        """The file to register and the run that produced it."""
        source = res.spec["from"]
        if "path" in source:
            return ctx.root / str(source["path"]), None
        path, run = run_output(ctx, res, source)
        return path, run.id

    def _evaluation_data(self, res: Resource, ctx: Context, data: Any) -> Table:
        # NOTE: imported here: NumPy costs more than a plan takes.
        from mlinfra.registry.evaluate import read_table

        if isinstance(data, dict):
            path, run = run_output(ctx, res, data)
            return read_table(path, _output_format(ctx, data), f"{_describe(data)} of run "
                              f"{run.id}")
        found = Resolver(ctx).data(res, str(data))
        asset = ctx.config.get("Data", found.name)
        fmt = str(asset.spec.get("format", "csv")) if asset else "csv"
        return read_table(found.path, fmt, found.label)

    def predictions(self, res: Resource, ctx: Context, path: Path) -> Predictions:
        """The predictions of the model file at `path` on `res`'s evaluation data, ready
        to be scored (on every row, or a resample); raises ModelInvalid."""
        from mlinfra.registry.evaluate import predictions

        evaluation = res.spec["evaluation"]
        table = self._evaluation_data(res, ctx, evaluation["data"])
        features = evaluation.get("features")
        return predictions(path, table, str(evaluation["label"]), evaluation.get("metrics"),
                           list(features) if features is not None else None,
                           evaluation.get("positive"))

    def evaluate(self, res: Resource, ctx: Context, path: Path) -> dict[str, Any]:
        """The metrics of the model file at `path` on `res`'s evaluation data, with the
        data they were computed on (`evaluated_on`); raises ModelInvalid."""
        found = self.predictions(res, ctx, path)
        metrics: dict[str, Any] = found.score()
        return {**metrics, "evaluated_on": found.data}

    def create(self, change: Change, ctx: Context) -> Applied:
        # NOTE: imported here: NumPy and onnxruntime cost more than a plan takes.
        from mlinfra.registry.evaluate import ModelInvalid, load_session, signature
        from mlinfra.registry.onnx_files import self_contained

        res = ctx.config.get("Model", change.name)
        assert res is not None
        path, run_id = self._artifact(res, ctx)
        try:
            path = self_contained(path, artifact_store(ctx))  # its external data written in
            session = load_session(path)
        except ModelInvalid as err:
            raise ProviderError(res.address, f"refused: {err.message}") from err
        # Evaluated before it is registered: a model whose evaluation fails takes no
        # version, so it can never be served as `latest`.
        evaluation = res.spec.get("evaluation")
        metrics: dict[str, Any] = {}
        if evaluation:
            try:
                metrics = self.evaluate(res, ctx, path)
            except ModelInvalid as err:
                raise ProviderError(res.address, f"evaluation failed: {err.message}; no "
                                    "version was registered") from err
        sha = artifact_store(ctx).put(path)
        runs = RunStore(ctx.store, ctx.work)
        run = runs.get(run_id) if run_id else None
        lineage = {"run_id": run_id, "job": run.job if run else None,
                   "inputs": run.inputs if run else {},
                   "data": runs.data_read(run) if run else [],
                   "git": run.git if run else {},
                   "environment": run.environment if run else {}}
        registry = ModelRegistry(ctx.writer)
        version, created = registry.register(
            res.name, sha, str(res.spec.get("format", "onnx")), signature(session), run_id,
            lineage, metrics, dict(res.spec.get("tags") or {}))
        if evaluation and not created:
            registry.set_metrics(res.name, version.version, metrics)
        elif not evaluation:
            metrics = version.metrics
        word = "registered" if created else "is already"
        ctx.log(f"{res.address}: {word} version {version.version}")
        self._profile(res, ctx, version.version, path, lineage)
        return Applied({"version": version.version, "sha256": sha, "metrics": metrics,
                        "run_id": run_id}, provider_id=version.ref)

    def _reference(self, res: Resource, ctx: Context, lineage: dict[str, Any]
                   ) -> tuple[Path, str, str] | None:
        """(file, format, label) of a version's reference data: the Model's
        `monitoring.reference`, else the first data version its run read, else its
        evaluation data."""
        from mlinfra.data.versions import DataVersions
        from mlinfra.spec.model import Ref

        chosen = (res.spec.get("monitoring") or {}).get("reference")
        if chosen is not None:
            found = Resolver(ctx).data(res, str(chosen))
            asset = ctx.config.get("Data", found.name)
            return found.path, str(asset.spec.get("format", "csv")) if asset else "csv", \
                found.label
        for label in lineage.get("data") or []:
            ref = Ref.parse(str(label))
            asset = ctx.config.get("Data", ref.name) if ref else None
            version = (DataVersions(ctx.store).get(ref.name, ref.version)
                       if ref is not None else None)
            if asset is not None and version is not None and \
                    artifact_store(ctx).exists(version.sha256):
                return (artifact_store(ctx).path(version.sha256),
                        str(asset.spec.get("format", "csv")), str(label))
        data = (res.spec.get("evaluation") or {}).get("data")
        if isinstance(data, str):
            found = Resolver(ctx).data(res, data)
            asset = ctx.config.get("Data", found.name)
            return found.path, str(asset.spec.get("format", "csv")) if asset else "csv", \
                found.label
        return None

    def _profile(self, res: Resource, ctx: Context, version: int, path: Path,
                 lineage: dict[str, Any]) -> None:
        """The version's reference profile for monitoring, computed once: a version
        whose reference data cannot be read is registered without one, and says so."""
        from mlinfra.monitoring import records
        from mlinfra.monitoring.reference import ReferenceError, compute

        if records.profile_of(ctx.store, res.name, version) is not None:
            return
        try:
            found = self._reference(res, ctx, lineage)
        except ProviderError as err:
            ctx.log(f"{res.address}: no reference profile for monitoring: {err.reason}")
            return
        if found is None:
            ctx.log(f"{res.address}: no reference profile for monitoring: no data to "
                    "profile (set monitoring.reference)")
            return
        file, fmt, label = found
        features = (res.spec.get("evaluation") or {}).get("features")
        try:
            profile = compute(file, fmt, label, path,
                              list(features) if features is not None else None)
        except ReferenceError as err:
            ctx.log(f"{res.address}: no reference profile for monitoring: {err}")
            return
        records.save_profile(ctx.writer, res.name, version, label, profile)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        version = state.outputs.get("version")
        if version is None:
            return Observed()
        found = ModelRegistry(ctx.writer).get(state.name, int(version))
        if found is None:
            return Observed(False, f"version {version} is missing from the registry")
        if not artifact_store(ctx).exists(found.sha256):
            return Observed(False, f"the file of version {version} is missing from the "
                            "artifact store")
        return Observed()
