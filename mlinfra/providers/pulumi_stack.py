"""The docker and kubernetes providers: the stack's objects applied by Pulumi.

Each mlinfra resource owns the rendered objects it gives rise to (an endpoint its
Deployments, Services, HTTPRoute...). Applying a resource's change runs `pulumi up`
on exactly the objects it owns whose rendering changed (and what they need), so the
engine's journal stays one change per resource, and a traffic change touches the
HTTPRoute alone. Endpoints are served only by Pulumi's objects.

Jobs and pipeline steps keep mlinfra's own run path (the run record and hash, reuse,
input staging, output collection: `runs.execute`); only starting and awaiting a run
differ (`job_launcher`). Each run is a Pulumi stack of its own (STACK-run-RUN) holding
that run's container (docker: the environment's image run to completion, `up` waits for
its exit code and output) or batch/v1 Job (kubernetes: Pulumi awaits its completion; the
pod reaches the run's folder through `kubernetes.artifacts_claim`, which must hold the
stack's `artifacts:` folder); the stack is destroyed and removed once the run ended, so
a run never holds the main stack's lock while it trains. Data versions, the model
registry and promotions stay with mlinfra on this machine, as on `local`. Not done:
Ctrl-C and `mlinfra runs cancel` stop local processes only; a run in a container or Job
goes on to its end or its timeout. The job containers and Jobs that `mlinfra render`
writes are templates to run by hand (outputs in the default datastore), not the per-run
objects apply makes.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from mlinfra.batch.handler import BatchEndpointHandler, BatchScoreHandler
from mlinfra.data.handler import DataHandler
from mlinfra.errors import MlinfraError
from mlinfra.events.handler import ScheduleHandler, WebhookHandler
from mlinfra.handler import ScoringLauncher
from mlinfra.monitoring.handler import MonitorHandler
from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import (
    Applied,
    BaseHandler,
    Context,
    Handler,
    Provider,
    ProviderError,
)
from mlinfra.providers.local.endpoint.handler import EndpointHandler
from mlinfra.providers.local.environment import EnvironmentHandler
from mlinfra.providers.local.infra import DatastoreHandler, WorkspaceHandler
from mlinfra.providers.manifests import RenderedObject, secrets_in
from mlinfra.providers.pulumi_program import PULUMI_TYPES, Program
from mlinfra.providers.pulumi_runner import PulumiStack, Step, check_ready
from mlinfra.registry.promotion import PromotionHandler
from mlinfra.registry.register import ModelHandler
from mlinfra.runs.containers import ContainerRun, Finished, Launcher
from mlinfra.runs.jobs import JobHandler, PipelineHandler
from mlinfra.spec.model import Config, Resource
from mlinfra.state.model import ResourceState

# Kinds whose objects Pulumi applies, with the local handler that does mlinfra's own
# part first (the workspace's artifact store, a datastore's folder check, the virtual
# environment local jobs run in; for an endpoint only its facts: its server is
# Pulumi's container or Deployment).
_APPLIED: dict[str, type[Handler] | None] = {
    "Workspace": WorkspaceHandler, "Compute": None, "Datastore": DatastoreHandler,
    "Environment": EnvironmentHandler, "Endpoint": EndpointHandler,
    # a monitor's own part is the domain's; on kubernetes its CronJob is Pulumi's
    "Monitor": MonitorHandler}
# The domain's kinds, handled on this machine as on every provider.
_DOMAIN_KINDS: dict[str, str | type[Handler]] = {
    "Data": DataHandler, "Job": JobHandler, "Pipeline": PipelineHandler,
    "Model": ModelHandler, "Promotion": PromotionHandler,
    "Webhook": WebhookHandler, "Schedule": ScheduleHandler,
    # NOTE: scorings run on this machine on every stack so far.
    "BatchEndpoint": BatchEndpointHandler, "BatchScore": BatchScoreHandler}
COMMANDS_NEEDING_PULUMI = ("plan", "apply", "destroy")


def owned(objects: list[RenderedObject], address: str) -> list[RenderedObject]:
    return [o for o in objects if o.owner == address]


def with_dependencies(objects: list[RenderedObject], keys: set[str]) -> list[str]:
    """`keys` and every object they depend on, transitively: Pulumi refuses to create
    a targeted resource whose untargeted dependency does not exist yet."""
    by_key = {o.key: o for o in objects}
    todo, seen = list(keys), set()
    while todo:
        key = todo.pop()
        if key in seen or key not in by_key:
            continue
        seen.add(key)
        todo.extend(by_key[key].depends_on)
    return sorted(seen)


def object_changes(objects: list[RenderedObject], state: dict[str, ResourceState]
                   ) -> dict[str, list[str]]:
    """Per mlinfra resource, the objects applying it would create, update or delete
    (from the fingerprints its state keeps): "update HTTPRoute httproute-fraud-api"."""
    before = {key: (address, fingerprint) for address, res in state.items()
              for key, fingerprint in (res.outputs.get("objects") or {}).items()}
    kinds = {o.key: o.kind for o in objects}
    out: dict[str, list[str]] = {}
    for obj in objects:
        if not obj.owner:
            continue
        old = before.get(obj.key)
        if old is None:
            out.setdefault(obj.owner, []).append(f"create {obj.kind} {obj.key}")
        elif old[1] != obj.fingerprint():
            out.setdefault(obj.owner, []).append(f"update {obj.kind} {obj.key}")
    for key, (address, _) in before.items():
        if key not in kinds:
            out.setdefault(address, []).append(f"delete {key}")
    return {k: sorted(v) for k, v in sorted(out.items())}


def published_url(outputs: dict[str, Any]) -> str | None:
    """The URL of a container whose port Docker published (Pulumi's `ports` output of
    the endpoint's container), e.g. http://127.0.0.1:32768."""
    for value in outputs.values():
        for port in value if isinstance(value, list) else []:
            if isinstance(port, dict) and port.get("external"):
                return f"http://{port.get('ip') or '127.0.0.1'}:{int(port['external'])}"
    return None


def endpoint_url(config: Config, state: ResourceState) -> str:
    """Where this machine reaches an endpoint of a docker or kubernetes stack: the port
    Docker published, as apply mapped it back from Pulumi's outputs. On kubernetes
    mlinfra knows no such address (Services have in-cluster addresses, the Gateway's is
    the cluster's): the error says how to make one."""
    if state.outputs.get("url"):
        return str(state.outputs["url"])
    name = state.name
    if config.stack.provider == "kubernetes":
        from mlinfra.providers.manifests.kubernetes import namespace

        settings = config.stack.settings.get("kubernetes") or {}
        context = f" --context {settings['context']}" if settings.get("context") else ""
        deployments = state.attributes.get("deployments") or [{}]
        first = str(deployments[0].get("name") or "DEPLOYMENT")
        raise MlinfraError(
            f"endpoint {name} runs on kubernetes, where mlinfra knows no address this "
            "machine reaches (its Services' addresses are the cluster's own): run "
            f"`kubectl{context} -n {namespace(config)} port-forward svc/{name}-{first} "
            "8080:80` and pass --url http://127.0.0.1:8080, or pass --url "
            f"http://GATEWAY/endpoints/{name} (its HTTPRoute splits the traffic there)")
    raise MlinfraError(f"endpoint {name} has no published address in the state: "
                       "apply it again (mlinfra plan shows whether it needs repair)")


def keys_hint(config: Config, state_dir: Path, endpoint: str) -> str:
    """How a person reads an endpoint's keys, which Pulumi's config keeps encrypted."""
    settings = config.stack.settings.get("pulumi") or {}
    stack = str(settings.get("stack") or config.stack.name)
    return (f"endpoint {endpoint}'s keys are kept encrypted in the Pulumi stack's config: "
            f"pass --key (`pulumi config get mlinfra:{endpoint}-keys --stack {stack} --cwd "
            f"{state_dir / 'pulumi-workspace'}`, with PULUMI_CONFIG_PASSPHRASE set, "
            "shows them)")


class PulumiProvider(Provider, abc.ABC):
    """Shared by docker and kubernetes; a subclass says how its program is made."""

    handler_classes: ClassVar[dict[str, str | type[Handler]]] = {**_DOMAIN_KINDS}

    def __init__(self) -> None:
        super().__init__()
        self._rendered: tuple[int, list[RenderedObject]] | None = None

    def cancel(self, force: bool = False) -> None:
        """Ctrl-C: the training runs under way on this machine stop, as on local."""
        from mlinfra.runs.execute import cancel_all

        cancel_all(force)

    def prepare(self, config: Config, command: str) -> None:
        if command in COMMANDS_NEEDING_PULUMI:
            check_ready(config, command)

    def find(self, kind: str) -> Handler | None:
        if kind in _APPLIED and kind not in self.handlers:
            self.handlers[kind] = PulumiHandler(self, kind, _APPLIED[kind])
        return super().find(kind)

    @abc.abstractmethod
    def program(self, objects: list[RenderedObject], contexts: dict[str, Path],
                config: Config, held: dict[str, str] | None = None) -> Program:
        """The inline Pulumi program that creates exactly `objects`; `held`: values of
        the secrets a job run's objects name (mlinfra resolved them)."""

    @abc.abstractmethod
    def run_objects(self, ctx: Context, job: Resource, run: ContainerRun, image: str
                    ) -> list[RenderedObject]:
        """The objects of one job run (its container, its Job)."""

    @abc.abstractmethod
    def run_ended(self, run: ContainerRun, objects: list[RenderedObject],
                  outputs: dict[str, Any], error: str) -> Finished:
        """How the run ended, from its stack's outputs or the error `up` raised."""

    def check_jobs(self, ctx: Context, job: Resource) -> None:
        """Raise ProviderError when `job`'s runs cannot be launched on this stack."""

    @abc.abstractmethod
    def scoring_objects(self, ctx: Context, score: Resource, job_id: str, folder: Path,
                        shards: int, settings: dict[str, Any], image: str
                        ) -> list[RenderedObject]:
        """The objects that score a staged scoring's shards (its container, its Job)."""

    def scoring_launcher(self, ctx: Context, score: Resource) -> ScoringLauncher:
        """A staged scoring is a Pulumi stack of its own (STACK-run-score-JOB) holding the
        scoring image (mlinfra.batch.shard) and the objects that run it: `up` builds the
        image and waits for the containers' end; then the stack is destroyed and
        removed. What they scored is in the job's folder, whatever Pulumi says."""
        self.check_jobs(ctx, score)

        def launch(job_id: str, folder: Path, shards: int, settings: dict[str, Any]) -> str:
            from pulumi.automation.errors import CommandError

            from mlinfra.providers.manifests.files import write_contexts
            from mlinfra.providers.manifests.images import image_name, scoring_context

            files = scoring_context(ctx.config)
            image = image_name(ctx.config, "scoring", files)
            objects = [RenderedObject("image-scoring", "", "Image", {"name": image},
                                      context=files),
                       *self.scoring_objects(ctx, score, job_id, folder, shards, settings,
                                             image)]
            contexts = write_contexts(objects, ctx.state_dir / "render" / f"score-{job_id}")
            program = self.program(objects, contexts, ctx.config, held={})
            stack = PulumiStack(ctx.config, ctx.state_dir, ctx.log, run=f"score-{job_id}")
            error = ""
            try:
                stack.up(program, [])
            except CommandError as err:
                error = _pulumi_error(err)
            try:
                stack.destroy(program, remove=True)
            except CommandError as err:
                ctx.log(f"{score.address}: the Pulumi stack {stack.name} was not removed "
                        f"({_pulumi_error(err)}): `pulumi stack rm {stack.name} --force` "
                        "removes it")
            return error

        return launch

    def job_launcher(self, ctx: Context, job: Resource) -> Launcher:
        """Each run is a Pulumi stack of its own (STACK-run-RUN) holding only the run's
        objects: `up` starts them and waits for the run's end, then the stack is
        destroyed and removed. The environment's image and the network are the main
        stack's (applied with the Environment and the Workspace, before any job)."""
        env = ctx.config.get("Environment", str(job.spec.get("environment") or ""))
        if env is None:
            raise ProviderError(job.address, f"jobs on {self.name} run in their "
                                "environment's image: set `environment`")
        self.check_jobs(ctx, job)

        def launch(run: ContainerRun) -> Finished:
            from pulumi.automation.errors import CommandError

            from mlinfra.providers.manifests.images import environment_context, image_name
            from mlinfra.providers.manifests.locks import environment_locks
            from mlinfra.runs.jobs import artifact_store
            from mlinfra.runs.transfer import run_transfer

            assert env is not None
            lock = environment_locks(ctx.config, ctx.store)[0].get(env.name)
            image = image_name(ctx.config, f"{ctx.config.name}-{env.name}",
                               environment_context(ctx.config, env, lock))
            # With artifacts on S3 the run's files go through the artifact store, not
            # through mounts (runs/transfer.py).
            transfer = run_transfer(artifact_store(ctx), run)
            if transfer is not None:
                run = transfer.container_run()
            objects = self.run_objects(ctx, job, run, image)
            program = self.program(objects, {}, ctx.config,
                                   held={name: run.env[name] for name in run.secret_env})
            stack = PulumiStack(ctx.config, ctx.state_dir, ctx.log, run=run.run_id)
            try:
                outputs = stack.up(program, [])
                if transfer is not None:
                    transfer.collect()
                ended = self.run_ended(run, objects, outputs, "")
            except CommandError as err:
                if transfer is not None:
                    transfer.collect()
                ended = self.run_ended(run, objects, {}, _pulumi_error(err))
            try:
                stack.destroy(program, remove=True)
            except CommandError as err:
                ctx.log(f"{job.address}: the Pulumi stack {stack.name} of run {run.run_id} "
                        f"was not removed ({_pulumi_error(err)}): `pulumi stack rm "
                        f"{stack.name} --force` removes it")
            return ended

        return launch

    def extra_targets(self, stack: PulumiStack, config: Config) -> list[str]:
        """URNs every targeted up includes besides the objects' (an explicit provider)."""
        return []

    def applied_kinds(self, objects: list[RenderedObject]) -> list[RenderedObject]:
        """The objects Pulumi applies: not the job runs (jobs run on this machine)."""
        return [o for o in objects if not o.owner.startswith(("job.", "pipeline."))
                and not o.key.startswith("image-job-")]

    def render(self, ctx: Context) -> list[RenderedObject]:
        from mlinfra.providers.manifests.render import render_stack, stack_inputs

        return self.applied_kinds(render_stack(ctx.config, stack_inputs(ctx)))

    def stack(self, ctx: Context) -> PulumiStack:
        return PulumiStack(ctx.config, ctx.state_dir, ctx.log)

    def build(self, ctx: Context, objects: list[RenderedObject]) -> Program:
        from mlinfra.providers.manifests.files import write_contexts

        contexts = write_contexts(objects, ctx.state_dir / "render")
        return self.program(objects, contexts, ctx.config)

    def plan_notes(self, ctx: Context) -> list[str]:
        """Under the plan: the objects each resource's change touches, then what
        Pulumi's preview says it would do (every object at once)."""
        objects = self.render(ctx)
        lines = ["", f"Objects on {self.name} (applied by Pulumi):"]
        changes = object_changes(objects, ctx.store.resources())
        for address, items in changes.items():
            lines += [f"  {address}:"] + [f"    {item}" for item in items]
        if not changes:
            lines.append("  no object changes")
        steps = self.stack(ctx).preview(self.build(ctx, objects))
        owners = {o.key: o.owner or "(shared)" for o in objects}
        lines.append("Pulumi preview:")
        for step in steps:
            if step.type.startswith("pulumi:pulumi:"):
                continue
            diffs = f" ({', '.join(step.diffs)})" if step.diffs else ""
            lines.append(f"  {owners.get(step.key, '(removed)')}: {step.op} {step.type} "
                         f"{step.key}{diffs}")
        if len(lines) and lines[-1] == "Pulumi preview:":
            lines.append("  no changes")
        return lines

    def preview(self, ctx: Context) -> list[Step]:
        """What Pulumi would change to reach the configuration, every object at once."""
        objects = self.render(ctx)
        return self.stack(ctx).preview(self.build(ctx, objects))

    def apply_objects(self, ctx: Context, address: str, keep_owned: bool) -> dict[str, Any]:
        """`pulumi up` on the objects `address` owns (all of them gone when not
        `keep_owned`); returns their fingerprints and Pulumi's outputs for the state."""
        objects = self.render(ctx)
        previous = ctx.store.get(address)
        before = dict((previous.outputs.get("objects") or {}) if previous else {})
        if not keep_owned:
            objects = [o for o in objects if o.owner != address]
        mine = {o.key: o.fingerprint() for o in owned(objects, address)}
        touched = {k for k in set(mine) | set(before) if mine.get(k) != before.get(k)}
        if not touched:
            return {"objects": mine, "kinds": {o.key: o.kind for o in owned(objects, address)}}
        stack = self.stack(ctx)
        program = self.build(ctx, objects)
        # Every generated secret the program reads, not only this resource's: the
        # program declares every object.
        generated = sorted({s.generated for o in objects for s in secrets_in(o.body)
                            if s.generated})
        if generated:
            from mlinfra.providers.local.endpoint.keys import new_key

            made = stack.ensure_secret_config(program, generated,
                                              lambda _: f"{new_key()},{new_key()}")
            for name in made:
                ctx.log(f"{address}: new keys made and kept encrypted in Pulumi's config "
                        f"as mlinfra:{name}")
        kinds = {o.key: o.kind for o in objects}
        kinds.update(dict(previous.outputs.get("kinds") or {}) if previous else {})
        keys = with_dependencies(objects, touched & set(mine)) + sorted(touched - set(mine))
        urns = [stack.urn(key, PULUMI_TYPES[kinds[key]]) for key in keys]
        outputs = stack.up(program, urns + self.extra_targets(stack, ctx.config))
        applied = {k: v for k, v in outputs.items() if k in mine}
        result: dict[str, Any] = {"objects": mine,
                                  "kinds": {o.key: o.kind for o in owned(objects, address)},
                                  "pulumi": applied}
        url = published_url(applied)
        if url:
            result["url"] = url
        return result


def _pulumi_error(err: Exception) -> str:
    """The end of what Pulumi printed about a failed operation."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return "\n".join(lines[-12:])


class PulumiHandler(BaseHandler):
    """A kind whose objects Pulumi applies, after mlinfra's own part (if any)."""

    def __init__(self, provider: PulumiProvider, kind: str,
                 local: type[Handler] | None) -> None:
        self.provider, self.kind = provider, kind
        self.local: Handler | None = local() if local is not None else None

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        if self.kind == "Compute":
            kind = str(res.spec.get("type", "local"))
            if kind not in ("local", self.provider.name):
                raise ProviderError(res.address, f"type '{kind}' needs the {kind} provider; "
                                    f"this stack ({ctx.config.stack.name}) uses the "
                                    f"{self.provider.name} provider")
        found = self.local.facts(res, ctx) if self.local is not None else {}
        if self.kind == "Workspace" and self.provider.name == "kubernetes":
            from mlinfra.providers.manifests.agent import agent_image

            agent = agent_image(ctx.config)
            if agent is not None:
                found = {**found, "agent_image": agent}
        return found

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        if self.local is not None and self.kind != "Endpoint":
            return self.local.read(state, ctx)
        return Observed()

    def create(self, change: Change, ctx: Context) -> Applied:
        outputs: dict[str, Any] = {}
        if self.local is not None and self.kind != "Endpoint":
            outputs.update(self.local.create(change, ctx).outputs)
        outputs.update(self.provider.apply_objects(ctx, change.address, keep_owned=True))
        return Applied(outputs, provider_id=f"pulumi:{change.address}")

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        return self.create(change, ctx)

    def delete(self, state: ResourceState, ctx: Context) -> None:
        self.provider.apply_objects(ctx, state.address, keep_owned=False)
        if self.local is not None and self.kind != "Endpoint":
            self.local.delete(state, ctx)
