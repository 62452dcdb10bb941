"""A content-addressed store: files kept by sha256, verified when read.

A folder is kept as its files plus a manifest (relative path -> sha256), stored apart
from files (under trees/); the folder's address is the sha256 of the manifest after a
prefix no file is hashed with. So an artifact's kind is recorded where it is stored,
never guessed from its bytes: a file whose content looks like a manifest is a file.

The store may be a folder that several machines mount (a stack's `artifacts:`), with
writers on each. Every blob is written to a temporary file of its own beside the blobs
and renamed into place (atomic within one file system), so a reader sees a whole blob
or none, and two writers of the same blob both put the same whole content there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from mlinfra.data.versions import file_sha256
from mlinfra.errors import MlinfraError


class ArtifactCorrupted(MlinfraError):
    """A stored file no longer has the hash it is stored under."""


class ArtifactStore:
    """Invariant: the file at blobs/<aa>/<sha256> has that sha256 (checked on read)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def _tree(self, sha: str) -> Path:
        return self.root / "trees" / sha[:2] / sha

    def _stored(self, sha: str) -> Path:
        """Where the artifact `sha` is: its folder manifest, or else its file."""
        tree = self._tree(sha)
        return tree if tree.is_file() else self._blob(sha)

    def _verified(self, sha: str) -> bool:
        tree = self._tree(sha)
        if tree.is_file():
            return _tree_sha256(tree.read_bytes()) == sha
        return file_sha256(self._blob(sha)) == sha

    def _incoming(self) -> Path:
        """A new temporary file's path, unique across processes and machines."""
        incoming = self.root / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming / f"{os.urandom(8).hex()}.tmp"

    def _put_in_place(self, tmp: Path, sha: str, folder: bool = False) -> None:
        target = self._tree(sha) if folder else self._blob(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def put_file(self, path: Path) -> str:
        """Copy first, then hash the copy: what is stored is exactly what is named,
        even if the source changes meanwhile."""
        tmp = self._incoming()
        try:
            shutil.copyfile(path, tmp)
            sha = file_sha256(tmp)
            self._put_in_place(tmp, sha)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def put(self, path: Path) -> str:
        """Store a file or a folder; returns its address."""
        if path.is_file():
            return self.put_file(path)
        manifest = {}
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = Path(folder) / name
                manifest[file.relative_to(path).as_posix()] = self.put_file(file)
        data = json.dumps({"manifest": manifest}, sort_keys=True).encode()
        sha = _tree_sha256(data)
        tmp = self._incoming()
        try:
            tmp.write_bytes(data)
            self._put_in_place(tmp, sha, folder=True)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def exists(self, sha: str) -> bool:
        return self._tree(sha).is_file() or self._blob(sha).exists()

    def present(self, sha: str) -> bool:
        """Whether the blob, and for a folder every file it lists, exists: what refresh
        checks on every plan, without hashing (`intact` hashes)."""
        if not self._stored(sha).is_file():
            return False
        try:
            manifest = self._manifest(sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self._blob(f).is_file() for f in manifest.values())

    def intact(self, sha: str) -> bool:
        """Whether the artifact can be read back whole: its blob, and for a folder every
        file its manifest lists, present with the right sha256. Reads them all."""
        if not self._stored(sha).is_file() or not self._verified(sha):
            return False
        try:
            manifest = self._manifest(sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self.intact(file_sha) for file_sha in manifest.values())

    def path(self, sha: str, verify: bool = True) -> Path:
        """The stored file of `sha` (a folder's: its manifest), checked against its hash."""
        blob = self._stored(sha)
        if not blob.exists():
            raise ArtifactCorrupted(f"artifact {sha[:12]} is missing from {self.root}")
        if verify and not self._verified(sha):
            raise ArtifactCorrupted(f"artifact {sha[:12]} in {self.root} does not match its "
                                    "sha256: it was changed on disk")
        return blob

    def materialize(self, sha: str, dest: Path) -> Path:
        """Copy the artifact (file or folder) to `dest`, verified; the copied files are
        read-only (0444): a copy is a record of what a run read, not a scratch file."""
        blob = self.path(sha)
        manifest = self._manifest(sha)
        if manifest is None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, dest)
            dest.chmod(_READ_ONLY)
            return dest
        for rel, file_sha in manifest.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path(file_sha), target)
            target.chmod(_READ_ONLY)
        return dest

    def is_copy(self, sha: str, path: Path) -> bool:
        """Whether `path` holds exactly the artifact `sha` (every file hashed), as
        `materialize` wrote it."""
        self.path(sha, verify=False)
        manifest = self._manifest(sha)
        if manifest is None:
            return path.is_file() and not path.is_symlink() and file_sha256(path) == sha
        if not path.is_dir() or path.is_symlink():
            return False
        found = {}
        for folder, _, files in os.walk(path):
            for name in files:
                file = Path(folder) / name
                if file.is_symlink():
                    return False
                found[file.relative_to(path).as_posix()] = file
        return found.keys() == manifest.keys() and all(
            file_sha256(found[rel]) == file_sha for rel, file_sha in manifest.items())

    # Where the store is, for other machines and pods (an object store overrides these).

    def url(self, sha: str) -> str | None:
        """The object holding `sha` where other machines and pods read it, or None for
        a folder store (the file itself travels)."""
        return None

    @property
    def where(self) -> str:
        """How messages name the store."""
        return str(self.root)


    def _manifest(self, sha: str) -> dict[str, str] | None:
        """A folder artifact's manifest, or None for a file. A manifest whose paths
        would leave the folder (absolute, `..`) or whose hashes are not sha256 is
        refused."""
        tree = self._tree(sha)
        if not tree.is_file():
            return None
        try:
            data = json.loads(tree.read_bytes())
        except (ValueError, UnicodeDecodeError):
            data = None
        manifest = data.get("manifest") if isinstance(data, dict) else None
        if not isinstance(manifest, dict):
            raise ArtifactCorrupted(f"artifact {sha[:12]} is a folder whose manifest is "
                                    "not a map of files")
        return _checked(manifest, sha)


_READ_ONLY = 0o444
# Hashed before a folder's manifest, never before a file: a folder's address is never
# a file's (as git hashes "tree N\0" before a tree).
_TREE_PREFIX = b"mlinfra folder\n"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _tree_sha256(manifest: bytes) -> str:
    return hashlib.sha256(_TREE_PREFIX + manifest).hexdigest()


def _checked(manifest: dict[str, object], sha: str) -> dict[str, str]:
    for rel, file_sha in manifest.items():
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts or (
                not isinstance(file_sha, str) or not _SHA256.fullmatch(file_sha)):
            raise ArtifactCorrupted(f"artifact {sha[:12]} is a folder manifest naming "
                                    f"{rel!r}, outside its folder or not a stored file: "
                                    "refused")
    return {str(rel): str(file_sha) for rel, file_sha in manifest.items()}
