"""A job's code: which files count (.gitignore and .mlinfraignore respected), their
digest (part of the job's input hash), a zip snapshot per run, and the Git state."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ALWAYS_SKIPPED = {".git", ".mlinfra", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache",
                  "node_modules"}


def _patterns(*folders: Path) -> list[str]:
    patterns: list[str] = []
    for folder in folders:
        for name in (".gitignore", ".mlinfraignore"):
            path = folder / name
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    line = line.strip()
                    if line and not line.startswith(("#", "!")):
                        patterns.append(line.strip("/"))
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts)
               for p in patterns)


def code_files(code: Path, root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, file) for every file of the job's code, in a stable order."""
    patterns = _patterns(root, code) if code != root else _patterns(root)
    for folder, dirs, files in os.walk(code):
        rel_folder = os.path.relpath(folder, code)
        dirs[:] = sorted(d for d in dirs if d not in ALWAYS_SKIPPED and not _ignored(
            os.path.normpath(os.path.join(rel_folder, d)), patterns))
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if not _ignored(rel, patterns):
                yield rel, Path(folder) / name


def code_digest(code: Path, root: Path, file_hash: Callable[[Path], str]) -> str:
    digest = hashlib.sha256()
    for rel, path in code_files(code, root):
        digest.update(f"{rel}\0{file_hash(path)}\n".encode())
    return digest.hexdigest()


def snapshot(code: Path, root: Path, workdir: Path, archive: Path) -> None:
    """Copy the code into `workdir` (the run's working folder) and zip that copy, so
    the run neither sees nor records edits made while it runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path in code_files(code, root):
            target = workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            zf.write(target, rel)


def git_info(root: Path) -> dict[str, Any]:
    """Commit, branch, remote and dirty flag of the repository holding `root`."""
    try:
        import git

        repo = git.Repo(root, search_parent_directories=True)
    except Exception:  # not a repository, or git missing: nothing to record
        return {}
    info: dict[str, Any] = {}
    try:
        info["commit"] = repo.head.commit.hexsha
    except ValueError:
        info["commit"] = None  # no commits yet
    try:
        info["branch"] = repo.active_branch.name
    except TypeError:
        info["branch"] = None  # detached HEAD
    info["remote"] = next((r.url for r in repo.remotes), None) if repo.remotes else None
    info["dirty"] = repo.is_dirty(untracked_files=True)
    repo.close()
    return info
