"""`mlinfra init`: a new project that validates, with the stacks mlinfra ships."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from mlinfra.errors import MlinfraError
from mlinfra.spec.fastcheck import ecma_regex
from mlinfra.spec.project import PROJECT_FILE
from mlinfra.spec.schemas import NAME_PATTERN, export

_PROJECT = """\
# yaml-language-server: $schema=schemas/project.json
kind: Project
name: {name}
default_stack: dev
variables:
  compute_type:
    description: local, docker or kubernetes; a stack that sets no value runs locally.
    default: local
"""

_RESOURCES = """\
# Resources of the project: every *.yaml under this folder is read, except stacks/.
# One document per resource; `mlinfra schema KIND` describes every field.
# yaml-language-server: $schema=schemas/resource.json
kind: Workspace
name: {name}
default_datastore: main
---
kind: Compute
name: cpu
type: ${{var.compute_type}}
max_concurrency: 2
---
kind: Datastore
name: main
type: local
path: ./data
"""

_GITIGNORE = ".mlinfra/\n"


def project_name(folder: Path) -> str:
    """A valid resource name from a folder name: `My_Project` -> `my-project`."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"ml-{name}".rstrip("-")
    return name[:63]


def init_project(folder: Path, name: str | None = None) -> list[Path]:
    """Create the project's files in `folder`; refuses to overwrite a project."""
    name = name or project_name(folder)
    if not ecma_regex(NAME_PATTERN).search(name):
        raise MlinfraError(f"'{name}' is not a valid project name: use lowercase letters, "
                           "digits and '-', starting with a letter (--name NAME)")
    if (folder / PROJECT_FILE).exists():
        raise MlinfraError(f"{folder / PROJECT_FILE} exists already: this is a project")
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    files = {
        folder / PROJECT_FILE: _PROJECT.format(name=name),
        folder / "resources.yaml": _RESOURCES.format(name=name),
    }
    templates = resources.files("mlinfra") / "templates" / "stacks"
    for template, target in (("local", "dev"), ("docker", "docker"),
                             ("kubernetes", "kubernetes")):
        text = (templates / f"{template}.yaml").read_text()
        files[folder / "stacks" / f"{target}.yaml"] = text.replace(
            f"\nname: {template}\n", f"\nname: {target}\n").replace(
            f".mlinfra/{template}/", f".mlinfra/{target}/")
    gitignore = folder / ".gitignore"
    if not gitignore.exists():
        files[gitignore] = _GITIGNORE
    for path in files:
        if path.exists():
            raise MlinfraError(f"{path} exists already; init writes only new files")
    written = []
    for path, text in files.items():
        path.write_text(text)
        written.append(path)
    written.extend(export(folder / "schemas"))
    return written
