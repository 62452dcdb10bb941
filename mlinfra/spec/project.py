"""Finding a project, reading its files, choosing its stack and filling in variables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlinfra import __version__
from mlinfra.errors import ConfigurationError, Diagnostic, MlinfraError, ProjectNotFound
from mlinfra.spec import sensitive
from mlinfra.spec.expectations import installed_version
from mlinfra.spec.ignore import IgnoreRules
from mlinfra.spec.model import INTERPOLATION, Config, Resource, Stack
from mlinfra.spec.providers import BUILT_IN as BUILT_IN_PROVIDERS
from mlinfra.spec.providers import installed_providers
from mlinfra.spec.schemas import KINDS
from mlinfra.spec.validate import check_references, check_schema, did_you_mean
from mlinfra.spec.yamlfile import (
    Locator,
    ParseCache,
    Path_,
    Problem,
    YamlFile,
    field_name,
    read_yaml,
)

PROJECT_FILE = "mlinfra.yaml"
IGNORE_FILE = ".mlinfraignore"
# Folders never read: state, stack files, and what tools keep beside code.
SKIPPED_DIRS = {"stacks", ".mlinfra", "node_modules", "__pycache__"}
NAMESPACES = {"var", "secret", "inputs", "outputs", "params", "steps", "jobs"}


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding mlinfra.yaml."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    raise ProjectNotFound(
        f"no {PROJECT_FILE} in {start} or any folder above it: run 'mlinfra init' to "
        "create a project, or pass -C DIR")


def yaml_files(root: Path) -> Iterator[Path]:
    """Every *.yaml / *.yml under root, but stacks/, .mlinfra/, hidden folders and what
    .mlinfraignore files list (read as Git reads .gitignore: mlinfra.spec.ignore)."""
    rules = IgnoreRules(root, (IGNORE_FILE,))
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".")
                         and not rules.ignored(_join(rel_folder, d), is_dir=True))
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")) and not rules.ignored(_join(rel_folder, name)):
                yield Path(folder) / name


def _join(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder}/{name}"


def checks_fingerprint() -> str:
    """What a document's schema verdict depends on besides its text: this mlinfra's
    schemas and the code that checks them, and the Great Expectations version whose
    expectations a Data's are checked against."""
    here = Path(__file__).parent
    return ",".join([__version__, str(installed_version()),
                     *(str(os.stat(here / name).st_mtime_ns)
                       for name in ("schemas.py", "fastcheck.py", "validate.py",
                                    "expectations.py"))])


