"""The kubernetes provider: the stack's manifests applied by pulumi-kubernetes to the
cluster of `kubernetes.context`, after its images are built (and pushed to
`kubernetes.registry` when one is named), and each job run as a batch/v1 Job.

A Job's pod reaches the run's folder, code and inputs through the stack's `artifacts:`
folder, which the cluster must mount too: `kubernetes.artifacts_claim` names the
PersistentVolumeClaim (in the stack's namespace) holding that same folder (NFS, or a
hostPath on a one-node cluster). Without both, a job on kubernetes is a plan error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.manifests.kubernetes import namespace, run_job
from mlinfra.providers.pulumi_program import Program, kubernetes_program
from mlinfra.providers.pulumi_runner import PulumiStack
from mlinfra.providers.pulumi_stack import PulumiProvider
from mlinfra.runs.containers import ContainerRun, Finished
from mlinfra.spec.model import Config, Resource


def _on_s3(ctx: Context) -> bool:
    shared = ctx.config.stack.artifacts
    return bool(shared) and str(shared).startswith("s3://")


def artifacts_folder(ctx: Context) -> Path | None:
    shared = ctx.config.stack.artifacts
    if _on_s3(ctx):
        return None
    return (ctx.root / os.path.expanduser(shared)).resolve() if shared else None


class KubernetesProvider(PulumiProvider):
    name = "kubernetes"

    def program(self, objects: list[RenderedObject], contexts: dict[str, Path],
                config: Config, held: dict[str, str] | None = None) -> Program:
        settings = config.stack.settings.get("kubernetes") or {}
        context = str(settings["context"]) if settings.get("context") else None
        return kubernetes_program(objects, contexts, push=bool(settings.get("registry")),
                                  kube_context=context, held=held)

    def extra_targets(self, stack: PulumiStack, config: Config) -> list[str]:
        settings = config.stack.settings.get("kubernetes") or {}
        if not settings.get("context"):
            return []
        return [stack.urn("kubernetes", "pulumi:providers:kubernetes")]

    def check_jobs(self, ctx: Context, job: Resource) -> None:
        settings = ctx.config.stack.settings.get("kubernetes") or {}
        if _on_s3(ctx):
            return  # the run's files go through the artifact store (runs/transfer.py)
        if artifacts_folder(ctx) is None or not settings.get("artifacts_claim"):
            raise ProviderError(job.address, "a Job reads its code and inputs and writes "
                                "its outputs through the stack's artifacts: set "
                                "`artifacts:` in the stack to s3://BUCKET/PREFIX, or to "
                                "a folder this machine and the cluster share (NFS...) and "
                                "`kubernetes.artifacts_claim` to the PersistentVolumeClaim "
                                f"in namespace {namespace(ctx.config)} that holds it")

    def scoring_objects(self, ctx: Context, score: Resource, job_id: str, folder: Path,
                        shards: int, settings: dict[str, Any], image: str
                        ) -> list[RenderedObject]:
        from mlinfra.providers.manifests.kubernetes import scoring_job

        claim = (ctx.config.stack.settings.get("kubernetes") or {})["artifacts_claim"]
        artifacts = artifacts_folder(ctx)
        assert artifacts is not None  # check_jobs
        endpoint = ctx.config.get("BatchEndpoint", str(score.spec["endpoint"]))
        compute = endpoint.spec.get("compute") if endpoint else None
        job = scoring_job(ctx.config, score.name, job_id, folder, image, shards, settings,
                          compute, str(claim), artifacts)
        return [RenderedObject(job.key, job.owner, job.kind, job.body,
                               depends_on=("image-scoring",))]

    def run_objects(self, ctx: Context, job: Resource, run: ContainerRun, image: str
                    ) -> list[RenderedObject]:
        settings = ctx.config.stack.settings.get("kubernetes") or {}
        if not run.mounts:  # through the artifact store: no claim
            return run_job(ctx.config, run, image, job.spec.get("compute"), None, None)
        folder = artifacts_folder(ctx)
        assert folder is not None  # check_jobs
        return run_job(ctx.config, run, image, job.spec.get("compute"),
                       str(settings["artifacts_claim"]), folder)

    def run_ended(self, run: ContainerRun, objects: list[RenderedObject],
                  outputs: dict[str, Any], error: str) -> Finished:
        job = objects[-1]
        where = (f"kubernetes Job {job.body['metadata']['namespace']}/"
                 f"{job.body['metadata']['name']} "
                 f"({job.body['spec']['template']['spec']['containers'][0]['image']})")
        try:  # the pod wrote it in the run's folder, which this machine shares
            logs = (run.run_dir / "output.log").read_text(errors="replace")
        except OSError:
            logs = ""
        if error:
            return Finished(None, logs, f"the Job failed: {error}",
                            timed_out="DeadlineExceeded" in error, where=where)
        return Finished(0, logs, where=where)
