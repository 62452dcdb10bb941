"""The content-addressed artifact store on S3, against a real S3 API server on
127.0.0.1 (moto's server mode) reached by s3fs as it would reach AWS."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import pytest

from mlinfra.data.objects import ObjectLocation, StorageError
from mlinfra.registry.artifacts import ArtifactCorrupted
from mlinfra.registry.object_artifacts import ObjectArtifactStore
from tests.s3server import (
    ACCESS_KEY,
    SECRET_KEY,
    FlakyProxy,
    S3Server,
    credentials_env,
    free_port_refusing,
)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)


def _store(tmp_path: Path, url: str, endpoint: str, **options: object) -> ObjectArtifactStore:
    loc = ObjectLocation(url, {"endpoint_url": endpoint, "region": "us-east-1", **options},
                         owner="stacks/team.yaml: artifacts")
    return ObjectArtifactStore(loc, tmp_path / f"cache-{len(list(tmp_path.iterdir()))}")


def test_put_then_read_from_another_machine(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights" * 1000)
    writer = _store(tmp_path, f"s3://{bucket}/team", s3_server.url)
    sha = writer.put(src)
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    stored = s3_server.client().get_object(Bucket=bucket, Key=f"team/blobs/{sha[:2]}/{sha}")
    assert stored["Body"].read() == src.read_bytes()

    reader = _store(tmp_path, f"s3://{bucket}/team", s3_server.url)  # an empty cache
    assert reader.exists(sha) and reader.present(sha)
    assert not (reader.root / "blobs" / sha[:2] / sha).exists()  # present read no byte
    assert reader.intact(sha)
    assert reader.path(sha).read_bytes() == src.read_bytes()
    out = reader.materialize(sha, tmp_path / "copy" / "model.onnx")
    assert out.read_bytes() == src.read_bytes() and reader.is_copy(sha, out)


def test_folder_artifact_round_trip(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    sha = _store(tmp_path, f"s3://{bucket}/p", s3_server.url).put(folder)
    reader = _store(tmp_path, f"s3://{bucket}/p", s3_server.url)
    assert reader.present(sha)
    dest = reader.materialize(sha, tmp_path / "back")
    assert (dest / "sub" / "b.txt").read_text() == "b" and (dest / "a.txt").read_text() == "a"
    # one of the folder's files deleted on S3: the folder is no longer present
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    file_sha = hashlib.sha256(b"b").hexdigest()
    assert f"p/blobs/{file_sha[:2]}/{file_sha}" in keys
    s3_server.client().delete_object(Bucket=bucket, Key=f"p/blobs/{file_sha[:2]}/{file_sha}")
    assert not _store(tmp_path, f"s3://{bucket}/p", s3_server.url).present(sha)


def test_object_changed_outside_mlinfra_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    src = tmp_path / "m.bin"
    src.write_bytes(b"original")
    sha = _store(tmp_path, f"s3://{bucket}", s3_server.url).put(src)
    s3_server.client().put_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}", Body=b"evil!!!!")
    reader = _store(tmp_path, f"s3://{bucket}", s3_server.url)
    with pytest.raises(ArtifactCorrupted, match="changed outside mlinfra"):
        reader.path(sha)
    assert not reader.intact(sha)
    assert not list((reader.root / "blobs").rglob("*")) or not any(
        p.is_file() for p in (reader.root / "blobs").rglob("*"))  # nothing wrong was cached
    s3_server.client().delete_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")
    assert not reader.exists(sha)
    with pytest.raises(ArtifactCorrupted, match=f"missing from s3://{bucket}"):
        reader.path(sha)


def test_two_writers_of_one_artifact(s3_server: S3Server, tmp_path: Path) -> None:
    """Both put the same content at once: one creates the object (conditional create),
    the other finds it there; the object is whole."""
    bucket = s3_server.bucket()
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    stores = [_store(tmp_path, f"s3://{bucket}/x", s3_server.url) for _ in range(2)]
    shas: list[str] = []
    threads = [threading.Thread(target=lambda s=s: shas.append(s.put(src))) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(shas) == 2 and shas[0] == shas[1]
    assert _store(tmp_path, f"s3://{bucket}/x", s3_server.url).intact(shas[0])


def test_upload_cut_by_the_network_is_retried(s3_server: S3Server, tmp_path: Path) -> None:
    """The first PUT's connection is cut half way: the SDK retries it, the artifact is
    whole, and no partial object was ever created."""
    bucket = s3_server.bucket()
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 200_000)
    host, port = s3_server.url.removeprefix("http://").split(":")
    with FlakyProxy((host, int(port)), cuts=1, after_bytes=50_000) as proxy:
        sha = _store(tmp_path, f"s3://{bucket}", proxy.url).put(src)
        assert proxy.cut == 1
    body = s3_server.client().get_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"]
    assert body.read() == src.read_bytes()
    # Each PUT was conditional and carried the blob's sha256 for the service to check.
    puts = [h.lower() for h in proxy.heads if h.startswith(b"PUT ")]
    checksum = base64.b64encode(bytes.fromhex(sha)).decode().lower().encode()
    assert puts and all(b"if-none-match: *" in h for h in puts)
    assert all(b"x-amz-checksum-sha256: " + checksum in h for h in puts)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"blobs/{sha[:2]}/{sha}"]


def test_missing_bucket_is_named(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(tmp_path, "s3://no-such-bucket-here/p", s3_server.url)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.check()
    src = tmp_path / "f"
    src.write_bytes(b"1")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.put(src)


def test_unreachable_store(tmp_path: Path) -> None:
    store = _store(tmp_path, "s3://bucket/p", free_port_refusing())
    with pytest.raises(StorageError, match=r"cannot be reached at http://127\.0\.0\.1"):
        store.check()


def test_wrong_credentials_are_named_never_printed(s3_server: S3Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.bucket()
    monkeypatch.setenv("TEAM_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEAM_S3_SECRET", "not-the-right-secret")
    with s3_server.enforcing_credentials() as (key, secret):
        creds = {"access_key_id": "${secret.TEAM_S3_KEY}",
                 "secret_access_key": "${secret.TEAM_S3_SECRET}"}
        store = _store(tmp_path, f"s3://{bucket}", s3_server.url, credentials=creds)
        with pytest.raises(StorageError) as info:
            store.check()
        message = info.value.message
        assert "refused, the credentials are wrong" in message
        assert "credentials.secret_access_key (${secret.TEAM_S3_SECRET})" in message
        assert "not-the-right-secret" not in message and ACCESS_KEY not in message
        monkeypatch.setenv("TEAM_S3_KEY", key)
        monkeypatch.setenv("TEAM_S3_SECRET", secret)
        good = _store(tmp_path, f"s3://{bucket}", s3_server.url, credentials=creds)
        good.check(write=True)
    assert SECRET_KEY not in message


def test_missing_secret_names_it(s3_server: S3Server, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    store = _store(tmp_path, "s3://b", s3_server.url,
                   credentials={"access_key_id": "${secret.NOT_SET_ANYWHERE}"})
    with pytest.raises(Exception, match="secret 'NOT_SET_ANYWHERE' is not set"):
        store.check()


def test_a_file_that_looks_like_a_folder_manifest_is_a_file(s3_server: S3Server,
                                                            tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    lookalike = tmp_path / "out.json"
    lookalike.write_text('{"manifest": {"../x": "y"}}')
    writer = _store(tmp_path, f"s3://{bucket}/k", s3_server.url)
    sha = writer.put(lookalike)
    reader = _store(tmp_path, f"s3://{bucket}/k", s3_server.url)
    assert reader.present(sha) and reader.intact(sha)
    copy = reader.materialize(sha, tmp_path / "copy.json")
    assert copy.read_text() == lookalike.read_text() and reader.is_copy(sha, copy)