class Loader:
    """Collects problems across every file, then renders them with positions at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, YamlFile] = {}
        self.problems: list[Problem] = []
        self.cache = None if os.environ.get("MLINFRA_NO_CACHE") else ParseCache(
            root / ".mlinfra" / "cache" / "documents.marshal", checks_fingerprint())

    def rel(self, path: Path) -> str:
        try:
            return os.path.relpath(path, Path.cwd())
        except ValueError:
            return str(path)

    def read(self, path: Path) -> YamlFile:
        yf = read_yaml(path, self.rel(path), self.cache)
        self.files[yf.rel] = yf
        self.problems.extend(yf.problems)
        return yf

    def diagnostics(self, problems: list[Problem] | None = None) -> list[Diagnostic]:
        locators: dict[str, Locator] = {}
        out = []
        for p in self.problems if problems is None else problems:
            line, column = p.line, p.column
            if not line:
                yf = self.files.get(p.file)
                if yf is not None and yf.text:
                    locator = locators.setdefault(p.file, Locator(yf.text))
                    line, column = locator.locate(p.doc, p.path, p.at_key)
            out.append(Diagnostic(p.file, line, column, p.message, p.address,
                                  field_name(p.path)))
        return out

    def duplicate(self, again: Resource, first: Resource) -> None:
        """A second definition of a name: reported there, naming the first, and
        otherwise ignored (its fields are not checked against the first's)."""
        line, column = self._locate(again.file, again.doc, ("name",))
        first_line, _ = self._locate(first.file, first.doc, ("name",))
        self.problems.append(Problem(again.file, f"{again.label} is already defined at "
                                     f"{first.file}:{first_line}", again.doc, line=line,
                                     column=column))

    def _locate(self, rel: str, doc: int, path: Path_) -> tuple[int, int]:
        yf = self.files.get(rel)
        if yf is None or not yf.text:
            return 1, 1
        return Locator(yf.text).locate(doc, path)

    def fail_if_problems(self) -> None:
        if self.problems:
            raise ConfigurationError(self.diagnostics())


def _single_document(loader: Loader, path: Path, kind: str) -> tuple[YamlFile, dict[str, Any]]:
    yf = loader.read(path)
    docs = [(i, d) for i, d in enumerate(yf.documents) if d is not None]
    if yf.problems:
        return yf, {}
    if len(docs) != 1 or not isinstance(docs[0][1], dict) or docs[0][1].get("kind") != kind:
        loader.problems.append(Problem(yf.rel, f"must hold exactly one document of kind "
                                       f"{kind}", line=1, column=1))
        return yf, {}
    return yf, docs[0][1]


def _stack_path(root: Path, stack: str | None, default: str) -> tuple[Path, bool]:
    """The stack file and whether the user named it (a missing default is allowed)."""
    if stack is None:
        return root / "stacks" / f"{default}.yaml", False
    if "/" in stack or stack.endswith((".yaml", ".yml")):
        return Path(stack), True
    return root / "stacks" / f"{stack}.yaml", True


def available_stacks(root: Path) -> list[str]:
    folder = root / "stacks"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _load_stack(loader: Loader, root: Path, stack: str | None, default: str) -> Stack:
    path, named = _stack_path(root, stack, default)
    if not path.is_file():
        if named:
            known = available_stacks(root)
            hint = f"; stacks here: {', '.join(known)}" if known else ""
            raise MlinfraError(f"stack '{stack}' not found: no file {loader.rel(path)}{hint}")
        return Stack(name=default)
    yf, doc = _single_document(loader, path, "Stack")
    if doc:
        loader.problems.extend(check_schema(yf.rel, 0, doc, "Stack"))
    if isinstance(doc.get("state"), str) and "://" in doc["state"]:
        from mlinfra.state.backends import location_problem

        problem = location_problem(doc["state"])
        if problem:
            loader.problems.append(Problem(yf.rel, problem.removeprefix("state: "), 0,
                                           ("state",)))
    name = doc.get("name", path.stem)
    if isinstance(name, str) and name != path.stem:
        # NOTE: the name picks the state; a copied stack file keeping its old name would
        # apply to (and destroy) the other stack's state.
        loader.problems.append(Problem(
            yf.rel, f"the stack is named '{name}' but its file is {path.name}: a stack's "
            f"name is its file's name (name: {path.stem}, or rename the file)", 0,
            ("name",), f"stack/{name}"))
    artifacts = doc.get("artifacts")
    if isinstance(artifacts, str) and "://" in artifacts:
        from mlinfra.spec.storage import scheme_problem

        problem = scheme_problem(artifacts)
        if problem:
            loader.problems.append(Problem(yf.rel, problem, 0, ("artifacts",)))
    if isinstance(doc.get("storage"), dict):
        from mlinfra.spec.storage import whole_secret

        for field, value in (doc["storage"].get("credentials") or {}).items():
            if not whole_secret(value):
                loader.problems.append(Problem(
                    yf.rel, "a credential is a whole ${secret.NAME}, read from the "
                    "environment, never written here", 0, ("storage", "credentials", field)))
    if "storage" in doc and not (isinstance(artifacts, str) and "://" in artifacts):
        loader.problems.append(Problem(yf.rel, "storage: says how to reach object storage, "
                                       "but artifacts: names none", 0, ("storage",), "",
                                       True))
    provider = doc.get("provider", "local")
    if isinstance(provider, str) and provider not in BUILT_IN_PROVIDERS:
        installed = installed_providers()
        if provider not in installed:
            loader.problems.append(Problem(
                yf.rel, f"provider '{provider}' is not installed; installed providers: "
                f"{', '.join(installed)}{did_you_mean(provider, installed)}", 0,
                ("provider",)))
    settings: dict[str, Any] = {k: doc[k] for k in ("docker", "kubernetes", "pulumi",
                                                    "storage") if k in doc}
    loaded = Stack(name=str(doc.get("name", path.stem)),
                   provider=str(doc.get("provider", "local")),
                   state=doc.get("state"), variables=dict(doc.get("variables") or {}),
                   settings=settings, file=yf.rel, artifacts=artifacts)
    loaded.warnings = loader.diagnostics(_shared_state_warnings(yf.rel, doc))
    return loaded


def _shared_state_warnings(rel: str, doc: dict[str, Any]) -> list[Problem]:
    """A state other machines share (PostgreSQL) with artifacts only this machine sees:
    a clone elsewhere finds the registry's versions but not their files, and trains and
    promotes its own models instead of comparing with this one's."""
    state, artifacts = doc.get("state"), doc.get("artifacts")
    if not (isinstance(state, str) and state.split("://", 1)[0] in ("postgresql", "postgres")):
        return []
    if isinstance(artifacts, str) and "://" in artifacts:
        return []
    where = (f"a local path ({artifacts})" if isinstance(artifacts, str) else
             "not set (so .mlinfra/<stack>/ on each machine)")
    return [Problem(rel, f"the state is shared (PostgreSQL) but artifacts: is "
                    f"{where}, which other machines cannot see unless they mount it: a clone "
                    "elsewhere would retrain and promote without this machine's models; set "
                    "artifacts: to object storage (s3://BUCKET/PREFIX) or a folder every "
                    "machine mounts", 0, ("artifacts",) if artifacts is not None else
                    ("state",), "", artifacts is None)]


class _Substitution:
    """What filling in one document needs: its place, the variables, and which of them
    are sensitive (those stay references, like secrets)."""

    def __init__(self, loader: Loader, res: Resource, variables: dict[str, Any],
                 sensitive: set[str]) -> None:
        self.loader, self.res = loader, res
        self.variables, self.sensitive = variables, sensitive

    def problem(self, message: str, path: Path_) -> None:
        self.loader.problems.append(Problem(self.res.file, message, self.res.doc, path,
                                            self.res.label))


def _substitute(sub: _Substitution, obj: Any, path: Path_) -> Any:
    """Fill ${var.X} in every string of obj; report unknown variables and namespaces,
    and sensitive values used where they would be recorded."""
    if isinstance(obj, dict):
        return {k: _substitute(sub, v, (*path, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(sub, v, (*path, i)) for i, v in enumerate(obj)]
    if not isinstance(obj, str) or "${" not in obj:
        return obj
    variables = sub.variables
    for match in INTERPOLATION.finditer(obj):
        namespace, rest = match.group(1), match.group(2)
        if namespace not in NAMESPACES:
            sub.problem(f"unknown interpolation '${{{namespace}{rest}}}': use one of "
                        + ", ".join(f"${{{n}.…}}" for n in sorted(NAMESPACES))
                        + did_you_mean(namespace, NAMESPACES), path)
        elif namespace == "var" and rest[1:] not in variables:
            sub.problem(f"variable '{rest[1:]}' is not set by the stack nor declared with "
                        "a default" + did_you_mean(rest[1:], variables), path)
        elif ((namespace == "secret" or (namespace == "var" and rest[1:] in sub.sensitive))
              and not sensitive.allowed(sub.res.kind, path)):
            what = (f"secret '{rest[1:]}'" if namespace == "secret" else
                    f"variable '{rest[1:]}' is sensitive: it")
            sub.problem(f"{what} can be used only in {sensitive.ALLOWED_TEXT} (whose values "
                        "go to a process, never into state, plans or runs)", path)
    whole = INTERPOLATION.fullmatch(obj)
    if (whole and whole.group(1) == "var" and whole.group(2)[1:] in variables
            and whole.group(2)[1:] not in sub.sensitive):
        return variables[whole.group(2)[1:]]  # keeps the variable's type

    def fill(match: Any) -> str:
        name = match.group(2)[1:]
        if match.group(1) == "var" and name in variables and name not in sub.sensitive:
            return str(variables[name])
        return str(match.group(0))

    return INTERPOLATION.sub(fill, obj)


def load(start: Path, stack: str | None = None) -> Config:
    """Load and validate the project at or above `start`; raises ConfigurationError
    carrying every problem found."""
    root = find_root(start)
    loader = Loader(root)
    project_yf, project = _single_document(loader, root / PROJECT_FILE, "Project")
    if project:
        loader.problems.extend(check_schema(project_yf.rel, 0, project, "Project"))
    default_stack = str(project.get("default_stack") or "dev")
    stack_cfg = _load_stack(loader, root, stack, default_stack)
    variables: dict[str, Any] = {}
    sensitive_names: set[str] = set()
    for var_name, decl in (project.get("variables") or {}).items():
        if isinstance(decl, dict) and "default" in decl:
            variables[var_name] = decl["default"]
        if isinstance(decl, dict) and decl.get("sensitive") is True:
            sensitive_names.add(var_name)
    variables.update(stack_cfg.variables)

    resources: dict[str, dict[str, Resource]] = {k: {} for k in KINDS}
    files = [project_yf.rel]
    for path in yaml_files(root):
        if path == root / PROJECT_FILE:
            continue
        yf = loader.read(path)
        files.append(yf.rel)
        has_interpolation = "${" in yf.text
        passed = True
        for index, doc in enumerate(yf.documents):
            if doc is None:
                continue
            resource = _resource(loader, yf.rel, index, doc)
            if resource is None:
                continue
            if has_interpolation:
                resource.spec = _substitute(
                    _Substitution(loader, resource, variables, sensitive_names), doc, ())
            if not yf.checked:
                found = check_schema(yf.rel, index, resource.spec, resource.kind,
                                     resource.label)
                loader.problems.extend(found)
                passed = passed and not found
            first = resources[resource.kind].get(resource.name)
            if first is not None:
                loader.duplicate(resource, first)
                continue
            resources[resource.kind][resource.name] = resource
        if passed and not has_interpolation and loader.cache is not None:
            loader.cache.mark_checked(yf.key)  # its documents are checked once
    if loader.cache is not None:
        if sensitive_names:  # their values are in the project or the stack file
            for rel in (project_yf.rel, stack_cfg.file):
                if rel in loader.files:
                    loader.cache.forget(loader.files[rel].key)
        loader.cache.save()
    config = Config(root=root, name=str(project.get("name", root.name)), stack=stack_cfg,
                    resources=resources, files=files,
                    sensitive={n: variables[n] for n in sensitive_names if n in variables})
    loader.problems.extend(check_references(config))
    loader.fail_if_problems()
    config.resources["BatchScore"] = _scorings(config)
    return config


def _scorings(config: Config) -> dict[str, Resource]:
    """Each `score:` entry of a BatchEndpoint as a BatchScore resource named after its
    output, located at the endpoint's document."""
    out = {}
    for endpoint in config.of("BatchEndpoint").values():
        deployments = [d["name"] for d in endpoint.spec["deployments"]]
        default = endpoint.spec.get("default") or deployments[0]
        for entry in endpoint.spec.get("score") or []:
            spec = {"kind": "BatchScore", "name": entry["output"],
                    "endpoint": endpoint.name, "data": entry["data"],
                    "deployment": entry.get("deployment") or default}
            out[entry["output"]] = Resource("BatchScore", entry["output"], spec,
                                            endpoint.file, endpoint.doc)
    return out


def _resource(loader: Loader, rel: str, index: int, doc: Any) -> Resource | None:
    if not isinstance(doc, dict):
        loader.problems.append(Problem(rel, "a document must be a mapping with 'kind' and "
                                       "'name'", index))
        return None
    kind = doc.get("kind")
    if kind is None:
        loader.problems.append(Problem(rel, "missing required field 'kind'", index))
        return None
    if kind in ("Project", "Stack") or kind not in KINDS:
        where = {"Project": f"only in {PROJECT_FILE}", "Stack": "only in stacks/"}
        message = (f"kind {kind} belongs {where[kind]}" if kind in where else
                   f"unknown kind '{kind}'{did_you_mean(str(kind), KINDS)}; kinds are "
                   + ", ".join(k for k in KINDS if k not in where))
        loader.problems.append(Problem(rel, message, index, ("kind",)))
        return None
    name = doc.get("name")
    if not isinstance(name, str):
        # The schema explains what is wrong with the name (missing, not a string).
        loader.problems.extend(check_schema(rel, index, doc, kind, kind.lower()))
        return None
    return Resource(kind=kind, name=name, spec=doc, file=rel, doc=index)
