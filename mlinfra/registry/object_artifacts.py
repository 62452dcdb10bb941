"""The content-addressed artifact store on object storage (a stack's `artifacts:
s3://bucket/prefix`).

Blobs are kept under `PREFIX/blobs/<aa>/<sha256>`, as in a folder store. This machine
keeps a cache of the blobs it wrote or read (a folder store of its own), so reading an
artifact twice downloads it once; a blob is downloaded to a temporary file, hashed and
only then renamed into the cache, so what is read is always what its name says.

A blob is written in one request that either creates the whole object or nothing: a
single PUT, or for a large file a multipart upload whose parts become an object only
when it is completed. Either is conditional (`If-None-Match: *`), so of two writers
the first creates the object and the second is told it exists; an upload cut by a
network error is retried by the SDK and a partial object never appears. On S3 the
PUT also carries the blob's sha256 (`x-amz-checksum-sha256`), which the service checks.
"""

from __future__ import annotations

import base64
import contextlib
import os
from functools import partial
from pathlib import Path

from mlinfra.data.objects import ObjectLocation
from mlinfra.data.versions import file_sha256
from mlinfra.registry.artifacts import (
    ArtifactCorrupted,
    ArtifactStore,
    _tree_sha256,
)

# A PUT of one request up to this size (s3fs sends larger files as multipart uploads,
# where a whole-object checksum is not a PUT header).
_SINGLE_PUT = 64 << 20
# Where each kind of artifact is kept, under the location as in a folder store: a
# folder's manifest apart from files, so its kind is where it is, never its bytes.
_KINDS = ("trees", "blobs")


class ObjectArtifactStore(ArtifactStore):
    """Invariant: the object at blobs/<aa>/<sha256> under the location has that sha256,
    a folder's manifest at trees/<aa>/<address> has that address (checked on every
    download); the local cache holds only verified copies."""

    def __init__(self, location: ObjectLocation, cache: Path) -> None:
        super().__init__(cache)
        self.location = location

    @property
    def where(self) -> str:
        return self.location.url

    def _key(self, sha: str, kind: str = "blobs") -> str:
        return self.location.key(kind, sha[:2], sha)

    def url(self, sha: str) -> str | None:
        found = self._remote(sha)
        return self.location.url_of(self._key(sha, found[0] if found else "blobs"))

    def check(self, write: bool = False) -> None:
        """Reach the store (bucket, credentials, network), or raise a StorageError that
        says which failed; with `write`, also write and delete a probe object."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        loc.call("reach", lambda: fs.ls(loc.bucket, detail=False, refresh=True))
        if write:
            probe = loc.key("incoming", f"probe-{os.urandom(6).hex()}")
            loc.call("write to", lambda: fs.pipe_file(probe, b"mlinfra"))
            loc.call("write to", lambda: fs.rm_file(probe))

    def remove_all(self) -> None:
        """Delete every blob and folder manifest of the store (destroying the
        workspace)."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        for kind in _KINDS:
            top = loc.key(kind)
            if loc.call("read", partial(fs.exists, top)):
                loc.call("delete from", partial(fs.rm, top, recursive=True))

    def _put_in_place(self, tmp: Path, sha: str, folder: bool = False) -> None:
        super()._put_in_place(tmp, sha, folder)
        self._publish(sha, folder)

    def _publish(self, sha: str, folder: bool = False) -> None:
        """Upload what was just put in place in the cache, unless the store has it."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        key = self._key(sha, "trees" if folder else "blobs")
        if loc.call("read", lambda: fs.exists(key)):
            return
        local = super()._tree(sha) if folder else super()._blob(sha)
        size = local.stat().st_size
        extra: dict[str, str] = {}
        if loc.kind == "s3" and size < _SINGLE_PUT:
            content_sha = file_sha256(local) if folder else sha
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(content_sha)).decode()
        # FileExistsError: another writer created it first, under the same content's name
        with contextlib.suppress(FileExistsError):
            loc.call("upload to", lambda: fs.put_file(str(local), key, mode="create", **extra),
                     passing=(FileExistsError,))
        fs.invalidate_cache(key)

    def _remote(self, sha: str) -> tuple[str, dict[str, object]] | None:
        """(kind, object info) of `sha` in the store, or None."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        for kind in _KINDS:
            key = self._key(sha, kind)
            try:
                return kind, dict(loc.call("read", partial(fs.info, key, refresh=True),
                                           passing=(FileNotFoundError,)))
            except FileNotFoundError:
                continue
        return None

    def exists(self, sha: str) -> bool:
        return self._remote(sha) is not None

    def present(self, sha: str) -> bool:
        """The object, and for a folder every object its manifest lists, exists (and
        has the size of the cached copy, when this machine has one). A file is not
        downloaded: where it is kept says it is a file."""
        found = self._remote(sha)
        if found is None:
            return False
        kind, info = found
        cached = super()._tree(sha) if kind == "trees" else super()._blob(sha)
        if cached.is_file() and cached.stat().st_size != info.get("size"):
            return False
        if kind == "blobs":
            return True
        try:
            manifest = self._manifest(sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self.exists(f) for f in manifest.values())

    def _manifest(self, sha: str) -> dict[str, str] | None:
        if not super()._tree(sha).is_file():
            found = self._remote(sha)
            if found is None or found[0] != "trees":
                return None
            self.path(sha)
        return super()._manifest(sha)

    def intact(self, sha: str) -> bool:
        """Downloads the object (and a folder's files) again and hashes them."""
        super()._blob(sha).unlink(missing_ok=True)
        super()._tree(sha).unlink(missing_ok=True)
        try:
            self.path(sha)
            manifest = self._manifest(sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self.intact(f) for f in manifest.values())

    def path(self, sha: str, verify: bool = True) -> Path:
        """The cached copy of `sha` (a folder's: its manifest), downloaded and verified
        first when missing."""
        for cached in (super()._tree(sha), super()._blob(sha)):
            if cached.is_file() and (not verify or self._verified(sha)):
                return cached
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        found = self._remote(sha)
        if found is None:
            raise ArtifactCorrupted(f"artifact {sha[:12]} is missing from {loc.url}")
        kind = found[0]
        tmp = self._incoming()
        try:
            try:
                loc.call("download from", lambda: fs.get_file(self._key(sha, kind), str(tmp)),
                         passing=(FileNotFoundError,))
            except FileNotFoundError:
                raise ArtifactCorrupted(f"artifact {sha[:12]} is missing from "
                                        f"{loc.url}") from None
            got = _tree_sha256(tmp.read_bytes()) if kind == "trees" else file_sha256(tmp)
            if got != sha:
                raise ArtifactCorrupted(f"artifact {sha[:12]} in {loc.url} does not match "
                                        "its sha256: the object was changed outside mlinfra")
            target = super()._tree(sha) if kind == "trees" else super()._blob(sha)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target
