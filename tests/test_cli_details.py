"""Smaller promises: `output ADDRESS.FIELD` and `-raw` as Terraform's; metrics shown
with the digits it takes to tell them apart; a model's metrics of one task only; every
duration field written the same ways."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Files, Result, onnx_model

JOB = """\
kind: Job
name: make
command: python -c "print('hi')"
"""


def test_output_of_one_field_and_raw(project: Callable[[Files], Path],
                                     cli: Callable[..., Result]) -> None:
    project({"job.yaml": JOB})
    assert cli("apply", "--auto-approve").code == 0
    everything = json.loads(cli("output", "--json").out)
    run = everything["job.make"]["run_id"]
    assert isinstance(run, str) and run
    one = cli("output", "job.make.run_id")
    assert one.code == 0 and json.loads(one.out) == run
    raw = cli("output", "-raw", "job.make.run_id")
    assert (raw.code, raw.out) == (0, run)  # no quotes, no newline: for $(...)
    missing = cli("output", "job.make.nope")
    assert missing.code == 1 and "job.make has no output nope; its outputs:" in missing.err
    whole = cli("output", "-raw", "job.make")
    assert whole.code == 1 and "give it as ADDRESS.FIELD" in whole.err


def test_metrics_show_the_digits_that_tell_them_apart() -> None:
    from mlinfra.registry.decisions import figures

    assert figures(25541.3, 25538.9) == ["25541.3", "25538.9"]
    assert figures(0.812341, 0.812349) == ["0.81234", "0.81235"]
    assert figures(0.91, 0.9) == ["0.91", "0.9"]
    assert figures(0.5) == ["0.5"]


MODEL = """\
kind: Data
name: holdout
path: holdout.csv
---
kind: Model
name: m
from: {{path: m.onnx}}
evaluation: {{data: holdout, label: y, metrics: {metrics}}}
---
kind: Promotion
name: m
model: m
compare: {{metric: {compare}}}
gates: {{metrics: {{{gate}: {{min: 0}}}}}}
"""


def test_a_model_has_metrics_of_one_task(project: Callable[[Files], Path],
                                         cli: Callable[..., Result]) -> None:
    root = project({"m.onnx": b"not read by validate",
                    "model.yaml": MODEL.format(metrics="[auc, rmse]", compare="auc",
                                               gate="auc")})
    refused = cli("validate")
    assert refused.code == 1
    assert ("model.yaml:8:54: model/m: evaluation.metrics[1]: 'rmse' is a regression metric "
            "and 'auc' a classifier one") in refused.err, refused.err
    (root / "model.yaml").write_text(MODEL.format(metrics="[auc, rmse]", compare="rmse",
                                                  gate="auc"))
    assert "'auc' is a classifier metric and 'rmse' a regression one" in cli("validate").err
    (root / "model.yaml").write_text(MODEL.format(metrics="[rmse, mae]", compare="rmse",
                                                  gate="mae"))
    assert cli("validate").code == 0
    (root / "m.onnx").write_bytes(onnx_model())  # a classifier: labels, probabilities
    refused = cli("validate")
    assert refused.code == 1 and ("evaluation.metrics[0]: 'rmse' is a regression metric "
                                  "and m.onnx is a classifier model") in refused.err
    (root / "model.yaml").write_text(MODEL.format(metrics="[auc, accuracy]", compare="auc",
                                                  gate="accuracy"))
    assert cli("validate").code == 0


ENDPOINT = """\
kind: Model
name: m
from: {{path: m.onnx}}
---
kind: Endpoint
name: api
deployments:
  - name: blue
    model: m
    request: {{timeout_ms: {timeout}, max_batch_delay_ms: {delay}}}
traffic: {{blue: 100}}
---
kind: Promotion
name: m
model: m
rollout: {{endpoint: api, hold_s: {hold}, rollback_on: {{p99_ms: {p99}}}}}
"""


def test_every_duration_takes_the_same_forms(project: Callable[[Files], Path],
                                             cli: Callable[..., Result]) -> None:
    from mlinfra.spec.model import duration_in

    root = project({"m.onnx": b"x", "e.yaml": ENDPOINT.format(
        timeout="5s", delay="500us", hold="2s", p99="100ms")})
    refused = cli("validate")
    assert refused.code == 1 and "max_batch_delay_ms" in refused.err, refused.err
    (root / "e.yaml").write_text(ENDPOINT.format(timeout="5s", delay="1ms", hold="2s",
                                                 p99="100ms"))
    assert cli("validate").code == 0, cli("validate").err
    (root / "e.yaml").write_text(ENDPOINT.format(timeout=5000, delay=1, hold=2, p99=100))
    assert cli("validate").code == 0
    assert duration_in("5s", 0.001, 0) == 5000 and duration_in(250, 0.001, 0) == 250
    assert duration_in("2m", 1.0, 5) == 120 and duration_in(None, 1.0, 5) == 5
