"""Docker build contexts: an Environment's image, the endpoint server's image, and on
kubernetes a job's image (its environment plus its code).

Every image installs its packages into a virtual environment (Debian's Python refuses
`pip install` into the system one). A context has a `wheels/` folder: when it holds
wheels the image installs from them only, with no index and no network (for hosts whose
containers cannot reach a package index); empty, pip installs from the index as usual.
"""

from __future__ import annotations

from pathlib import Path

from mlinfra.providers.manifests import ContextFile, content_tag
from mlinfra.providers.manifests.inputs import (
    DEFAULT_BASE_IMAGE,
    StackInputs,
    fetch_requirements,
)
from mlinfra.spec.model import Config, Resource

SERVER_PORT = 8080
VENV = "/opt/mlinfra/venv"
HELPER_DIR = "/opt/mlinfra/helper"

INSTALL = f"""\
COPY requirements.txt /opt/mlinfra/requirements.txt
COPY wheels/ /opt/mlinfra/wheels/
RUN python3 -m venv {VENV} \\
 && if ls /opt/mlinfra/wheels/*.whl >/dev/null 2>&1; then \\
      set -- --no-index --find-links /opt/mlinfra/wheels; fi \\
 && {VENV}/bin/pip install --no-cache-dir --disable-pip-version-check "$@" \\
      -r /opt/mlinfra/requirements.txt \\
 && rm -rf /opt/mlinfra/wheels
ENV PATH={VENV}/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
"""

# The server's entry point in the image: it completes the endpoint's config with the
# hashes of the keys it receives in MLINFRA_ENDPOINT_KEYS (from a Kubernetes Secret or
# the container's environment, at apply time), so no key is written in any object.
ENTRYPOINT = f'''\
"""Start the mlinfra endpoint server with the config rendered by mlinfra."""
import hashlib
import json
import os
import socket
import sys

MOUNTED = "/etc/mlinfra/endpoint.json"
if os.path.exists(MOUNTED):
    with open(MOUNTED) as f:
        config = json.load(f)
else:
    config = json.loads(os.environ["MLINFRA_ENDPOINT"])
keys = [k for k in os.environ.pop("MLINFRA_ENDPOINT_KEYS", "").split(",") if k.strip()]
if config.get("auth") == "key" and not keys:
    sys.exit("mlinfra: auth is key but MLINFRA_ENDPOINT_KEYS is empty: refusing to serve "
             "without keys")
config["key_hashes"] = [hashlib.sha256(k.strip().encode()).hexdigest() for k in keys]
collect = config.get("collect") or {{}}
if collect.get("path"):
    collect["path"] = collect["path"].replace("{{host}}", socket.gethostname())
    os.makedirs(os.path.dirname(collect["path"]), exist_ok=True)
os.makedirs(config["status_dir"], exist_ok=True)
if any(d.get("url") for d in config["deployments"].values()):
    # The models are in the artifact store: fetched now, each checked against its sha256.
    from mlinfra.serving.fetch import FetchFailed, fetch_models

    try:
        fetch_models(config)
    except FetchFailed as err:
        sys.exit(f"mlinfra: {{err}}")
path = "/tmp/mlinfra/config.json"
with open(path, "w") as f:
    json.dump(config, f)
os.execv(sys.executable, [sys.executable, "-m", "mlinfra.serving", "--config", path,
                          "--host", "0.0.0.0", "--port", "{SERVER_PORT}",
                          "--workers", str(config.get("workers", 2))])
'''

WHEELS_README = """\
Put wheels here (for the image's Python and platform) to build this image without a
package index, e.g.:
  pip download --only-binary=:all: --python-version 3.11 \\
      --platform manylinux2014_x86_64 -d wheels -r requirements.txt
Left empty, the image installs its requirements from the index while it builds.
"""


def base_image(config: Config, env: Resource | None = None) -> str:
    """The stack's `base_image` wins over an Environment's `image`: a stack can build
    on an image of its own (a registry mirror, or one built without a registry)."""
    settings = config.stack.settings.get(config.stack.provider) or {}
    if settings.get("base_image"):
        return str(settings["base_image"])
    if env is not None and env.spec.get("image"):
        return str(env.spec["image"])
    return DEFAULT_BASE_IMAGE


def image_prefix(config: Config) -> str:
    settings = config.stack.settings.get(config.stack.provider) or {}
    registry = str(settings.get("registry") or "").rstrip("/")
    return f"{registry}/" if registry else ""


