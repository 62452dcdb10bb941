"""The engine is the only writer: handlers stage what they change in a unit of work that
the engine commits with the resource's change and its journal entry, in one
transaction. A store in `engine_only` mode refuses every other write, so these tests
show that every handler write goes through the unit of work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.engine import execute, open_session, plan
from mlinfra.plan.model import Change
from mlinfra.providers.base import Applied, Context, ProviderError
from mlinfra.registry.decisions import PROMOTION, DecisionLog
from mlinfra.registry.models import ModelRegistry
from mlinfra.registry.register import ModelHandler
from mlinfra.state.store import StateWriteRefused
from mlinfra.state.work import UnitOfWork
from tests.conftest import Files, Result, onnx_model

Cli = Callable[..., Result]

PROJECT = """\
kind: Data
name: holdout
path: holdout.csv
expectations:
  - expect_column_values_to_not_be_null: {column: y}
---
kind: Job
name: score
code: ./code
command: python copy.py ${inputs.data} ${outputs.copy}
inputs: {data: holdout}
outputs: {copy: copy.csv}
---
kind: Pipeline
name: twice
steps:
  first: {job: score}
  second: {job: score, inputs: {data: "${steps.first.outputs.copy}"}}
---
kind: Model
name: fraud
from: {path: models/fraud.onnx}
evaluation: {data: holdout, label: y, metrics: [auc]}
---
kind: Promotion
name: fraud
model: fraud
gates: {metrics: {auc: {min: 0.3}}, data: [holdout]}
"""
COPY = "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"
DATA = "a,b,y\n1.0,0.3,1\n-1.0,0.8,0\n0.5,-0.7,1\n-0.4,-0.2,0\n"


def _files(weights: tuple[float, float] = (2.0, 0.0)) -> Files:
    return {"project.yaml": PROJECT, "data/holdout.csv": DATA, "code/copy.py": COPY,
            "models/fraud.onnx": onnx_model(weights)}


ENDPOINT = """\
kind: Endpoint
name: api
auth: key
workers: 1
deployments:
  - {name: blue, model: fraud@champion}
