"""An endpoint's captures on a stack whose `artifacts:` is on object storage: written
by the server as whole objects through s3fs, read from there by `mlinfra monitor run`,
against a real S3 API server on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import Result, missing
from tests.endpoint_client import applied, call
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server, credentials_env
from tests.test_monitoring import monitored, named_model, send

Cli = Callable[..., Result]
AZURITE = "azurite@3.37.0"
# Azurite's well-known development account (public, in Azure's documentation)
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[str]:
    """Azurite's blob service on a free port of 127.0.0.1 (installed once per virtualenv
    with npm); yields its connection string, and stops it."""
    try:
        import adlfs  # noqa: F401
    except ImportError:
        missing("adlfs is not installed: pip install -e '.[dev]'")
    folder = Path(__file__).resolve().parent.parent / ".venv" / "azurite"
    program = folder / "node_modules" / ".bin" / "azurite-blob"
    if not program.exists():
        if shutil.which("npm") is None:
            missing("Azurite is an npm package: npm is not installed (.ci/run installs it)")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                               "--prefix", str(folder), AZURITE], capture_output=True,
                              text=True, timeout=300, check=False)
        if done.returncode != 0:
            missing(f"npm could not install {AZURITE}: {done.stderr[-300:]}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(program), "--blobHost", "127.0.0.1", "--blobPort",
                               str(port), "--location", str(tmp_path / "azurite"),
                               "--silent", "--skipApiVersionCheck", "--loose"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("Azurite did not start") from None
                time.sleep(0.1)
        yield ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
               f"AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    finally:
        server.terminate()
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:  # node waits on open keep-alive connections
            server.kill()
            server.wait(timeout=10)


def _keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _rows(s3: S3Server, bucket: str, prefix: str) -> int:
    client = s3.client()
    return sum(pq.read_metadata(io.BytesIO(
        client.get_object(Bucket=bucket, Key=key)["Body"].read())).num_rows
        for key in _keys(s3, bucket, prefix) if key.endswith(".parquet"))


def test_the_server_writes_whole_objects_and_keeps_their_retention(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.serving.batcher import Batcher
    from mlinfra.serving.captures import Captures, hour_of
    from mlinfra.serving.model import LoadedModel
    from mlinfra.serving.table import Deployment, Table

    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.bucket("cap")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="team/captures/api/requests/hour=2000-01-01T00/"
                      "part-old.parquet", Body=b"old")
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(named_model())
    model = LoadedModel.load("fraud", 3, model_file,
                             hashlib.sha256(model_file.read_bytes()).hexdigest())
    deployment = Deployment("blue", model, Batcher(model, 8), 5.0)
    try:
        table = Table("api", 1, {"blue": deployment}, [("blue", 100.0)],
                      collect_sample=1.0, collect_path=f"s3://{bucket}/team/captures/api",
                      collect_retention_s=7 * 86400.0,
                      collect_storage={"endpoint_url": s3_server.url,
                                       "region": "us-east-1"})
        captures = Captures(retention_bytes=1 << 30)
        features = {"features": np.array([[50.0, 40.0], [60.0, 41.0]], dtype=np.float32)}
        captures.write(table, "req-1", deployment, features, model.run(features))
        captures.feedback(table, ["req-1"], [0], ["1"])
        captures.close()
    finally:
        deployment.batcher.close()
    keys = _keys(s3_server, bucket, "team/captures/api/")
    hour = hour_of(time.time())
    assert [k.split("/")[3:5] for k in keys] == [["feedback", hour], ["requests", hour]]
    assert all(k.endswith(".parquet") for k in keys)  # nothing half-written or aside
    body = client.get_object(Bucket=bucket, Key=keys[1])["Body"].read()
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [(r["request_id"], r["row"], r["amount"]) for r in rows] == [
        ("req-1", 0, 50.0), ("req-1", 1, 60.0)]
    # the hour older than the 7 days kept went
    assert not [k for k in keys if "2000-01-01" in k]
    # a canary's shadow replay reads them back from there
    from mlinfra.providers.local.endpoint.replay import captured_requests

    bodies = captured_requests(f"s3://{bucket}/team/captures/api", storage={
        "endpoint_url": s3_server.url, "region": "us-east-1"})
    assert [json.loads(b)["dataframe_split"]["data"] for b in bodies] == [
        [[50.0, 40.0], [60.0, 41.0]]]


def _verdicts(result: Result) -> list[tuple[str, list[tuple[str, str | None, str]]]]:
    assert result.code in (0, 3), result.out + result.err
    found = json.loads(result.out)[0]["computed"]
    return [(w["status"], sorted((s["signal"], s.get("feature"), s["verdict"])
                                 for s in w["signals"])) for w in found]


def test_a_served_endpoints_captures_land_in_s3_and_monitor_alike(
        project: Callable[..., Path], cli: Cli, s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEAM_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEAM_S3_SECRET", SECRET_KEY)
    bucket = s3_server.bucket("served")
    root = monitored(project)
    (root / "stacks").mkdir()
    (root / "stacks" / "dev.yaml").write_text(
        f"kind: Stack\nname: dev\nartifacts: s3://{bucket}/team\n"
        f"storage:\n  endpoint_url: {s3_server.url}\n  region: us-east-1\n"
        "  credentials: {access_key_id: '${secret.TEAM_S3_KEY}', "
        "secret_access_key: '${secret.TEAM_S3_SECRET}'}\n")
    rng = np.random.default_rng(11)
    prefix = "team/captures/api/"
    with applied(cli) as (url, key):
        calm = np.column_stack([rng.normal(50, 10, 1000), rng.normal(40, 8, 1000)])
        ids = send(url, key, calm)
        deadline = time.monotonic() + 20
        while _rows(s3_server, bucket, prefix + "requests/") < 1000 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _rows(s3_server, bucket, prefix + "requests/") == 1000
        labels = [int(rng.random() < 1 / (1 + np.exp(-0.1 * (a - 50))))
                  for a in calm[::50, 0]]
        status, body, _ = call(url, key, "POST", "/v2/models/api/feedback",
                               {"request_ids": ids, "labels": labels})
        assert (status, body) == (200, {"accepted": 20})
        assert _keys(s3_server, bucket, prefix + "feedback/")
        assert not (root / "data" / "captures").exists()  # nothing on this machine

        # the same objects copied to a folder: the verdicts over either are the same
        local = root / "copy"
        client = s3_server.client()
        for obj in _keys(s3_server, bucket, prefix):
            target = local / "captures" / "api" / obj[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=bucket, Key=obj)["Body"].read())
        over_local = _verdicts(cli("monitor", "run", "watch", "--json",
                                   "--captures", str(local)))
        with sqlite3.connect(root / ".mlinfra" / "dev" / "state.db") as db:
            db.execute("DELETE FROM monitor_signals WHERE monitor='watch'")
            db.execute("DELETE FROM monitor_windows WHERE monitor='watch'")
        over_s3 = _verdicts(cli("monitor", "run", "watch", "--json"))
        assert over_s3 == over_local
        assert [status for status, _ in over_s3] == ["ok", "ok"]
        assert any(signal == "performance" for _, signals in over_s3
                   for signal, _, _ in signals)


def test_captures_on_azure_blob_through_adlfs_against_azurite(
        azurite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    from mlinfra.data.objects import ObjectLocation
    from mlinfra.monitoring.captures import RemoteFolder, files, read
    from mlinfra.serving.batcher import Batcher
    from mlinfra.serving.captures import Captures
    from mlinfra.serving.model import LoadedModel
    from mlinfra.serving.table import Deployment, Table

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)  # the server's SDK
    monkeypatch.setenv("TEAM_AZ", azurite)
    fsspec.filesystem("az", connection_string=azurite, skip_instance_cache=True).mkdir("team")
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(named_model())
    model = LoadedModel.load("fraud", 3, model_file,
                             hashlib.sha256(model_file.read_bytes()).hexdigest())
    deployment = Deployment("blue", model, Batcher(model, 8), 5.0)
    try:
        table = Table("api", 1, {"blue": deployment}, [("blue", 100.0)],
                      collect_sample=1.0, collect_path="az://team/captures/api")
        captures = Captures(retention_bytes=1 << 30)
        features = {"features": np.array([[50.0, 40.0], [61.0, 42.0]], dtype=np.float32)}
        captures.write(table, "req-az", deployment, features, model.run(features))
        captures.close()
    finally:
        deployment.batcher.close()
    folder = RemoteFolder(ObjectLocation("az://team/captures/api", {
        "credentials": {"connection_string": "${secret.TEAM_AZ}"}}))
    found = files(folder, "requests")
    assert len(found) == 1 and found[0].name.endswith(".parquet")
    rows = read(found, ["request_id", "row", "amount"]).table.to_pylist()
    assert rows == [{"request_id": "req-az", "row": 0, "amount": 50.0},
                    {"request_id": "req-az", "row": 1, "amount": 61.0}]
