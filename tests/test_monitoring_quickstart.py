"""The quickstart, monitored end to end: it serves; 5,000 rows like the training data
raise no alert; 5,000 rows with `amount` shifted breach the monitor on `amount` after
`alert_after` windows; labels posted for 1,000 rows give an auc with its row count; and
the plan says a retrain needs new data, then shows the one new data would cause."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlinfra.cli import main
from tests.endpoint_client import Client, call
from tests.test_monitoring import wait_captured

FEATURES = ["amount", "hour", "merchant_risk", "distance_km", "card_age_days"]


def mlinfra(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def send(url: str, key: str, rows: list[list[float]]) -> list[str]:
    ids = []
    with Client(url, key) as client:
        for start in range(0, len(rows), 50):
            status, _, headers = client.request("POST", "/invocations", {
                "dataframe_split": {"columns": FEATURES, "data": rows[start:start + 50]}})
            assert status == 200
            ids.append(headers["x-request-id"])
    return ids


@pytest.mark.slow
def test_the_quickstart_monitored_from_calm_to_breach(
        quickstart: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart)
    monitor = quickstart / "monitoring.yaml"
    monitor.write_text(monitor.read_text().replace("window: 1h", "rows: 2500").replace(
        "  data_quality:", "  performance: {metric: auc, min: 0.7}\n  data_quality:"))
    serving = quickstart / "serving.yaml"
    serving.write_text(serving.read_text().replace("collect: {sample: 0.1}",
                                                   "collect: {sample: 1.0}"))
    code, out = mlinfra(capsys, "apply", "--auto-approve")
    try:
        assert code == 0, out[-3000:]
        url = json.loads(mlinfra(capsys, "output", "endpoint.fraud-api", "--json")[1])[
            "endpoint.fraud-api"]["url"]
        key = (quickstart / ".mlinfra" / "dev" / "endpoints" / "fraud-api" /
               "operator.key").read_text().strip()
        with open(quickstart / "data" / "transactions.csv", newline="") as f:
            table = list(csv.DictReader(f))
        rng = np.random.default_rng(0)
        picked = [table[i] for i in rng.integers(0, len(table), 10_000)]
        rows = [[float(r[c]) for c in FEATURES] for r in picked]
        std = float(np.std([r[0] for r in rows]))
        calm_ids = send(url, key, rows[:5000])
        shifted = [[r[0] + std, *r[1:]] for r in rows[5000:]]
        send(url, key, shifted)
        wait_captured(quickstart, 10_000, endpoint="fraud-api")
        # labels for the first 1,000 calm rows, each by its request id and row
        feedback = [{"request_id": calm_ids[i // 50], "row": i % 50,
                     "label": int(picked[i]["is_fraud"])} for i in range(1000)]
        status, body, _ = call(url, key, "POST", "/v2/models/fraud-api/feedback",
                               {"feedback": feedback})
        assert (status, body) == (200, {"accepted": 1000})
        code, out = mlinfra(capsys, "monitor", "run", "--json")
        assert code == 3, out
        verdict = json.loads(out)[0]
        windows = verdict["computed"]
        assert [w["status"] for w in windows] == ["ok", "ok", "drift", "drift"], windows
        assert verdict["breached"] and verdict["streak"] == 2
        for window in windows[2:]:
            drifted = {s["feature"] for s in window["signals"]
                       if s["signal"] == "data_drift" and s["verdict"] == "drift"}
            assert drifted == {"amount"}, window
        performance = [s for s in windows[0]["signals"] if s["signal"] == "performance"]
        assert performance[0]["rows"] == 1000 and performance[0]["value"] > 0.7
        code, shown = mlinfra(capsys, "monitors", "show", "fraud-watch")
        assert code == 3 and "auc" in shown and "(1000 labelled rows)" in shown
        code, out = mlinfra(capsys, "plan")
        assert code == 0
        assert "monitor.fraud-watch: drifted for 2 windows (amount: W" in out
        assert ("no new data since transactions:1: pipeline.fraud has nothing new to "
                "retrain on") in out
        # new data: the plan shows the retrain the breach calls for
        with open(quickstart / "data" / "transactions.csv", "a") as f:
            f.write("120.5,3,0.5,10.0,400,0\n")
        code, out = mlinfra(capsys, "plan")
        assert code == 0 and "pipeline.fraud will retrain on transactions:2" in out
        captured = sum(pq.read_metadata(p).num_rows for p in (
            quickstart / "data" / "captures" / "fraud-api" / "requests").glob("*/*.parquet"))
        assert captured == 10_000
    finally:
        assert main(["destroy", "--auto-approve"]) == 0
