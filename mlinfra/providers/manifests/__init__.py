"""The objects a docker or kubernetes stack is made of, as plain data.

A pure function turns the project's resources (and what was resolved about them: model
files, datastore folders) into objects: Kubernetes manifests, Docker images with their
build contexts, containers, networks. `mlinfra render` writes them to files, and the
Pulumi programs apply exactly these objects, so what a reviewer reads in the rendered
files is what Pulumi creates.

Secrets never enter an object: where one is needed the object holds a `SecretValue`
naming where the value comes from at apply time (an environment variable, or a key
the provider generates and keeps in Pulumi's encrypted config).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError

MANAGED_BY = "mlinfra"
LABEL_PREFIX = "mlinfra.dev/"


class RenderError(MlinfraError):
    """The project cannot be turned into objects (a model too large for a ConfigMap)."""


@dataclass(slots=True, init=False)
class SecretValue:
    """A value known only at apply time. `env`: the environment variable it is read
    from (`${secret.NAME}` reads NAME); `generated`: a key the provider makes once and
    keeps encrypted in the Pulumi stack's config under that name."""

    env: str
    generated: str

    def __init__(self, env: str = "", generated: str = "") -> None:
        self.env, self.generated = env, generated

    @property
    def source(self) -> str:
        """The environment variable a person (or `secrets.sh`) sets to provide it."""
        if self.env:
            return self.env
        return "MLINFRA_" + re.sub(r"[^A-Z0-9]", "_", self.generated.upper())

    def redacted(self) -> str:
        return f"<secret from ${self.source}>"


@dataclass(slots=True, init=False)
class ContextFile:
    """One file of a Docker build context: its text, or a file of this machine copied
    as it is (`source`)."""

    path: str
    text: str | None
    source: Path | None

    def __init__(self, path: str, text: str | None = None, source: Path | None = None) -> None:
        self.path, self.text, self.source = path, text, source

    def content(self) -> bytes:
        if self.source is not None:
            return self.source.read_bytes()
        return (self.text or "").encode()


@dataclass(slots=True, init=False)
class RenderedObject:
    """One object of the stack. `key` is unique in the stack and names the Pulumi
    resource; `owner` is the address of the mlinfra resource it belongs to, or "" for
    objects every resource shares (the serving image); `kind` is the Kubernetes kind or
    the Docker object type (Image, Container, Network); `body` is the manifest or the
    object's spec; `depends_on` lists keys of objects that must exist first."""

    key: str
    owner: str
    kind: str
    body: dict[str, Any]
    depends_on: tuple[str, ...]
    context: tuple[ContextFile, ...]

    def __init__(self, key: str, owner: str, kind: str, body: dict[str, Any],
                 depends_on: tuple[str, ...] = (),
                 context: tuple[ContextFile, ...] = ()) -> None:
        self.key, self.owner, self.kind, self.body = key, owner, kind, body
        self.depends_on, self.context = depends_on, context

    def fingerprint(self) -> str:
        """Changes exactly when what would be applied changes."""
        text = json.dumps([self.kind, self.body, sorted(self.depends_on)], sort_keys=True,
                          default=_plain)
        files = [(f.path, hashlib.sha256(f.content()).hexdigest()) for f in self.context]
        return hashlib.sha256((text + json.dumps(files)).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, SecretValue):
        return value.redacted()
    raise TypeError(f"cannot render {type(value).__name__}")


def redact(value: Any) -> Any:
    """`value` with every SecretValue replaced by a marker naming its source."""
    if isinstance(value, SecretValue):
        return value.redacted()
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def secrets_in(value: Any) -> list[SecretValue]:
    if isinstance(value, SecretValue):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in secrets_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in secrets_in(v)]
    return []


def labels(project: str, stack: str, address: str = "", **extra: str) -> dict[str, str]:
    """Labels on every object: `-l mlinfra.dev/project=P,mlinfra.dev/stack=S` finds all
    of one project's stack, `mlinfra.dev/resource=endpoint.fraud-api` one resource's."""
    out = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_PREFIX + "project": project,
           LABEL_PREFIX + "stack": stack}
    if address:
        out[LABEL_PREFIX + "resource"] = address
    out.update({LABEL_PREFIX + k: v for k, v in extra.items()})
    return out


def changed_keys(before: list[RenderedObject], after: list[RenderedObject]
                 ) -> dict[str, str]:
    """Object key -> create / update / delete between two renderings: what applying
    `after` over `before` touches."""
    old = {o.key: o.fingerprint() for o in before}
    new = {o.key: o.fingerprint() for o in after}
    out = {k: "create" for k in new if k not in old}
    out.update({k: "delete" for k in old if k not in new})
    out.update({k: "update" for k in new if k in old and old[k] != new[k]})
    return dict(sorted(out.items()))


def content_tag(files: tuple[ContextFile, ...]) -> str:
    """An image tag that changes exactly when its build context does."""
    sha = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        sha.update(f.path.encode() + b"\0" + hashlib.sha256(f.content()).digest())
    return sha.hexdigest()[:12]
