"""The inline Pulumi programs: one Pulumi resource per rendered object, named by its
key, with the object's dependencies as `depends_on`. They add nothing of their own, so
Pulumi applies exactly what `mlinfra render` writes.

A SecretValue becomes a Pulumi secret (`pulumi.Output.secret`) read at apply time from
the environment, from `held` (a run's sensitive variables, which mlinfra resolved) or,
for a generated key, from the stack's encrypted config: it is encrypted with the stack's
passphrase in Pulumi's state, and nowhere in clear.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlinfra.providers.manifests import RenderedObject, SecretValue

CONFIG_NAMESPACE = "mlinfra"

Program = Callable[[], None]


def secret_output(value: SecretValue, held: Mapping[str, str] | None = None) -> Any:
    import pulumi

    if held is not None and value.env in held:
        return pulumi.Output.secret(held[value.env])
    if value.generated:
        # Made before every `up` (PulumiStack.ensure_secret_config); missing only in a
        # preview of an endpoint never applied, whose keys do not exist yet.
        found = pulumi.Config(CONFIG_NAMESPACE).get_secret(value.generated)
        return found if found is not None else pulumi.Output.secret("")
    return pulumi.Output.secret(os.environ.get(value.env, ""))


def _with_secrets(value: Any, held: Mapping[str, str] | None) -> Any:
    """`value` with SecretValues as Pulumi secret outputs (nested dicts and lists)."""
    if isinstance(value, SecretValue):
        return secret_output(value, held)
    if isinstance(value, dict):
        return {k: _with_secrets(v, held) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_with_secrets(v, held) for v in value]
    return value


def _ordered(objects: list[RenderedObject]) -> list[RenderedObject]:
    """Dependencies before dependants, so each resource can name the ones it waits on."""
    by_key = {o.key: o for o in objects}
    done: dict[str, RenderedObject] = {}

    def visit(obj: RenderedObject) -> None:
        if obj.key in done:
            return
        for dep in obj.depends_on:
            if dep in by_key:
                visit(by_key[dep])
        done[obj.key] = obj

    for obj in objects:
        visit(obj)
    return list(done.values())


def _image(obj: RenderedObject, contexts: dict[str, Path], push: bool,
           opts: Any) -> Any:
    import pulumi_docker as docker

    return docker.Image(obj.key, image_name=obj.body["name"], skip_push=not push,
                        build=docker.DockerBuildArgs(context=str(contexts[obj.key]),
                                                     dockerfile=str(contexts[obj.key] /
                                                                    "Dockerfile")),
                        opts=opts)


def docker_program(objects: list[RenderedObject], contexts: dict[str, Path],
                   push: bool = False, held: Mapping[str, str] | None = None) -> Program:
    """Images (built from `contexts`), the network and the containers. A container run
    to completion exports its exit code and output (`{"exit_code", "logs"}`), the
    others their published ports."""

    def program() -> None:
        import pulumi
        import pulumi_docker as docker

        made: dict[str, Any] = {}
        for obj in _ordered(objects):
            opts = pulumi.ResourceOptions(depends_on=[made[d] for d in obj.depends_on
                                                      if d in made])
            body = obj.body
            if obj.kind == "Image":
                made[obj.key] = _image(obj, contexts, push, opts)
            elif obj.kind == "Network":
                made[obj.key] = docker.Network(
                    obj.key, name=body["name"], opts=opts,
                    labels=[docker.NetworkLabelArgs(label=k, value=v)
                            for k, v in sorted(body["labels"].items())])
            elif obj.kind == "Container" and body.get("run_to_completion"):
                made[obj.key] = _container(obj, opts, held)
                # The exit code and output are the run's, not secrets, even though its
                # variables are: mlinfra records them as it does a local run's.
                pulumi.export(obj.key, {
                    "exit_code": pulumi.Output.unsecret(made[obj.key].exit_code),
                    "logs": pulumi.Output.unsecret(made[obj.key].container_logs)})
            elif obj.kind == "Container":
                made[obj.key] = _container(obj, opts, held)
                pulumi.export(obj.key, made[obj.key].ports)
            else:
                raise ValueError(f"docker cannot make a {obj.kind}")

    return program


def _container(obj: RenderedObject, opts: Any, held: Mapping[str, str] | None) -> Any:
    import pulumi
    import pulumi_docker as docker

    body = obj.body
    envs: list[Any] = []
    for name, value in sorted(body.get("env", {}).items()):
        if isinstance(value, SecretValue):
            envs.append(pulumi.Output.concat(name, "=", secret_output(value, held)))
        else:
            envs.append(f"{name}={value}")
    args: dict[str, Any] = {
        "name": body["name"], "image": body["image"], "envs": envs,
        "mounts": [docker.ContainerMountArgs(source=m["source"], target=m["target"],
                                             type="bind", read_only=m["read_only"])
                   for m in body.get("mounts", [])],
        "labels": [docker.ContainerLabelArgs(label=k, value=v)
                   for k, v in sorted(body.get("labels", {}).items())],
    }
    if body.get("network"):
        args["networks_advanced"] = [docker.ContainerNetworksAdvancedArgs(name=body["network"])]
    if body.get("command"):
        args["command"] = body["command"]
    if body.get("working_dir"):
        args["working_dir"] = body["working_dir"]
    if body.get("ports"):
        args["ports"] = [docker.ContainerPortArgs(internal=p["internal"], ip=p["ip"],
                                                  external=p.get("external"))
                         for p in body["ports"]]
    if body.get("restart"):
        args["restart"] = body["restart"]
    if body.get("healthcheck"):
        health = body["healthcheck"]
        args["healthcheck"] = docker.ContainerHealthcheckArgs(
            tests=health["test"], interval=f"{health['interval_s']}s",
            timeout=f"{health['timeout_s']}s", retries=health["retries"],
            start_period=f"{health['start_period_s']}s")
        args["wait"] = True  # up returns once the server is healthy
        args["wait_timeout"] = 120
    if body.get("cpus"):
        args["cpus"] = body["cpus"]
    if body.get("memory_mb"):
        args["memory"] = body["memory_mb"]
    if body.get("gpus"):
        args["gpus"] = body["gpus"]
    if body.get("run_to_completion"):
        # `up` waits for the end (attach) and keeps the exit code and output (logs);
        # a container that exited is what was asked for (must_run false). The create
        # waits past the run's own timeout, not the provider's 20 minutes.
        args.update(must_run=False, attach=True, logs=True)
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            custom_timeouts=pulumi.CustomTimeouts(
                create=f"{int(body.get('timeout_s') or 24 * 3600) + 60}s")))
    return docker.Container(obj.key, opts=opts, **args)


# The Pulumi type of each rendered kind: with the object's key it makes the resource's
# URN, which `pulumi up --target` takes.
PULUMI_TYPES = {
    "Image": "docker:index/image:Image", "Network": "docker:index/network:Network",
    "Container": "docker:index/container:Container",
    "Namespace": "kubernetes:core/v1:Namespace",
    "ResourceQuota": "kubernetes:core/v1:ResourceQuota",
    "PersistentVolumeClaim": "kubernetes:core/v1:PersistentVolumeClaim",
    "Secret": "kubernetes:core/v1:Secret", "ConfigMap": "kubernetes:core/v1:ConfigMap",
    "Service": "kubernetes:core/v1:Service", "Deployment": "kubernetes:apps/v1:Deployment",
    "HorizontalPodAutoscaler": "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
    "Job": "kubernetes:batch/v1:Job", "CronJob": "kubernetes:batch/v1:CronJob",
    "HTTPRoute": "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"}

_KUBERNETES_CLASSES = {
    "Namespace": ("core.v1", "Namespace"),
    "ResourceQuota": ("core.v1", "ResourceQuota"),
    "PersistentVolumeClaim": ("core.v1", "PersistentVolumeClaim"),
    "Secret": ("core.v1", "Secret"),
    "ConfigMap": ("core.v1", "ConfigMap"),
    "Service": ("core.v1", "Service"),
    "Deployment": ("apps.v1", "Deployment"),
    "HorizontalPodAutoscaler": ("autoscaling.v2", "HorizontalPodAutoscaler"),
    "Job": ("batch.v1", "Job"),
    "CronJob": ("batch.v1", "CronJob"),
}


def _snake(name: str) -> str:
    """A manifest's top-level field as the resource's argument (stringData ->
    string_data); nested fields keep the manifest's names, which the SDK passes on."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def kubernetes_program(objects: list[RenderedObject], contexts: dict[str, Path],
                       push: bool, kube_context: str | None = None,
                       held: Mapping[str, str] | None = None) -> Program:
    """Images (built, and pushed when the stack names a registry), then every manifest
    as its typed pulumi_kubernetes resource (the HTTPRoute as a CustomResource)."""

    def program() -> None:
        import importlib

        import pulumi
        import pulumi_kubernetes as k8s

        provider = k8s.Provider("kubernetes", context=kube_context) if kube_context else None
        made: dict[str, Any] = {}
        for obj in _ordered(objects):
            opts = pulumi.ResourceOptions(
                depends_on=[made[d] for d in obj.depends_on if d in made],
                provider=None if obj.kind == "Image" else provider)
            if obj.kind == "Image":
                made[obj.key] = _image(obj, contexts, push, opts)
                continue
            body = _with_secrets(obj.body, held)
            fields = {_snake(k): v for k, v in body.items() if k not in ("apiVersion", "kind")}
            if obj.kind == "HTTPRoute":
                made[obj.key] = k8s.apiextensions.CustomResource(
                    obj.key, api_version=body["apiVersion"], kind=body["kind"], opts=opts,
                    **fields)
                continue
            module, name = _KUBERNETES_CLASSES[obj.kind]
            cls = getattr(importlib.import_module(f"pulumi_kubernetes.{module}"), name)
            made[obj.key] = cls(obj.key, opts=opts, **fields)
            if obj.kind == "Service":
                pulumi.export(obj.key, made[obj.key].spec.apply(
                    lambda spec: spec.cluster_ip if spec else None))

    return program
