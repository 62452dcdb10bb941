"""A job's code: which files count (.gitignore and .mlinfraignore respected), their
digest (part of the job's input hash), a zip snapshot per run, and the Git state."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlinfra.data.versions import file_sha256
from mlinfra.errors import MlinfraError
from mlinfra.spec.ignore import IgnoreRules

ALWAYS_SKIPPED = {".git", ".mlinfra", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache",
                  "node_modules"}
IGNORE_FILES = (".gitignore", ".mlinfraignore")


class CodeRefused(MlinfraError):
    """A job's code holds what cannot go into its snapshot (a link out of the project)."""


def code_files(code: Path, root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, file) for every file of the job's code, in a stable order: a
    folder's files by name, then its subfolders by name.

    Ignore files are read as Git reads them (see mlinfra.spec.ignore). A symbolic link
    that stays inside the project is followed: the snapshot holds the content it points
    at, so the run's copy stands alone. A link that leads out of the project, that is
    broken, or that loops back to a folder above it is refused (CodeRefused)."""
    top = root.resolve()
    rules = IgnoreRules(root, IGNORE_FILES)
    base = Path(os.path.relpath(code, root)).as_posix()
    try:
        real = code.resolve()
    except (RuntimeError, OSError):  # RuntimeError until Python 3.13
        raise CodeRefused(f"code {base} is a loop of symbolic links") from None
    if not _inside(real, top):
        raise CodeRefused(f"code {base} leads outside the project ({real})")
    yield from _walk(code, "", base, top, rules, (real,))


def _inside(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _walk(folder: Path, rel: str, base: str, top: Path, rules: IgnoreRules,
          above: tuple[Path, ...]) -> Iterator[tuple[str, Path]]:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    files: list[tuple[str, Path]] = []
    folders: list[tuple[str, Path, Path]] = []
    for entry in entries:
        if entry.name in ALWAYS_SKIPPED or entry.name == ".mlinfraignore":
            continue  # mlinfra's ignore file decides which files are code; it is not code
        child = f"{rel}/{entry.name}" if rel else entry.name
        in_root = child if base == "." else f"{base}/{child}"
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows a link
        except OSError:  # ELOOP
            raise CodeRefused(f"{in_root} is a loop of symbolic links") from None
        if rules.ignored(in_root, is_dir):
            continue
        try:
            real = path.resolve() if entry.is_symlink() else None
        except (RuntimeError, OSError):  # RuntimeError until Python 3.13
            raise CodeRefused(f"{in_root} is a loop of symbolic links") from None
        if real is not None:
            target = os.readlink(path)
            if not _inside(real, top):
                raise CodeRefused(f"{in_root} is a symbolic link to {target}, outside the "
                                  "project: copy what it points at into the project, or "
                                  "list the link in .mlinfraignore")
            if not real.exists():
                raise CodeRefused(f"{in_root} is a broken symbolic link (to {target})")
        if is_dir:
            if real is not None and any(real == a or real in a.parents for a in above):
                raise CodeRefused(f"{in_root} is a symbolic link to {os.readlink(path)}, a "
                                  "folder that holds it: the code would never end")
            folders.append((child, path, real or path.resolve()))
        elif entry.is_file():
            files.append((child, path))
    yield from files
    for child, path, real in folders:
        yield from _walk(path, child, base, top, rules, (*above, real))


def code_digest(code: Path, root: Path, file_hash: Callable[[Path], str]) -> str:
    digest = hashlib.sha256()
    for rel, path in code_files(code, root):
        digest.update(f"{rel}\0{file_hash(path)}\n".encode())
    return digest.hexdigest()


def snapshot(code: Path, root: Path, workdir: Path, archive: Path) -> str:
    """Copy the code into `workdir` (the run's working folder) and zip that copy, so
    the run neither sees nor records edits made while it runs. Returns the copy's
    digest (as code_digest computes it), from the bytes copied."""
    workdir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path in code_files(code, root):
            target = workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            zf.write(target, rel)
            digest.update(f"{rel}\0{file_sha256(target)}\n".encode())
    return digest.hexdigest()


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
