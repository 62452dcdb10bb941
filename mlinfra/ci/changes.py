"""What changed, from Git: the files between two commits (and the working tree), and
through them the resources they touch and everything downstream of those.

The plan, not this, decides what runs (a run's hash covers the bytes it reads); these
changes tell a reviewer why, and which resources a change reaches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.graph import references
from mlinfra.spec.model import Config, Resource

SHALLOW_HINT = ("this is a shallow clone without that history: check out with the whole "
                "history (actions/checkout with fetch-depth: 0, or git fetch --unshallow)")
DEFAULT_BASES = ("origin/main", "main", "origin/master", "master")


class GitProblem(MlinfraError):
    """The repository cannot answer what changed (no repository, an unknown or missing
    base revision, a shallow clone, a dirty tree where a clean one is needed)."""


@dataclass
class ChangeSet:
    """Files changed from `base` (a commit; None: everything is new) to `head`, as paths
    relative to the project; `dirty`: uncommitted changes in the project."""

    head: str
    base: str | None
    base_name: str
    files: list[str] = field(default_factory=list)
    dirty: list[str] = field(default_factory=list)


class Repository:
    """The Git repository that holds a project."""

    def __init__(self, root: Path) -> None:
        import git

        self.root = root.resolve()
        try:
            self.repo: Any = git.Repo(self.root, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitProblem(f"{self.root} is not in a Git repository: the ci commands "
                             "compare commits (git init, then commit the project)") from None
        top = Path(self.repo.working_tree_dir or self.root).resolve()
        self.prefix = self.root.relative_to(top).as_posix() if self.root != top else ""
        try:
            self.head = str(self.repo.head.commit.hexsha)
        except ValueError:
            raise GitProblem(f"the repository at {top} has no commit yet") from None

    @property
    def shallow(self) -> bool:
        return Path(self.repo.git_dir, "shallow").exists()

    def close(self) -> None:
        self.repo.close()

    def _inside(self, path: str) -> str | None:
        """`path` (relative to the repository) relative to the project, or None."""
        if not self.prefix:
            return path
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) + 1:]
        return None

    def dirty(self) -> list[str]:
        """Uncommitted changes in the project: staged, modified and untracked files (those
        .gitignore does not exclude), except mlinfra's own `.mlinfra/` (state, cache,
        workspaces), which is never the project's content."""
        paths: set[str] = set()
        for diff in (self.repo.index.diff(None), self.repo.index.diff("HEAD")):
            for item in diff:
                paths.update(p for p in (item.a_path, item.b_path) if p)
        paths.update(self.repo.untracked_files)
        return sorted(p for p in (self._inside(p) for p in paths)
                      if p is not None and p.split("/", 1)[0] != ".mlinfra")

    def commit(self, rev: str) -> str | None:
        """The commit `rev` names, or None when it names none here."""
        import git

        try:
            found = self.repo.commit(rev)
            found.tree  # noqa: B018  (a shallow clone names parents it does not hold)
            return str(found.hexsha)
        except (git.BadName, git.BadObject, ValueError):
            return None

    def base(self, wanted: str | None) -> tuple[str, str]:
        """(commit, name) of the base a pull request is compared with: `wanted`, or the
        pull request's base branch in GitHub Actions, or origin/main, main..."""
        ref = os.environ.get("GITHUB_BASE_REF")
        names = [wanted] if wanted else (
            [f"origin/{ref}", ref] if ref else []) + list(DEFAULT_BASES)
        for name in names:
            found = self.commit(name)
            if found is not None:
                return found, name
        if self.shallow:
            raise GitProblem(f"base revision {names[0]} is not here: {SHALLOW_HINT}")
        if wanted:
            raise GitProblem(f"base revision '{wanted}' does not exist in this repository "
                             "(git fetch it, or name another with --base)")
        raise GitProblem(f"no base revision found (tried {', '.join(names)}): name one "
                         "with --base REV")

    def merge_base(self, base: str, name: str) -> str:
        found = self.repo.merge_base(base, self.head)
        if not found:
            if self.shallow:
                raise GitProblem(f"{name} and HEAD share no commit here: {SHALLOW_HINT}")
            raise GitProblem(f"{name} and HEAD share no history: there is nothing to "
                             "compare with")
        return str(found[0].hexsha)

    def is_ancestor(self, commit: str) -> bool:
        import git

        try:
            return bool(self.repo.is_ancestor(commit, self.head))
        except (git.GitCommandError, ValueError):
            return False

    def changes(self, base: str | None, base_name: str, worktree: bool) -> ChangeSet:
        """The files changed from `base` to HEAD (every file of HEAD when `base` is None),
        plus, with `worktree`, what is not committed yet."""
        head = self.repo.head.commit
        paths: set[str] = set()
        if base is None:
            paths.update(str(item.path) for item in head.tree.traverse()
                         if item.type == "blob")
        elif base != self.head:
            for item in self.repo.commit(base).diff(head):
                paths.update(p for p in (item.a_path, item.b_path) if p)
        dirty = self.dirty()
        files = {p for p in (self._inside(p) for p in paths) if p is not None}
        if worktree:
            files.update(dirty)
        return ChangeSet(self.head, base, base_name, sorted(files), dirty)


def _owned(res: Resource, config: Config) -> list[str]:
    """Paths (relative to the project) whose change changes `res`: its YAML file, and the
    code, data, requirements or model file it names. A folder ends with '/'."""
    root = config.root.resolve()
    spec = res.spec
    owned: list[str] = []

    def add(path: Any, folder: bool = False) -> None:
        if not isinstance(path, str) or "${" in path:
            return
        full = (root / path).resolve()
        try:
            rel = full.relative_to(root).as_posix()
        except ValueError:
            return  # outside the project: Git does not see it from here
        owned.append(rel + "/" if folder and rel != "." else ("" if rel == "." else rel))

    if res.file and not res.file.startswith("("):
        add(str(Path(res.file).resolve()))
    if res.kind == "Job":
        add(spec.get("code"), folder=True)
    elif res.kind == "Environment":
        add(spec.get("requirements_file"))
    elif res.kind == "Model":
        add((spec.get("from") or {}).get("path"))
    elif res.kind == "Data":
        from mlinfra.graph import default_datastore

        store = config.get("Datastore", str(spec.get("datastore") or
                                            default_datastore(config) or ""))
        base = str((store.spec.get("path") if store else None) or ".")
        add(os.path.join(base, str(spec.get("path", ""))))
    return [p for p in owned if p != ""]


def affected(config: Config, files: list[str], workspace: str
             ) -> tuple[dict[str, list[str]], list[str]]:
    """({address: the changed files that touch it}, the addresses downstream of those),
    each in name order. A change of the project file or of the stack touches nothing
    directly here: its variables may change anything, and the plan says what."""
    direct: dict[str, list[str]] = {}
    for res in config.all():
        for owned in _owned(res, config):
            hits = [f for f in files if f == owned or (owned.endswith("/")
                                                       and f.startswith(owned))]
            if hits:
                direct.setdefault(res.address, []).extend(hits)
    dependants: dict[str, set[str]] = {}
    for res in config.all():
        for dep in references(res, config, workspace):
            dependants.setdefault(dep, set()).add(res.address)
    downstream: set[str] = set()
    todo = list(direct)
    while todo:
        for nxt in dependants.get(todo.pop(), ()):
            if nxt not in downstream and nxt not in direct:
                downstream.add(nxt)
                todo.append(nxt)
    return ({a: sorted(set(f)) for a, f in sorted(direct.items())}, sorted(downstream))
