"""Datastores and a stack's artifacts on object storage, as a user declares them:
validation, and whole projects applied against a real S3 API server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, Files, Result
from tests.postgres import PASSWORD, PostgresServer
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server, credentials_env, free_port_refusing


def test_validate_warns_when_a_shared_state_keeps_artifacts_locally(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    project({"stacks/prod.yaml": """\
        kind: Stack
        name: prod
        state: postgresql://mlinfra@db.example.com/mlinfra
        artifacts: /mnt/ml-team/prod
        """, "stacks/bare.yaml": """\
        kind: Stack
        name: bare
        state: postgresql://mlinfra@db.example.com/mlinfra
        """, "stacks/s3.yaml": """\
        kind: Stack
        name: s3
        state: postgresql://mlinfra@db.example.com/mlinfra
        artifacts: s3://team-bucket/prod
        storage: {endpoint_url: "http://127.0.0.1:9000", region: us-east-1}
        """})
    result = cli("validate", "-s", "prod")
    assert result.code == 0
    assert result.err.startswith("warning: stacks/prod.yaml:4:12: artifacts: the state is "
                                 "shared (PostgreSQL) but artifacts: is a local path "
                                 "(/mnt/ml-team/prod)")
    assert "s3://BUCKET/PREFIX" in result.err
    bare = cli("validate", "-s", "bare")
    assert bare.code == 0 and "artifacts: is not set" in bare.err
    assert "stacks/bare.yaml:3:1: state:" in bare.err
    as_json = cli("validate", "-s", "prod", "--json")
    assert json.loads(as_json.out)["warnings"][0]["field"] == "artifacts"
    shared = cli("validate", "-s", "s3")
    assert shared.code == 0 and shared.err == ""


@pytest.mark.parametrize(("doc", "expected"), [
    ("type: s3\npath: ./data\n", "datastore/main: path: a s3 datastore's path is "
     "s3://BUCKET/PREFIX, not './data'"),
    ("type: gcs\npath: s3://b/p\n", "a gcs datastore's path is gs://BUCKET/PREFIX"),
    ("type: s3\npath: s3:///p\n", "s3:///p names no bucket"),
    ("type: local\npath: s3://b/p\n", "'s3://b/p' is a URL: set `type:` to s3, gcs or "
     "azure_blob"),
    ("type: local\npath: ./data\nendpoint_url: http://x\n", "endpoint_url is for object "
     "storage; this datastore is a local folder"),
    ("type: s3\npath: s3://b\ncredentials: {token: '${secret.T}'}\n", "credentials.token: "
     "'token' is not a s3 credential: use access_key_id, secret_access_key, session_token"),
    ("type: s3\npath: s3://b\nregion: '${secret.R}'\n", "secret 'R' can be used only in "
     "command, params, env, requirements, a datastore's credentials and a webhook's url "
     "and secret"),
    ("type: s3\npath: s3://b\ncredentials: {access_key_id: AKIA123}\n",
     "credentials.access_key_id: a credential is a whole ${secret.NAME}"),
])
def test_object_datastore_mistakes(project: Callable[..., Path], cli: Callable[..., Result],
                                   doc: str, expected: str) -> None:
    project({"base.yaml": "kind: Workspace\nname: ws\ndefault_datastore: main\n---\n"
             "kind: Datastore\nname: main\n" + doc}, base=False)
    result = cli("validate")
    assert result.code == 1 and "Traceback" not in result.err
    assert expected in result.err, result.err
    assert "base.yaml:" in result.err


def test_stack_artifacts_url_mistakes(project: Callable[[Files], Path],
                                      cli: Callable[..., Result]) -> None:
    project({"stacks/a.yaml": "kind: Stack\nname: a\nartifacts: ftp://host/x\n",
             "stacks/b.yaml": "kind: Stack\nname: b\nartifacts: ./shared\n"
                              "storage: {region: eu-west-1}\n",
             "stacks/c.yaml": "kind: Stack\nname: c\nartifacts: s3://b/p\n"
                              "storage: {credentials: {secret_access_key: plain}}\n"})
    a = cli("validate", "-s", "a")
    assert a.code == 1
    assert "stacks/a.yaml:3:12: artifacts: 'ftp://' is not an object store" in a.err
    b = cli("validate", "-s", "b")
    assert b.code == 1
    assert "stacks/b.yaml:4:1: storage: storage: says how to reach object storage, but " \
           "artifacts: names none" in b.err
    c = cli("validate", "-s", "c")
    assert c.code == 1
    assert "stacks/c.yaml:4:44: storage.credentials.secret_access_key: a credential is a " \
           "whole ${secret.NAME}" in c.err


def _to_s3(root: Path, s3: S3Server, bucket: str, state: str) -> None:
    """The quickstart with its datastore and artifacts on the S3 server: the data files
    uploaded under data/, credentials as ${secret.X}."""
    client = s3.client()
    for csv in sorted((root / "data").glob("*.csv")):
        client.put_object(Bucket=bucket, Key=f"data/{csv.name}", Body=csv.read_bytes())
    shutil.rmtree(root / "data")
    workspace = (root / "workspace.yaml").read_text()
    (root / "workspace.yaml").write_text(workspace.replace(
        "type: local\npath: ./data\n",
        f"type: s3\npath: s3://{bucket}/data\nendpoint_url: {s3.url}\nregion: us-east-1\n"
        "credentials: {access_key_id: '${secret.QS_S3_KEY}', "
        "secret_access_key: '${secret.QS_S3_SECRET}'}\n"))
    (root / "stacks" / "team.yaml").write_text(
        f"kind: Stack\nname: team\nstate: {state}\nartifacts: s3://{bucket}/artifacts\n"
        f"storage:\n  endpoint_url: {s3.url}\n  region: us-east-1\n"
        "  credentials: {access_key_id: '${secret.QS_S3_KEY}', "
        "secret_access_key: '${secret.QS_S3_SECRET}'}\n"
        "variables: {compute_type: local}\n")


@pytest.mark.slow
def test_the_quickstart_on_s3_and_a_second_clone_plans_no_changes(
        quickstart: Path, tmp_path: Path, cli: Callable[..., Result], s3_server: S3Server,
        postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datastore and artifacts on a real S3 API server, state on PostgreSQL: apply, then
    a second clone (no .mlinfra of its own) plans no changes, reading the objects'
    ETags (no download) and the registry's artifacts from S3."""
    monkeypatch.setenv("QS_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("QS_S3_SECRET", SECRET_KEY)
    monkeypatch.setenv("QS_DB_PASSWORD", PASSWORD)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    bucket = s3_server.bucket("qs")
    state = postgres.url(postgres.new_schema()).replace(
        "mlinfra@", "mlinfra:${secret.QS_DB_PASSWORD}@")
    _to_s3(quickstart, s3_server, bucket, state)
    clone = tmp_path / "clone"
    shutil.copytree(quickstart, clone)
    try:
        assert cli("validate", "-C", str(quickstart), "-s", "team").err == ""
        applied = cli("apply", "-C", str(quickstart), "-s", "team", "--auto-approve")
        assert applied.code == 0, applied.out + applied.err
        keys = {o["Key"] for o in s3_server.client().list_objects_v2(
            Bucket=bucket, Prefix="artifacts/")["Contents"]}
        assert any(k.startswith("artifacts/blobs/") for k in keys)
        assert SECRET_KEY not in applied.out + applied.err
        listed = cli("models", "list", "-C", str(quickstart), "-s", "team")
        assert "fraud" in listed.out
        # The second clone: same state, same artifacts, nothing of its own yet.
        planned = cli("plan", "-C", str(clone), "-s", "team", "--detailed-exitcode")
        assert planned.code == 0, planned.out + planned.err
        assert "No changes" in planned.out
        assert not (clone / ".mlinfra" / "team" / "datastores").exists()  # ETags sufficed
        # The data object changed outside mlinfra: a new version, as a changed file is.
        csv = (QUICKSTART / "data" / "transactions.csv").read_text()
        s3_server.client().put_object(Bucket=bucket, Key="data/transactions.csv",
                                      Body=(csv + csv.splitlines()[-1] + "\n").encode())
        changed = cli("plan", "-C", str(clone), "-s", "team")
        assert changed.code == 0, changed.err
        assert "data.transactions" in changed.out and "No changes" not in changed.out
    finally:
        cli("destroy", "-C", str(quickstart), "-s", "team", "--auto-approve")


def test_a_store_that_cannot_be_reached_stops_the_plan(
        project: Callable[[Files], Path], cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.bucket()
    project({"stacks/s3.yaml": f"kind: Stack\nname: s3\nartifacts: s3://{bucket}/a\n"
                               f"storage: {{endpoint_url: '{s3_server.url}', region: "
                               "us-east-1}\n",
             "stacks/down.yaml": "kind: Stack\nname: down\nartifacts: s3://b/a\n"
                                 f"storage: {{endpoint_url: '{free_port_refusing()}'}}\n",
             "stacks/nobucket.yaml": "kind: Stack\nname: nobucket\n"
                                     "artifacts: s3://no-such-bucket-at-all/a\n"
                                     f"storage: {{endpoint_url: '{s3_server.url}'}}\n"})
    down = cli("plan", "-s", "down")
    assert down.code == 1 and "Traceback" not in down.err
    assert "the object store cannot be reached at http://127.0.0.1" in down.err
    missing = cli("plan", "-s", "nobucket")
    assert missing.code == 1
    assert "bucket 'no-such-bucket-at-all' does not exist" in missing.err
    assert cli("apply", "-s", "s3", "--auto-approve").code == 0
    assert cli("plan", "-s", "s3", "--detailed-exitcode").code == 0
