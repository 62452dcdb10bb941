"""The whole life of a stack keeps its promises: destroy and apply again,
damaged state files, read-only plans, locks on registry commands, saved plans, and
promotions of the version an apply resolved."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlinfra.registry.evaluate import auc
from mlinfra.state.lock import locked
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import Result, onnx_model

# A job whose model depends on a parameter: each `variant` is a template with other
# weights, so a change of `variant` trains a model of known quality.
TRAIN = '''\
import argparse, shutil
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--variant")
a = p.parse_args()
shutil.copyfile(f"model-{a.variant}.onnx", a.model)
'''

PROJECT = """\
kind: Data
name: train-set
path: train.csv
---
kind: Data
name: holdout
path: holdout.csv
---
kind: Job
name: train
code: ./train
command: >-
  python train.py --data ${{inputs.data}} --model ${{outputs.model}}
  --variant ${{params.variant}}
inputs: {{data: train-set}}
params: {{variant: {variant}}}
outputs: {{model: model.onnx}}
---
kind: Model
name: scorer
from: {{job: train, output: model}}
evaluation: {{data: holdout, label: y, metrics: [auc]}}
---
kind: Promotion
name: scorer
model: scorer
alias: champion
compare: {{metric: auc, direction: max, min_delta: 0.01}}
gates: {{metrics: {{auc: {{min: 0.6}}}}}}
"""

# Feature a decides the label; b is noise. Weights on a make a good model.
ROWS = [(a, b, int(a > 0)) for a, b in
        [(1.0, 0.3), (-1.0, 0.8), (0.5, -0.7), (-0.4, -0.2), (2.0, 0.1), (-2.0, 0.9),
         (0.2, -1.0), (-0.1, 0.4), (1.5, -0.3), (-1.2, -0.6)]]
DATA = "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in ROWS)
WEIGHTS = {"good": (2.0, 0.0), "fair": (1.0, 0.8), "poor": (0.2, 1.0), "bad": (-1.0, 0.0)}


def model_auc(variant: str) -> float:
    w = np.array(WEIGHTS[variant])
    x = np.array([[a, b] for a, b, _ in ROWS])
    return auc(np.array([y for *_, y in ROWS]), 1 / (1 + np.exp(-(x @ w + 0.1))))


@pytest.fixture
def scored(project: Callable[..., Path]) -> Path:
    files: dict[str, str | bytes] = {"training.yaml": PROJECT.format(variant="fair"),
                                     "train/train.py": TRAIN, "data/train.csv": DATA,
                                     "data/holdout.csv": DATA}
    for name, weights in WEIGHTS.items():
        files[f"train/model-{name}.onnx"] = onnx_model(weights)
    return project(files)


def set_variant(root: Path, variant: str) -> None:
    (root / "training.yaml").write_text(PROJECT.format(variant=variant))


def state_db(root: Path) -> Path:
    return root / ".mlinfra" / "dev" / "state.db"


def serial(root: Path) -> int:
    conn = sqlite3.connect(state_db(root))
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0])
    finally:
        conn.close()


def aliases(cli: Callable[..., Result]) -> dict[str, str]:
    shown = cli("models", "show", "scorer@champion")
    assert shown.code == 0, shown.err
    return {"champion": f"scorer:{json.loads(shown.out)['version']}"}


# --- destroy, then apply again -------------------------------------------------

def test_destroy_then_apply_rebuilds_everything(scored: Path,
                                                cli: Callable[..., Result]) -> None:
    assert model_auc("good") > model_auc("fair") > model_auc("poor")
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert aliases(cli) == {"champion": "scorer:1"}
    destroyed = cli("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.err
    listed = cli("models", "list")
    assert "scorer:" not in listed.out, listed.out  # no version whose file is gone
    assert "No changes" not in cli("plan").out
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    # A version number is never given twice in a stack's lineage: scorer:1 in the
    # history is the destroyed one.
    assert "model.scorer: registered version 2" in again.out
    assert aliases(cli) == {"champion": "scorer:2"}
    assert cli("plan", "--detailed-exitcode").code == 0


def test_a_deleted_blob_converges(scored: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    blobs = scored / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts" / "blobs"
    model_sha = json.loads(cli("output", "model.scorer", "--json").out)[
        "model.scorer"]["sha256"]
    (blobs / model_sha[:2] / model_sha).unlink()
    drift = cli("plan")
    assert "changed outside mlinfra" in drift.out or "deleted outside" in drift.out, drift.out
    repaired = cli("apply", "--auto-approve")
    assert repaired.code == 0, repaired.err
    assert (blobs / model_sha[:2] / model_sha).exists()
    assert cli("plan", "--detailed-exitcode").code == 0


# A retrain that is never byte-identical (a RandomForest without random_state, a
# timestamp in the file): the template's model with a random nonce in its ONNX
# metadata_props (ModelProto field 14, appended: protobuf merges repeated fields).
NONCE_TRAIN = '''\
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--variant")
a = p.parse_args()
nonce = os.urandom(8).hex().encode()
entry = b"\\x0a\\x05nonce\\x12" + bytes([len(nonce)]) + nonce
with open(f"model-{a.variant}.onnx", "rb") as source, open(a.model, "wb") as out:
    out.write(source.read() + b"\\x72" + bytes([len(entry)]) + entry)
'''
SERVED = """\
---
kind: Endpoint
name: api
auth: none
deployments: [{{name: blue, model: "{model}"}}]
traffic: {{blue: 100}}
"""


def served(cli: Callable[..., Result]) -> tuple[dict[str, str], str]:
    """(the version each deployment serves, as the state has it; the version that
    answers a request, as the server says)."""
    from tests.endpoint_client import call

    outputs = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    request = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32",
                           "data": [0.5, 1.0]}]}
    status, answer, headers = call(outputs["url"], None, "POST", "/v2/models/api/infer",
                                   request)
    assert status == 200, answer
    return outputs["served"], headers["mlinfra-model"]


def test_deleted_artifacts_converge_when_the_retrain_differs(
        scored: Path, cli: Callable[..., Result]) -> None:
    """Every file of the artifact store deleted: the job runs again and its model, not
    byte-identical, is a new version. The champion, whose file is gone, cannot stay:
    the new version wins its gates and the endpoint serves it; then nothing is left to
    do."""
    (scored / "train" / "train.py").write_text(NONCE_TRAIN)
    (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                          + SERVED.format(model="scorer@champion"))
    try:
        assert cli("apply", "--auto-approve").code == 0
        assert served(cli) == ({"blue": "scorer:1"}, "scorer:1")
        artifacts = scored / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts"
        shutil.rmtree(artifacts)
        drift = cli("plan", "--detailed-exitcode")
        assert drift.code == 2 and "endpoint.api" in drift.out, drift.out
        assert "scorer:1" in drift.out and "artifact store" in drift.out, drift.out
        repaired = cli("apply", "--auto-approve")
        assert repaired.code == 0, repaired.out + repaired.err
        assert "model.scorer: registered version 2" in repaired.out
        assert "champion scorer:1's file is gone from the artifact store" in repaired.out
        assert aliases(cli) == {"champion": "scorer:2"}
        assert served(cli) == ({"blue": "scorer:2"}, "scorer:2")
        history = cli("history", "--json")
        assert "champion scorer:1's file is gone from the artifact store" in history.out
        again = cli("plan", "--detailed-exitcode")
        assert again.code == 0, again.out
    finally:
        cli("destroy", "--auto-approve")


def test_a_served_version_whose_file_is_gone_says_what_to_do(
        scored: Path, cli: Callable[..., Result]) -> None:
    """A deployment pinned to a version whose file no apply can bring back (its
    retrain made another version) is drift that plan shows; apply names the version
    and what to do, and the server keeps serving what it loaded."""
    (scored / "train" / "train.py").write_text(NONCE_TRAIN)
    (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                          + SERVED.format(model="scorer:1"))
    try:
        assert cli("apply", "--auto-approve").code == 0
        shutil.rmtree(scored / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts")
        drift = cli("plan", "--detailed-exitcode")
        assert drift.code == 2 and "endpoint.api" in drift.out, drift.out
        failed = cli("apply", "--auto-approve")
        assert failed.code == 1, failed.out + failed.err
        assert "model.scorer: registered version 2" in failed.out
        assert ("deployment blue: scorer:1's file is gone from the artifact store"
                in failed.err), failed.err
        assert "serve another version" in failed.err, failed.err
        assert "Traceback" not in failed.err
        assert served(cli) == ({"blue": "scorer:1"}, "scorer:1")  # still up, as it was
        still = cli("plan", "--detailed-exitcode")  # never "No changes" while it lasts
        assert still.code == 2, still.out
        assert "deployment blue serves scorer:1, whose file is gone" in still.out, still.out
        (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                              + SERVED.format(model="scorer@champion"))
        assert cli("apply", "--auto-approve").code == 0
        assert served(cli) == ({"blue": "scorer:2"}, "scorer:2")
        assert cli("plan", "--detailed-exitcode").code == 0
    finally:
        cli("destroy", "--auto-approve")


def test_a_lost_champion_with_no_candidate_to_take_its_place(
        scored: Path, cli: Callable[..., Result]) -> None:
    """The champion's file is gone and the new version fails its gates: nothing can
    take its place by itself, so the decision and the endpoint's failure name the
    version and the command that moves the alias; the next good version converges."""
    (scored / "train" / "train.py").write_text(NONCE_TRAIN)
    (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                          + SERVED.format(model="scorer@champion"))
    try:
        assert cli("apply", "--auto-approve").code == 0
        shutil.rmtree(scored / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts")
        (scored / "training.yaml").write_text(PROJECT.format(variant="bad")
                                              + SERVED.format(model="scorer@champion"))
        failed = cli("apply", "--auto-approve")
        assert failed.code == 1, failed.out + failed.err
        assert ("scorer@champion is still scorer:1, whose file is gone from the artifact "
                "store: mlinfra models alias scorer@champion VERSION") in failed.out
        assert ("deployment blue: scorer:1's file is gone from the artifact store"
                in failed.err), failed.err
        assert "mlinfra models alias scorer@champion VERSION" in failed.err, failed.err
        assert "Traceback" not in failed.err
        assert cli("plan", "--detailed-exitcode").code == 2
        (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                              + SERVED.format(model="scorer@champion"))
        assert cli("apply", "--auto-approve").code == 0
        assert served(cli) == ({"blue": "scorer:3"}, "scorer:3")
        assert cli("plan", "--detailed-exitcode").code == 0
    finally:
        cli("destroy", "--auto-approve")


def test_a_champion_whose_file_is_gone_gives_way(scored: Path,
                                                 cli: Callable[..., Result]) -> None:
    """Only the champion's file is gone, not the model's current version's (which lost
    to it): plan shows the promotion and the endpoint, and apply promotes the version
    that passes its gates, without retraining."""
    set_variant(scored, "good")
    (scored / "training.yaml").write_text(PROJECT.format(variant="good")
                                          + SERVED.format(model="scorer@champion"))
    try:
        assert cli("apply", "--auto-approve").code == 0
        (scored / "training.yaml").write_text(PROJECT.format(variant="fair")
                                              + SERVED.format(model="scorer@champion"))
        assert "kept scorer@champion -> scorer:1" in cli("apply", "--auto-approve").out
        champion = json.loads(cli("models", "show", "scorer:1").out)["sha256"]
        blobs = scored / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts" / "blobs"
        (blobs / champion[:2] / champion).unlink()
        drift = cli("plan", "--detailed-exitcode")
        assert drift.code == 2, drift.out
        assert "promotion.scorer: scorer@champion is scorer:1's file is gone" in drift.out
        assert "endpoint.api: deployment blue serves scorer:1, whose file is gone" in (
            drift.out)
        repaired = cli("apply", "--auto-approve")
        assert repaired.code == 0, repaired.out + repaired.err
        assert ("promoted scorer@champion -> scorer:2 (scorer:2 passed the gates; champion "
                "scorer:1's file is gone from the artifact store)") in repaired.out
        assert "job.train" not in repaired.out  # nothing to retrain
        assert served(cli) == ({"blue": "scorer:2"}, "scorer:2")
        assert cli("plan", "--detailed-exitcode").code == 0
    finally:
        cli("destroy", "--auto-approve")


def test_a_venv_whose_python_was_removed_converges(project: Callable[..., Path],
                                                   cli: Callable[..., Result]) -> None:
    import sys

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    project({"env.yaml": f'kind: Environment\nname: bare\npython: "{python}"\n'})
    assert cli("apply", "--auto-approve").code == 0
    venv = Path(json.loads(cli("output", "environment.bare", "--json").out)[
        "environment.bare"]["venv"])
    (venv / "bin" / "python").unlink()
    assert "broken" in cli("plan").out
    assert cli("apply", "--auto-approve").code == 0
    assert (venv / "bin" / "python").exists()
    assert cli("plan", "--detailed-exitcode").code == 0


# --- a damaged state is never a fresh stack; plan never writes -------------------

def test_an_empty_state_file_is_damaged_not_a_fresh_stack(scored: Path,
                                                           cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    assert cli("state", "rm", "model.scorer").code == 0  # a write session: a backup
    db = state_db(scored)
    backup = db.with_name("state.db.backup")
    kept = backup.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")
    for args in (("plan",), ("apply", "--auto-approve"), ("models", "list")):
        result = cli(*args)
        assert result.code == 1, (args, result.out)
        assert "is damaged" in result.err and "empty" in result.err, result.err
        assert f"cp {backup} {db}" in result.err
    assert db.read_bytes() == b"" and backup.read_bytes() == kept
    # a SQLite file that is not an mlinfra state is refused the same way
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    result = cli("plan")
    assert result.code == 1 and "not an mlinfra state" in result.err, result.err


def test_plan_never_creates_nor_changes_the_state(scored: Path,
                                                  cli: Callable[..., Result]) -> None:
    assert cli("plan").code == 0
    assert cli("plan", "--out", "p.json").code == 0
    assert cli("models", "list").code == 0 and cli("output").code == 0
    assert not state_db(scored).exists()
    assert cli("apply", "--auto-approve").code == 0
    (scored / "data" / "train.csv").write_text(DATA + "3.0,0.0,1\n")  # a change to plan
    before = state_db(scored).read_bytes()
    assert "will be updated" in cli("plan").out
    assert cli("plan", "--out", "p.json").code == 0
    assert state_db(scored).read_bytes() == before


def test_a_backup_is_never_replaced_by_an_unrelated_state(scored: Path,
                                                          cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    set_variant(scored, "good")
    assert cli("apply", "--auto-approve").code == 0  # backup: the first apply's state
    db = state_db(scored)
    backup = db.with_name("state.db.backup")
    old = backup.read_bytes()
    for path in db.parent.glob("state.db*"):
        if path != backup:
            path.unlink()  # the state is lost; its backup is all that is left
    for args in (("plan",), ("apply", "--auto-approve"), ("models", "list")):
        refused = cli(*args)  # never silently a new, empty stack
        assert refused.code == 1, (args, refused.out)
        assert f"cp {backup} {db}" in refused.err and "--new-state" in refused.err
        assert not db.exists()
    assert cli("apply", "--auto-approve", "--new-state").code == 0  # a new lineage
    kept = [p for p in db.parent.glob("state.db.backup.*")]
    assert len(kept) == 1 and kept[0].read_bytes() == old
    assert not [p for p in db.parent.glob("state.db.backup*") if p.name.endswith(
        ("-wal", "-shm"))]  # a backup is one file, and reading it leaves nothing beside


# --- commands that change the registry take the lock -------------------------

def test_registry_commands_take_the_lock_and_move_the_serial(
        scored: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    set_variant(scored, "good")
    assert cli("apply", "--auto-approve").code == 0
    store = SqliteStore(state_db(scored), command="test")
    try:
        with locked(store, "dev", "a test holding the lock"):
            for args in (("alias", "scorer@champion", "1"), ("tag", "scorer:1", "k=v"),
                         ("archive", "scorer:1")):
                held = cli("models", *args)
                assert held.code == 1 and "locked" in held.err, (args, held.err)
    finally:
        store.close()
    before = serial(scored)
    assert cli("models", "alias", "scorer@champion", "1").code == 0
    assert cli("models", "tag", "scorer:1", "k=v").code == 0
    assert serial(scored) == before + 2
    bad = cli("models", "tag", "scorer:1", "novalue")
    assert bad.code == 1 and "KEY=VALUE" in bad.err


def test_damaged_json_in_a_state_row_is_a_damaged_state(scored: Path,
                                                        cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    conn = sqlite3.connect(state_db(scored))
    conn.execute("UPDATE resources SET outputs='{broken' WHERE address='model.scorer'")
    conn.execute("UPDATE models SET metrics='[oops' WHERE name='scorer'")
    conn.commit()
    conn.close()
    for args in (("plan",), ("output",), ("models", "list")):
        result = cli(*args)
        assert result.code == 1, (args, result.err)
        assert "damaged" in result.err and "invalid JSON" in result.err, result.err


# --- saved plans record what apply needs -------------------------------------

def test_a_saved_targeted_plan_applies(scored: Path, cli: Callable[..., Result]) -> None:
    saved = cli("plan", "--target", "data.holdout", "--out", "p.json")
    assert saved.code == 0, saved.err
    applied = cli("apply", "p.json")
    assert applied.code == 0, applied.err
    assert cli("state", "list").out.split() == ["data.holdout", "datastore.main", "workspace.ws"]


def test_moving_an_alias_makes_a_saved_plan_stale(scored: Path,
                                                  cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    set_variant(scored, "good")
    assert cli("apply", "--auto-approve").code == 0
    (scored / "data" / "holdout.csv").write_text(DATA + "3.0,0.0,1\n")
    assert cli("plan", "--out", "p.json").code == 0
    assert cli("models", "alias", "scorer@champion", "1").code == 0
    stale = cli("apply", "p.json")
    assert stale.code == 1 and "stale" in stale.err, stale.err


def test_a_hand_edited_plan_is_refused(scored: Path, cli: Callable[..., Result]) -> None:
    assert cli("plan", "--out", "p.json").code == 0
    plan = json.loads((scored / "p.json").read_text())
    change = next(c for c in plan["changes"] if c["address"] == "job.train")
    change["after"]["command"] = "rm -rf ~"
    (scored / "p.json").write_text(json.dumps(plan))
    refused = cli("apply", "p.json")
    assert refused.code == 1 and "was changed after" in refused.err, refused.err
    assert not state_db(scored).exists() or "job.train" not in cli("state", "list").out


def test_plan_json_has_no_empty_paths(project: Callable[..., Path],
                                      cli: Callable[..., Result]) -> None:
    project({})
    plan = json.loads(cli("plan", "--json").out)
    paths = [f["path"] for c in plan["changes"] for f in c["fields"]]
    assert plan["changes"] and "" not in paths, paths


# --- promotion judges the version this apply resolved ------------------------

def test_promotion_judges_the_version_the_apply_resolved(scored: Path,
                                                         cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0  # fair: v1, the first champion
    set_variant(scored, "good")
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0  # v2
    set_variant(scored, "poor")
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0  # v3
    assert aliases(cli) == {"champion": "scorer:1"}
    set_variant(scored, "good")  # back to v2's content: its run is reused
    runs = cli("runs", "list").out.count("\n")
    assert cli("apply", "--auto-approve").code == 0
    assert cli("runs", "list").out.count("\n") == runs  # reused, not run again
    # v2 (auc 1.0) was judged and promoted; v3 (the highest number) never was
    assert aliases(cli) == {"champion": "scorer:2"}
    decision = json.loads(cli("output", "promotion.scorer", "--json").out)
    assert decision["promotion.scorer"]["candidate"] == "scorer:2"


def test_a_version_that_fails_its_gates_is_never_latest(scored: Path,
                                                        cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0  # fair: v1
    set_variant(scored, "bad")
    assert cli("apply", "--auto-approve").code == 0  # v2: auc under the gate's 0.6
    assert model_auc("bad") < 0.6
    latest = json.loads(cli("models", "show", "scorer").out)
    assert latest["version"] == 1
    failed = json.loads(cli("models", "show", "scorer:2").out)
    assert failed["tags"]["mlinfra.gates"] == "failed"
    listed = cli("models", "list").out.splitlines()
    assert listed[0].split()[-1] == "STATUS" and listed[2].endswith("gates failed"), listed
    assert "auc" in failed["tags"]["mlinfra.rejected"]


def test_a_version_whose_evaluation_fails_is_never_registered(
        scored: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0  # fair: v1
    set_variant(scored, "good")
    (scored / "data" / "holdout.csv").write_text(DATA.replace(",y\n", ",label\n", 1))
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1 and "evaluation failed" in failed.err, failed.err
    assert "no version was registered" in failed.err
    versions = [line.split()[0] for line in cli("models", "list").out.splitlines()[1:]]
    assert versions == ["scorer:1"]
    assert json.loads(cli("models", "show", "scorer").out)["version"] == 1


def test_a_tie_never_moves_the_alias(scored: Path, cli: Callable[..., Result]) -> None:
    (scored / "train" / "model-fair2.onnx").write_bytes(
        onnx_model(WEIGHTS["fair"], bias=0.3))  # other content, the same ranking: same auc
    assert cli("apply", "--auto-approve").code == 0  # fair: v1
    (scored / "training.yaml").write_text(
        PROJECT.format(variant="fair2").replace("min_delta: 0.01", "min_delta: 0"))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert "kept scorer@champion -> scorer:1" in applied.out, applied.out
    assert aliases(cli) == {"champion": "scorer:1"}
    assert "a tie never wins" in applied.out, applied.out


def test_the_champion_is_judged_on_the_candidates_data(scored: Path,
                                                       cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0  # fair: v1, judged on holdout:1
    # A harder holdout: fair (weights on b too) ranks worse on it than on the first.
    harder = [(a, -3 * a if y else 3 * abs(a), y) for a, b, y in ROWS]
    (scored / "data" / "holdout.csv").write_text(
        "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in harder))
    set_variant(scored, "poor")
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    decision = json.loads(cli("output", "promotion.scorer", "--json").out)["promotion.scorer"]
    assert "champion evaluated again on holdout:2" in decision["reason"], decision
    fair_before = json.loads(cli("models", "show", "scorer:1").out)["metrics"]["auc"]
    assert f"{fair_before:.4g}" not in decision["reason"], decision  # not the old data's

    def on_harder(variant: str) -> float:
        w = np.array(WEIGHTS[variant])
        x = np.array([[a, b] for a, b, _ in harder])
        return auc(np.array([y for *_, y in harder]), 1 / (1 + np.exp(-(x @ w + 0.1))))

    assert f"{on_harder('fair'):.4g}" in decision["reason"], decision


def test_a_version_registered_without_its_promotion_is_judged_next(
        scored: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0  # fair: v1
    set_variant(scored, "good")
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0  # v2 only
    plan = cli("plan")
    assert "model.scorer is now scorer:2; the promotion last judged scorer:1" in plan.out
    assert cli("apply", "--auto-approve").code == 0
    assert aliases(cli) == {"champion": "scorer:2"}
    assert cli("plan", "--detailed-exitcode").code == 0


def test_destroy_reads_nothing_the_configuration_needs(scored: Path,
                                                      cli: Callable[..., Result]) -> None:
    """Destroying wants nothing: a missing data file, or data whose checks failed, never
    stops it (it once computed every resource's facts, and failed on them)."""
    assert cli("apply", "--auto-approve").code == 0
    (scored / "data" / "train.csv").unlink()
    assert cli("plan").code == 1  # planning still needs the file
    destroyed = cli("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.err
    assert cli("state", "list").out == ""
