"""Models on the local machine: register the producing run's output (or a file) as a
version, refuse what onnxruntime cannot load, and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlinfra.data.versions import file_sha256
from mlinfra.graph import address
from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError
from mlinfra.providers.local.jobs import Resolver, artifact_store
from mlinfra.registry.models import ModelRegistry
from mlinfra.runs.store import RunStore
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState

DEFAULT_METRICS = ["auc", "accuracy"]


class ModelHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        source = res.spec["from"]
        facts: dict[str, Any] = {}
        if "path" in source:
            facts["source_sha256"] = file_sha256(ctx.root / str(source["path"]))
        elif "job" in source:
            job = ctx.config.get("Job", source["job"])
            assert job is not None
            facts["source_run_hash"] = ctx.facts(job).get("run_hash")
        else:
            pipeline = ctx.config.get("Pipeline", source["pipeline"])
            assert pipeline is not None
            steps = ctx.facts(pipeline)["steps_resolved"]
            facts["source_run_hash"] = steps[source["step"]]["run_hash"]
        evaluation = res.spec.get("evaluation")
        if evaluation:
            facts["evaluation_data"] = Resolver(ctx).data(res, str(evaluation["data"])).label
        return facts

    def _artifact(self, res: Resource, ctx: Context) -> tuple[Path, str | None]:
        """The file to register and the run that produced it."""
        source = res.spec["from"]
        if "path" in source:
            return ctx.root / str(source["path"]), None
        if "job" in source:
            state = ctx.store.get(address("Job", source["job"]))
            run_id = (state.outputs.get("run_id") if state else None)
        else:
            state = ctx.store.get(address("Pipeline", source["pipeline"]))
            steps = (state.outputs.get("steps") or {}) if state else {}
            run_id = (steps.get(source["step"]) or {}).get("run_id")
        run = RunStore(ctx.store).get(str(run_id)) if run_id else None
        if run is None or run.status != "completed":
            raise ProviderError(res.address, "the run that produces it has not completed")
        sha = run.outputs.get(source["output"])
        if sha is None:
            raise ProviderError(res.address, f"run {run.id} has no output "
                                f"'{source['output']}'")
        return artifact_store(ctx).path(sha), run.id

    def create(self, change: Change, ctx: Context) -> Applied:
        # NOTE: imported here: NumPy and onnxruntime cost more than a plan takes.
        from mlinfra.registry.evaluate import ModelInvalid, load_session, score, signature
        from mlinfra.registry.onnx_files import self_contained

        res = ctx.config.get("Model", change.name)
        assert res is not None
        path, run_id = self._artifact(res, ctx)
        try:
            path = self_contained(path, artifact_store(ctx))  # its external data written in
            session = load_session(path)
        except ModelInvalid as err:
            raise ProviderError(res.address, f"refused: {err.message}") from None
        sha = artifact_store(ctx).put(path)
        run = RunStore(ctx.store).get(run_id) if run_id else None
        lineage = {"run_id": run_id, "job": run.job if run else None,
                   "inputs": run.inputs if run else {},
                   "git": run.git if run else {},
                   "environment": run.environment if run else {}}
        registry = ModelRegistry(ctx.store)
        version, created = registry.register(
            res.name, sha, str(res.spec.get("format", "onnx")), signature(session), run_id,
            lineage, {}, dict(res.spec.get("tags") or {}))
        evaluation = res.spec.get("evaluation")
        metrics = version.metrics
        if evaluation:
            data = Resolver(ctx).data(res, str(evaluation["data"]))
            try:
                metrics = score(path, data.path, str(evaluation["label"]),
                                list(evaluation.get("metrics") or DEFAULT_METRICS))
            except ModelInvalid as err:
                raise ProviderError(res.address, f"evaluation failed: {err.message}") from None
            metrics = {**metrics, "evaluated_on": data.label}  # type: ignore[dict-item]
            registry.set_metrics(res.name, version.version, metrics)
        word = "registered" if created else "is already"
        ctx.log(f"{res.address}: {word} version {version.version}")
        return Applied({"version": version.version, "sha256": sha, "metrics": metrics,
                        "run_id": run_id}, provider_id=version.ref)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        version = state.outputs.get("version")
        if version is None:
            return Observed()
        found = ModelRegistry(ctx.store).get(state.name, int(version))
        if found is None:
            return Observed(False, f"version {version} is missing from the registry")
        if not artifact_store(ctx).exists(found.sha256):
            return Observed(False, f"the file of version {version} is missing from the "
                            "artifact store")
        return Observed()