def _requirements(config: Config, env: Resource) -> str:
    lines = [str(r) for r in env.spec.get("requirements") or []]
    if env.spec.get("requirements_file"):
        path = config.root / str(env.spec["requirements_file"])
        lines += [line for line in path.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(lines) + "\n"


def run_helper() -> Path:
    """The zero-dependency `mlinfra_run` module training scripts import."""
    return Path(__file__).resolve().parent.parent.parent / "runs" / "helper" / "mlinfra_run.py"


def environment_context(config: Config, env: Resource, lock: list[str] | None = None
                        ) -> tuple[ContextFile, ...]:
    """An Environment's image: its requirements (`lock`: pinned, see locks.py), and the
    run helper (`from mlinfra_run import log_metric`) on its PYTHONPATH, so a job's
    script runs in it as it runs locally."""
    requirements = ("".join(line + "\n" for line in lock) if lock
                    else _requirements(config, env))
    dockerfile = (f"# mlinfra environment {env.name}\nFROM {base_image(config, env)}\n"
                  + INSTALL
                  + f"COPY helper/ {HELPER_DIR}/\n"
                  + f"ENV PYTHONPATH={HELPER_DIR}\n"
                  + "WORKDIR /code\n")
    return (ContextFile("Dockerfile", dockerfile),
            ContextFile("requirements.txt", requirements),
            ContextFile("helper/mlinfra_run.py", source=run_helper()),
            ContextFile("wheels/README", WHEELS_README))


def serving_context(config: Config, inputs: StackInputs) -> tuple[ContextFile, ...]:
    dockerfile = (f"# the mlinfra endpoint server (ONNX Runtime)\nFROM {base_image(config)}\n"
                  + INSTALL
                  + "COPY src/ /opt/mlinfra/src/\n"
                  + "COPY entrypoint.py /opt/mlinfra/entrypoint.py\n"
                  + "ENV PYTHONPATH=/opt/mlinfra/src\n"
                  + f"EXPOSE {SERVER_PORT}\n"
                  + "USER 65534:65534\n"
                  + 'ENTRYPOINT ["python", "/opt/mlinfra/entrypoint.py"]\n')
    files = [ContextFile("Dockerfile", dockerfile),
             ContextFile("requirements.txt", "\n".join(
                 [*inputs.serving_requirements,
                  *fetch_requirements(inputs, _collected_captures(config))]) + "\n"),
             ContextFile("entrypoint.py", ENTRYPOINT),
             ContextFile("wheels/README", WHEELS_README)]
    files += [ContextFile(f"src/{rel}", source=path) for rel, path in inputs.serving_sources]
    return tuple(files)


# What `mlinfra monitor run` imports (pyarrow and scipy for the windows, psycopg for a
# team's state): the monitor image installs these, not Pulumi nor onnxruntime.
MONITOR_DISTRIBUTIONS = (("pyyaml", ""), ("jsonschema", ""), ("pathspec", ""),
                         ("cronsim", ""), ("tzdata", ""), ("numpy", ""), ("scipy", ""),
                         ("pyarrow", ""), ("psycopg", "[binary]"))
PROJECT_DIR = "/opt/mlinfra/project"


def _storage_packages(config: Config) -> list[str]:
    """The fsspec package (pinned) that reads captures on the stack's object storage."""
    from mlinfra.monitoring.captures import object_captures
    from mlinfra.spec.storage import SCHEMES

    url = object_captures(config)
    if url is None:
        return []
    return _pinned(((SCHEMES[url.split("://", 1)[0]][1], ""),))


def _pinned(distributions: tuple[tuple[str, str], ...]) -> list[str]:
    import importlib.metadata

    out = []
    for name, extra in distributions:
        try:
            out.append(f"{name}{extra}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name}{extra}")
    return out


def _project_files(config: Config) -> list[ContextFile]:
    """The project's files a monitor needs to load it (YAML, code folders, model files),
    without its state, hidden folders or its datastores' data."""
    root = config.root.resolve()
    stores = [(root / str(s.spec.get("path", "."))).resolve()
              for s in config.of("Datastore").values()]
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__"
                                     for p in rel.parts):
            continue
        if any(store != root and store in path.resolve().parents for store in stores):
            continue
        files.append(ContextFile(f"project/{rel.as_posix()}", source=path))
    return files


def _collected_captures(config: Config) -> str | None:
    """The object-storage URL the stack's endpoints write their captures to, if any."""
    from mlinfra.monitoring.captures import object_captures

    if not any((e.spec.get("collect") or {}).get("sample")
               for e in config.of("Endpoint").values()):
        return None
    return object_captures(config)


FETCH_PY = """\
\"\"\"mlinfra: a Job's Data inputs on object storage, downloaded before it runs
(arguments: URL TARGET ...; credentials from the SDK's own variables).\"\"\"
import os, sys, time
import fsspec
args = sys.argv[1:]
for url, target in zip(args[::2], args[1::2]):
    scheme = url.split("://", 1)[0]
    options = {}
    if scheme == "s3" and os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    fs = fsspec.filesystem(scheme, **options)
    path = url.split("://", 1)[1]
    for attempt in range(5):
        try:
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", target.rstrip("/") + "/", recursive=True)
            else:
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                fs.get_file(path, target + ".part")
                os.replace(target + ".part", target)
            break
        except Exception as err:  # the SDKs raise many kinds; each is retried
            if attempt == 4:
                first = str(err).splitlines()[0] if str(err) else ""
                sys.exit(f"mlinfra: {url} could not be fetched: {type(err).__name__}: {first}")
            time.sleep(2 ** attempt)
    print(f"mlinfra: fetched {url} to {target}", flush=True)
"""


