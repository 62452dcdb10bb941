"""The kubernetes provider: the stack's manifests applied by pulumi-kubernetes to the
cluster of `kubernetes.context`, after its images are built (and pushed to
`kubernetes.registry` when one is named)."""

from __future__ import annotations

from pathlib import Path

from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.pulumi_program import Program, kubernetes_program
from mlinfra.providers.pulumi_runner import PulumiStack
from mlinfra.providers.pulumi_stack import PulumiProvider
from mlinfra.spec.model import Config


class KubernetesProvider(PulumiProvider):
    name = "kubernetes"

    def program(self, objects: list[RenderedObject], contexts: dict[str, Path],
                config: Config) -> Program:
        settings = config.stack.settings.get("kubernetes") or {}
        context = str(settings["context"]) if settings.get("context") else None
        return kubernetes_program(objects, contexts, push=bool(settings.get("registry")),
                                  kube_context=context)

    def extra_targets(self, stack: PulumiStack, config: Config) -> list[str]:
        settings = config.stack.settings.get("kubernetes") or {}
        if not settings.get("context"):
            return []
        return [stack.urn("kubernetes", "pulumi:providers:kubernetes")]