traffic: {blue: 100}
"""


def test_every_handler_write_goes_through_the_unit_of_work(
        project: Callable[[Files], Path]) -> None:
    root = project({**_files(), "endpoint.yaml": ENDPOINT})
    session = open_session(root, None, "apply", write=True)
    try:
        session.store.engine_only = True
        result = execute(session, plan(session))
        assert result.ok, (result.failed, result.skipped)
        registry = ModelRegistry(session.store)
        assert registry.aliases("fraud") == {"champion": 1}
        types = [e.type for _, e in session.store.events()]
        assert [t for t in types if not t.startswith("run.")] == [
            "data.version_created", "model.version_registered", "model.promoted",
            "endpoint.created", "apply.completed"]
        assert {"run.started", "run.completed"} <= set(types)
        with pytest.raises(StateWriteRefused):  # a write of its own: refused
            registry.set_alias("fraud", "champion", 1, "by hand")
        with pytest.raises(StateWriteRefused):
            DecisionLog(session.store).record("promotion.fraud", PROMOTION, {})
        gone = execute(session, plan(session, destroy=True))
        assert gone.ok and session.store.resources() == {}
    finally:
        if session.store.resources():  # a failed check leaves no server running
            session.store.engine_only = False
            execute(session, plan(session, destroy=True))
        session.close()


class _RegistersThenFails(ModelHandler):
    def create(self, change: Change, ctx: Context) -> Applied:
        super().create(change, ctx)  # a version staged...
        raise ProviderError(change.address, "the disk said no")  # ...and then a failure


def test_a_failed_change_commits_nothing_it_staged(project: Callable[[Files], Path]) -> None:
    root = project(_files())
    session = open_session(root, None, "apply", write=True)
    try:
        session.provider.handlers["Model"] = _RegistersThenFails()
        result = execute(session, plan(session))
        assert result.failed == {"model.fraud": "the disk said no"}
        assert ModelRegistry(session.store).versions("fraud") == []
        journal = session.store.query("SELECT status FROM journal WHERE address='model.fraud'")
        assert journal == [("failed",)]
        session.provider.handlers.pop("Model")
        again = execute(session, plan(session))
        assert again.ok
        # The number the failed change had reserved is free again in this process.
        assert [v.version for v in ModelRegistry(session.store).versions("fraud")] == [1]
    finally:
        session.close()


def test_staged_writes_are_invisible_until_the_engine_commits(
        project: Callable[[Files], Path]) -> None:
    root = project(_files())
    session = open_session(root, None, "apply", write=True)
    store = session.store
    try:
        execute(session, plan(session))  # fraud:1
        work = UnitOfWork(store, None, "model.fraud")
        staged = ModelRegistry(work)
        version, created = staged.register("fraud", "cd" * 32, "onnx", {}, None, {}, {}, {})
        again, _ = staged.register("fraud", "cd" * 32, "onnx", {}, None, {}, {}, {})
        other = UnitOfWork(store, None, "model.fraud")
        third, _ = ModelRegistry(other).register("fraud", "ef" * 32, "onnx", {}, None, {}, {},
                                                 {})
        assert created and (version.version, again.version, third.version) == (2, 2, 3)
        staged.set_alias("fraud", "champion", 1, "kept")
        assert [v.version for v in ModelRegistry(store).versions("fraud")] == [1]
        store.commit_change(None, "model.fraud", "update", store.get("model.fraud"), "", work)
        work.release()
        other.release()
        assert [v.version for v in ModelRegistry(store).versions("fraud")] == [1, 2]
        # 3 was never committed: given to the next one all the same (never reused once
        # committed, and never given twice while reserved)
        fourth, _ = ModelRegistry(store).register("fraud", "ab" * 32, "onnx", {}, None, {},
                                                  {}, {})
        assert fourth.version == 3
    finally:
        session.close()


def test_version_numbers_are_never_reused_after_a_destroy(
        project: Callable[[Files], Path], cli: Cli) -> None:
    root = project(_files())
    assert cli("apply", "--auto-approve").code == 0
    assert cli("destroy", "--auto-approve").code == 0
    (root / "models" / "fraud.onnx").write_bytes(onnx_model((1.0, 0.5)))
    assert cli("apply", "--auto-approve").code == 0
    shown = cli("models", "list")
    assert "fraud:2" in shown.out and "fraud:1" not in shown.out, shown.out
    assert "data.holdout.version = 2" in cli("output", "data.holdout").out


def test_a_manual_alias_move_is_an_operation_with_its_backup(
        project: Callable[[Files], Path], cli: Cli) -> None:
    root = project(_files())
    assert cli("apply", "--auto-approve").code == 0
    (root / "models" / "fraud.onnx").write_bytes(onnx_model((1.0, 0.5)))
    assert cli("apply", "--auto-approve").code == 0
    backup = root / ".mlinfra" / "dev" / "state.db.backup"
    backup.unlink()
    moved = cli("models", "alias", "fraud@champion", "1")
    assert moved.code == 0, moved.err
    assert backup.exists()  # every writing command takes its backup
    session = open_session(root, None, "plan", write=False)
    try:
        done = session.store.query("SELECT action, status FROM journal WHERE "
                                   "address='model.fraud' ORDER BY id DESC LIMIT 1")
        assert done == [("alias", "done")]
    finally:
        session.close()
    # The first file again: fraud:1, which the alias names by hand now. The reason given
    # for keeping it is why it is the champion now, not an older decision's.
    (root / "models" / "fraud.onnx").write_bytes(onnx_model((2.0, 0.0)))
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert ("kept fraud@champion -> fraud:1 (fraud:1 is already the alias' version (set by "
            "mlinfra models alias))") in again.out, again.out


def test_errors_keep_their_cause_and_debug_prints_the_chain(
        project: Callable[[Files], Path], cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(_files())
    assert cli("apply", "--auto-approve").code == 0
    db = root / ".mlinfra" / "dev" / "state.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE resources SET outputs='{broken' WHERE address='model.fraud'")
    conn.close()
    plain = cli("plan")
    assert plain.code == 1 and "is damaged" in plain.err and "Traceback" not in plain.err
    monkeypatch.setenv("MLINFRA_DEBUG", "1")
    debug = cli("plan")
    assert debug.code == 1 and "fields: where=resource model.fraud" in debug.err
    # the JSON error it was raised from, then the state's own error
    assert "json.decoder.JSONDecodeError" in debug.err
    assert "The above exception was the direct cause" in debug.err
    from mlinfra.state.lock import LockHeld, locked

    session = open_session(root, None, "apply", write=True)
    try:
        with locked(session.store, "dev", "apply"), pytest.raises(LockHeld) as held:
            other = open_session(root, None, "apply", write=True)
            try:
                with locked(other.store, "dev", "apply"):
                    pass
            finally:
                other.close()
        assert held.value.fields["stack"] == "dev" and "pid" in held.value.fields["holder"]
    finally:
        session.close()
