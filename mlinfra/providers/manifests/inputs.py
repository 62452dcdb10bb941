"""What rendering needs to know beyond the YAML: each endpoint deployment's model file,
each datastore's folder, the serving code and its pinned requirements. Resolving reads
the registry and the artifact store; rendering itself reads nothing."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.spec.model import Config, Ref

# What the endpoint server imports (mlinfra.serving stands apart from the rest of
# mlinfra), pinned to the versions this machine runs, so an image serves as `local` does.
SERVING_DISTRIBUTIONS = ("onnxruntime", "numpy", "uvicorn", "uvloop", "httptools", "orjson",
                         "pyarrow")
DEFAULT_BASE_IMAGE = "python:3.11-slim"
# What a rendered object shows for a value that only the apply can know (a model
# version the apply trains and registers), as Terraform shows it.
KNOWN_AFTER_APPLY = "(known after apply)"


@dataclass(slots=True, init=False)
class ModelFile:
    """The version a deployment serves and the stored file holding it. `url`: the
    object holding it in the artifact store, when that is object storage (servers then
    fetch it when they start); None for a folder store (the file travels with the
    objects). `path` None: the version is known only after apply."""

    name: str
    version: int | str
    sha256: str
    path: Path | None
    url: str | None

    def __init__(self, name: str, version: int | str, sha256: str, path: Path | None,
                 url: str | None = None) -> None:
        self.name, self.version, self.sha256, self.path = name, version, sha256, path
        self.url = url

    @property
    def known(self) -> bool:
        return self.path is not None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(slots=True, init=False)
class StackInputs:
    """Everything rendering reads besides the configuration. `models` maps an endpoint's
    name to its deployments' files; an endpoint in `unresolved` (address -> why) is left
    out until its models resolve."""

    models: dict[str, dict[str, ModelFile]]
    unresolved: dict[str, str]
    datastores: dict[str, Path]
    serving_requirements: list[str]
    serving_sources: list[tuple[str, Path]]
    locks: dict[str, list[str]]
    notes: list[str]

    def __init__(self, models: dict[str, dict[str, ModelFile]] | None = None,
                 unresolved: dict[str, str] | None = None,
                 datastores: dict[str, Path] | None = None,
                 serving_requirements: list[str] | None = None,
                 serving_sources: list[tuple[str, Path]] | None = None,
                 locks: dict[str, list[str]] | None = None,
                 notes: list[str] | None = None) -> None:
        self.models = models if models is not None else {}
        self.unresolved = unresolved if unresolved is not None else {}
        self.datastores = datastores if datastores is not None else {}
        self.serving_requirements = (serving_requirements if serving_requirements is not None
                                     else serving_requirements_pinned())
        self.serving_sources = (serving_sources if serving_sources is not None
                                else serving_source_files())
        self.locks = locks if locks is not None else {}  # Environment -> pinned lines
        self.notes = notes if notes is not None else []


def serving_requirements_pinned() -> list[str]:
    out = []
    for name in SERVING_DISTRIBUTIONS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def fetch_requirements(inputs: StackInputs, captures: str | None = None) -> list[str]:
    """The fsspec package a server needs to fetch its models from object storage (and
    to write its captures there, `captures` their URL), pinned to the version this
    machine reaches the store with."""
    from mlinfra.spec.storage import SCHEMES

    urls = [m.url for files in inputs.models.values() for m in files.values() if m.url]
    if captures:
        urls.append(captures)
    packages = sorted({SCHEMES[url.split("://", 1)[0]][1] for url in urls})
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def serving_source_files() -> list[tuple[str, Path]]:
    """(path in the image's source folder, file here) of the endpoint server's code."""
    package = Path(__file__).resolve().parent.parent.parent
    files = [("mlinfra/__init__.py", package / "__init__.py")]
    files += [(f"mlinfra/serving/{p.name}", p)
              for p in sorted((package / "serving").glob("*.py"))]
    return files


def resolve(config: Config, store: Any, artifacts: Any, datastore_root: Any
            ) -> StackInputs:
    """Resolve every endpoint's model references now (after the promotions apply has
    made, when called during apply). `store` is the stack's state store, `artifacts`
    its ArtifactStore, `datastore_root(spec)` a datastore's folder."""
    from mlinfra.registry.models import ModelRegistry, RegistryError

    registry = ModelRegistry(store)
    models: dict[str, dict[str, ModelFile]] = {}
    unresolved: dict[str, str] = {}
    for endpoint in config.of("Endpoint").values():
        files: dict[str, ModelFile] = {}
        for deployment in endpoint.spec.get("deployments") or []:
            ref = Ref.parse(str(deployment["model"]))
            assert ref is not None  # validated
            try:
                version = registry.resolve(ref.name, ref.version, ref.alias)
            except RegistryError as err:
                if _applied_later(config, ref):
                    files[deployment["name"]] = ModelFile(ref.name, KNOWN_AFTER_APPLY,
                                                          KNOWN_AFTER_APPLY, None,
                                                          _url(artifacts, None))
                    continue
                unresolved[endpoint.address] = (f"deployment {deployment['name']}: "
                                                f"{err.message}")
                break
            if not artifacts.exists(version.sha256):
                unresolved[endpoint.address] = (f"deployment {deployment['name']}: the file "
                                                f"of {version.ref} is not in the artifact "
                                                "store")
                break
            files[deployment["name"]] = ModelFile(version.name, version.version,
                                                  version.sha256,
                                                  artifacts.path(version.sha256, verify=False),
                                                  _url(artifacts, version.sha256))
        else:
            models[endpoint.name] = files
    datastores = {d.name: datastore_root(d.spec) for d in config.of("Datastore").values()}
    from mlinfra.providers.manifests.locks import environment_locks

    locks, notes = environment_locks(config, store)
    return StackInputs(models=models, unresolved=unresolved, datastores=datastores,
                       locks=locks, notes=notes)


def _applied_later(config: Config, ref: Ref) -> bool:
    """Whether the apply makes the version `ref` names: a Model of this project that
    registers versions, referred to as its latest or by the alias its Promotion moves
    (the first version that passes the gates takes an empty alias)."""
    model = config.get("Model", ref.name)
    if model is None or ref.version is not None:
        return False
    if ref.alias in (None, "latest"):
        return True
    return any(p.spec.get("model") == ref.name and p.spec.get("alias", "champion") == ref.alias
               for p in config.of("Promotion").values())


def _url(artifacts: Any, sha256: str | None) -> str | None:
    """The object of a blob in an object store; for a version known after apply, the
    store's blobs with the sha256 left to the apply."""
    url_of = getattr(artifacts, "url", None)
    found = url_of(sha256 or KNOWN_AFTER_APPLY) if url_of is not None else None
    return None if found is None else str(found)
