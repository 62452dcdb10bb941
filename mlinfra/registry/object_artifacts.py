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
from pathlib import Path
from typing import Any

from mlinfra.data.objects import ObjectLocation
from mlinfra.data.versions import file_sha256
from mlinfra.registry.artifacts import (
    _MANIFEST_START,
    ArtifactCorrupted,
    ArtifactStore,
    _manifest,
)

# A PUT of one request up to this size (s3fs sends larger files as multipart uploads,
# where a whole-object checksum is not a PUT header).
_SINGLE_PUT = 64 << 20


class ObjectArtifactStore(ArtifactStore):
    """Invariant: the object at blobs/<aa>/<sha256> under the location has that sha256
    (checked on every download); the local cache holds only verified blobs."""

    def __init__(self, location: ObjectLocation, cache: Path) -> None:
        super().__init__(cache)
        self.location = location

    @property
    def where(self) -> str:
        return self.location.url

    def _key(self, sha: str) -> str:
        return self.location.key("blobs", sha[:2], sha)

    def url(self, sha: str) -> str | None:
        return self.location.url_of(self._key(sha))

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
        """Delete every blob of the store (destroying the workspace)."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        blobs = loc.key("blobs")
        if loc.call("read", lambda: fs.exists(blobs)):
            loc.call("delete from", lambda: fs.rm(blobs, recursive=True))

    def _put_in_place(self, tmp: Path, sha: str, *args: Any, **kwargs: Any) -> None:
        super()._put_in_place(tmp, sha, *args, **kwargs)
        self._publish(sha)

    def _publish(self, sha: str) -> None:
        """Upload the blob just put in place in the cache, unless the store has it."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        key = self._key(sha)
        if loc.call("read", lambda: fs.exists(key)):
            return
        blob = super()._blob(sha)
        size = blob.stat().st_size
        extra: dict[str, str] = {}
        if loc.kind == "s3" and size < _SINGLE_PUT:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha)).decode()
        # FileExistsError: another writer created it first, under the same content's name
        with contextlib.suppress(FileExistsError):
            loc.call("upload to", lambda: fs.put_file(str(blob), key, mode="create", **extra),
                     passing=(FileExistsError,))
        fs.invalidate_cache(key)

    def _remote_info(self, sha: str) -> dict[str, object] | None:
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        key = self._key(sha)
        try:
            return dict(loc.call("read", lambda: fs.info(key, refresh=True),
                                 passing=(FileNotFoundError,)))
        except FileNotFoundError:
            return None

    def exists(self, sha: str) -> bool:
        return self._remote_info(sha) is not None

    def present(self, sha: str) -> bool:
        """The object, and for a folder every object its manifest lists, exists (and
        has the size of the cached copy, when this machine has one). A file is not
        downloaded: its first bytes show it is no folder manifest."""
        info = self._remote_info(sha)
        if info is None:
            return False
        cached = super()._blob(sha)
        if cached.is_file() and cached.stat().st_size != info.get("size"):
            return False
        if not cached.is_file() and not self._starts_as_manifest(sha):
            return True  # a file: its first bytes say so, without downloading it
        try:
            manifest = _manifest(self.path(sha), sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self.exists(f) for f in manifest.values())

    def _starts_as_manifest(self, sha: str) -> bool:
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        head = loc.call("read", lambda: fs.cat_file(self._key(sha), start=0,
                                                    end=len(_MANIFEST_START)))
        return bytes(head) == _MANIFEST_START

    def intact(self, sha: str) -> bool:
        """Downloads the object (and a folder's files) again and hashes them."""
        blob = super()._blob(sha)
        blob.unlink(missing_ok=True)
        try:
            manifest = _manifest(self.path(sha), sha)
        except ArtifactCorrupted:
            return False
        return manifest is None or all(self.intact(f) for f in manifest.values())

    def path(self, sha: str, verify: bool = True) -> Path:
        """The cached copy of `sha`, downloaded and verified first when missing."""
        blob = super()._blob(sha)
        if blob.is_file() and (not verify or file_sha256(blob) == sha):
            return blob
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        tmp = self._incoming()
        try:
            try:
                loc.call("download from", lambda: fs.get_file(self._key(sha), str(tmp)),
                         passing=(FileNotFoundError,))
            except FileNotFoundError:
                raise ArtifactCorrupted(f"artifact {sha[:12]} is missing from "
                                        f"{loc.url}") from None
            if file_sha256(tmp) != sha:
                raise ArtifactCorrupted(f"artifact {sha[:12]} in {loc.url} does not match "
                                        "its sha256: the object was changed outside mlinfra")
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, blob)
        finally:
            tmp.unlink(missing_ok=True)
        return blob