def fetch_context(config: Config, packages: list[str]) -> tuple[ContextFile, ...]:
    """The image of a Job's init container that downloads its Data inputs from an
    object-storage Datastore: the base image with the fsspec package (pinned)."""
    dockerfile = (f"# mlinfra: Data inputs fetched from object storage\n"
                  f"FROM {base_image(config)}\n" + INSTALL
                  + "COPY fetch.py /opt/mlinfra/fetch.py\n"
                  + "USER 65534:65534\n"
                  + 'ENTRYPOINT ["python", "/opt/mlinfra/fetch.py"]\n')
    return (ContextFile("Dockerfile", dockerfile),
            ContextFile("requirements.txt", "\n".join(
                _pinned(tuple((p, "") for p in ("fsspec", *packages)))) + "\n"),
            ContextFile("fetch.py", FETCH_PY),
            ContextFile("wheels/README", WHEELS_README))


def monitor_context(config: Config) -> tuple[ContextFile, ...]:
    """The image a monitor's CronJob runs: mlinfra's code and the project, so `mlinfra
    monitor run` loads the project as on this machine."""
    package = Path(__file__).resolve().parent.parent.parent
    dockerfile = (f"# mlinfra monitor run\nFROM {base_image(config)}\n" + INSTALL
                  + "COPY src/ /opt/mlinfra/src/\n"
                  + f"COPY project/ {PROJECT_DIR}/\n"
                  + "ENV PYTHONPATH=/opt/mlinfra/src\n"
                  + "USER 65534:65534\n"
                  + 'ENTRYPOINT ["python", "-m", "mlinfra"]\n')
    files = [ContextFile("Dockerfile", dockerfile),
             ContextFile("requirements.txt", "\n".join(
                 _pinned(MONITOR_DISTRIBUTIONS) + _storage_packages(config)) + "\n"),
             ContextFile("wheels/README", WHEELS_README)]
    files += [ContextFile(f"src/mlinfra/{p.relative_to(package).as_posix()}", source=p)
              for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts]
    return tuple(files + _project_files(config))


def job_code_context(config: Config, job: Resource, env_image: str) -> tuple[ContextFile, ...]:
    """A job's image on kubernetes: its environment's image with the job's code, so a
    pod needs nothing from this machine."""
    code = (config.root / str(job.spec.get("code", "."))).resolve()
    files = [ContextFile("Dockerfile", f"# mlinfra job {job.name}: its code on its "
                         f"environment\nFROM {env_image}\nCOPY code/ /code/\nWORKDIR /code\n")]
    for path in sorted(code.rglob("*")):
        rel = path.relative_to(code)
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__"
                                      for p in rel.parts):
            files.append(ContextFile(f"code/{rel.as_posix()}", source=path))
    return tuple(files)


def image_name(config: Config, what: str, files: tuple[ContextFile, ...]) -> str:
    return f"{image_prefix(config)}mlinfra-{what}:{content_tag(files)}"


def context_dir(out: Path, key: str) -> Path:
    return out / "images" / key


# What a scoring's pods import of mlinfra (mlinfra.batch.shard): the batch package, the
# serving code it scores with, and the error hierarchy.
_SCORING_MODULES = ("__init__.py", "errors.py", "batch/*.py", "serving/*.py")


def scoring_context(config: Config) -> tuple[ContextFile, ...]:
    """The image a staged scoring runs in (mlinfra.batch.shard): the endpoint server's
    requirements and pyarrow, and the part of mlinfra it imports."""
    import importlib.metadata
    from pathlib import Path

    from mlinfra.providers.manifests.inputs import serving_requirements_pinned

    try:
        arrow = f"pyarrow=={importlib.metadata.version('pyarrow')}"
    except importlib.metadata.PackageNotFoundError:
        arrow = "pyarrow"
    dockerfile = (f"# mlinfra batch scoring (ONNX Runtime, pyarrow)\nFROM {base_image(config)}\n"
                  + INSTALL + "COPY src/ /opt/mlinfra/src/\n"
                  + "ENV PYTHONPATH=/opt/mlinfra/src\n")
    package = Path(__file__).resolve().parent.parent.parent
    files = [ContextFile("Dockerfile", dockerfile),
             ContextFile("requirements.txt",
                         "\n".join([*serving_requirements_pinned(), arrow]) + "\n"),
             ContextFile("wheels/README", WHEELS_README)]
    for pattern in _SCORING_MODULES:
        files += [ContextFile(f"src/mlinfra/{p.relative_to(package).as_posix()}", source=p)
                  for p in sorted(package.glob(pattern))]
    return tuple(files)
