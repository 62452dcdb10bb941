"""Datastores and a stack's artifacts on object storage, as a user declares them:
validation, and whole projects applied against a real S3 API server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Files, Result


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
     "command, params, env, requirements and a datastore's credentials"),
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
                              "storage: {region: eu-west-1}\n"})
    a = cli("validate", "-s", "a")
    assert a.code == 1
    assert "stacks/a.yaml:3:12: artifacts: 'ftp://' is not an object store" in a.err
    b = cli("validate", "-s", "b")
    assert b.code == 1
    assert "stacks/b.yaml:4:1: storage: storage: says how to reach object storage, but " \
           "artifacts: names none" in b.err
