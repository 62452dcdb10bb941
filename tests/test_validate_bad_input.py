"""Every user mistake gives exit 1, the exact file:line, and a useful message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Files, Result

JOB = """\
kind: Environment
name: sklearn
python: "3.11"
---
kind: Job
name: train
command: python train.py
environment: sklearn
"""

ENDPOINT = """\
kind: Model
name: fraud
from: {{path: model.onnx}}
---
kind: Endpoint
name: api
deployments:
  - name: blue
    model: fraud
  - name: green
    model: fraud:2
traffic: {traffic}
mirror: {mirror}
"""

# (id, files, expected "file:line:col" prefix, message fragment)
CASES: list[tuple[str, Files, str, str]] = [
    ("tab-indentation", {"a.yaml": "kind: Job\nname: x\ncommand: y\n\tparams: {}\n"},
     "a.yaml:4:1:", "tab character"),
    ("unclosed-quote", {"a.yaml": 'kind: Job\nname: "train\ncommand: y\n'},
     "a.yaml:2:7:", "never closed"),
    ("wrong-type", {"a.yaml": "kind: Compute\nname: gpu\nmax_concurrency: two\n"},
     "a.yaml:3:18: compute/gpu: max_concurrency:", "expected an integer, got a string"),
    ("unknown-field", {"a.yaml": JOB + "enviroment: x\n"},
     "a.yaml:9:1: job/train: enviroment:", "unknown field 'enviroment' (did you mean "
                                           "'environment'?)"),
    ("missing-required", {"a.yaml": "kind: Job\nname: train\n"},
     "a.yaml:1:1: job/train:", "missing required field 'command'"),
    ("missing-kind", {"a.yaml": "name: train\n"}, "a.yaml:1:1:",
     "missing required field 'kind'"),
    ("unknown-kind", {"a.yaml": "kind: Jobb\nname: x\n"},
     "a.yaml:1:7:", "unknown kind 'Jobb' (did you mean 'Job'?)"),
    ("unknown-reference", {"a.yaml": JOB.replace("environment: sklearn",
                                                 "environment: sklern")},
     "a.yaml:8:14: job/train: environment:", "unknown environment 'sklern' (did you mean "
                                             "'sklearn'?)"),
    ("unknown-data-input", {"a.yaml": JOB + "inputs: {data: transactions}\n"},
     "a.yaml:9:16: job/train: inputs.data:", "unknown data 'transactions'"),
    ("bad-reference-syntax", {"a.yaml": ENDPOINT.format(traffic="{blue: 100}", mirror="{}")
                              .replace("model: fraud:2", "model: Fraud:v2")},
     "a.yaml:11:12: endpoint/api: deployments[1].model:", "is not a reference"),
    ("duplicate-name", {"a.yaml": JOB, "b.yaml": "kind: Job\nname: train\ncommand: x\n"},
     "b.yaml:2:7:", "job/train is already defined at a.yaml:6"),
    ("name-ends-in-newline", {"a.yaml": 'kind: Compute\nname: "ep\\n"\n'},
     "a.yaml:2:7:", "is not a name"),
    ("reference-ends-in-newline", {"a.yaml": ENDPOINT.format(
        traffic="{blue: 100}", mirror="{}").replace("model: fraud:2", 'model: "fraud:2\\n"')},
     "a.yaml:11:12: endpoint/api: deployments[1].model:", "is not a reference"),
    ("stack-named-as-another", {"stacks/dev.yaml": "kind: Stack\nname: prod\n"},
     "stacks/dev.yaml:2:7: stack/prod: name:", "its file is dev.yaml"),
    ("duplicate-key", {"a.yaml": "kind: Job\nname: x\ncommand: a\ncommand: b\n"},
     "a.yaml:4:1:", "duplicate key 'command'"),
    ("empty-file", {"a.yaml": ""}, "a.yaml:1:1:", "empty file"),
    ("comments-only", {"a.yaml": "# nothing here\n"}, "a.yaml:1:1:", "empty file"),
    ("binary-file", {"a.yaml": b"\x89PNG\r\n\x1a\n\0\0\0IHDR"}, "a.yaml:1:1:", "binary file"),
    ("not-utf8", {"a.yaml": b"kind: Job\nname: caf\xe9\n"}, "a.yaml:2:1:", "not UTF-8"),
    ("ten-mb-file", {"a.yaml": "# " + "x" * (10 * 1024 * 1024) + "\n"}, "a.yaml:1:1:",
     "10.0 MiB"),
    ("alias-bomb", {"a.yaml": "kind: Job\nname: x\ncommand: y\n"
                    "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
                              for p, c in zip("abcdefgh", "bcdefghi", strict=True))
                    + "params: *i\n"},
     "a.yaml:5:8:", "alias bomb"),
    ("path-escapes-project", {"a.yaml": "kind: Job\nname: x\ncommand: y\ncode: ../..\n"},
     "a.yaml:4:7: job/x: code:", "escapes the project folder"),
    ("path-absolute", {"a.yaml": "kind: Job\nname: x\ncommand: y\ncode: /etc\n"},
     "a.yaml:4:7: job/x: code:", "is absolute"),
    ("code-missing", {"a.yaml": "kind: Job\nname: x\ncommand: y\ncode: ./nope\n"},
     "a.yaml:4:7: job/x: code:", "does not exist"),
    ("invalid-name", {"a.yaml": "kind: Compute\nname: My_GPU\n"},
     "a.yaml:2:7: compute/My_GPU: name:", "is not a name"),
    ("enum", {"a.yaml": "kind: Compute\nname: c\ntype: kubernets\n"},
     "a.yaml:3:7: compute/c: type:", "did you mean 'kubernetes'"),
    ("traffic-sum", {"a.yaml": ENDPOINT.format(traffic="{blue: 60, green: 30}", mirror="{}")},
     "a.yaml:12:10: endpoint/api: traffic:", "sum to 90"),
    ("traffic-unknown-deployment", {"a.yaml": ENDPOINT.format(
        traffic="{blue: 50, gren: 50}", mirror="{}")},
     "a.yaml:12:21: endpoint/api: traffic.gren:", "did you mean 'green'"),
    ("mirror-on-live", {"a.yaml": ENDPOINT.format(traffic="{blue: 100}",
                                                  mirror="{blue: 10}")},
     "a.yaml:13:16: endpoint/api: mirror.blue:", "takes live traffic"),
    ("mirror-over-50", {"a.yaml": ENDPOINT.format(traffic="{blue: 100}",
                                                  mirror="{green: 60}")},
     "a.yaml:13:17: endpoint/api: mirror.green:", "at most 50"),
    ("job-cycle", {"a.yaml": """\
        kind: Job
        name: a
        command: x
        inputs: {i: "${jobs.b.outputs.o}"}
        outputs: {o: o.txt}
        ---
        kind: Job
        name: b
        command: x
        inputs: {i: "${jobs.a.outputs.o}"}
        outputs: {o: o.txt}
        """}, "a.yaml:4:9: job/a: inputs:", "jobs form a cycle: a -> b -> a"),
    ("step-cycle", {"a.yaml": """\
        kind: Job
        name: a
        command: x
        outputs: {o: o.txt}
        ---
        kind: Pipeline
        name: p
        steps:
          one: {job: a, inputs: {i: "${steps.two.outputs.o}"}}
          two: {job: a, inputs: {i: "${steps.one.outputs.o}"}}
        """}, "a.yaml:9:3: pipeline/p: steps:", "steps form a cycle"),
    ("unknown-step-output", {"a.yaml": """\
        kind: Job
        name: a
        command: x
        outputs: {o: o.txt}
        ---
        kind: Pipeline
        name: p
        steps:
          one: {job: a}
          two: {job: a, inputs: {i: "${steps.one.outputs.out}"}}
        """}, "a.yaml:10:29: pipeline/p: steps.two.inputs.i:", "has no output 'out'"),
    ("unknown-variable", {"a.yaml": "kind: Compute\nname: c\ntype: ${var.kind}\n"},
     "a.yaml:3:7: compute/c: type:", "variable 'kind' is not set"),
    ("unknown-interpolation", {"a.yaml": "kind: Job\nname: x\ncommand: echo ${input.a}\n"},
     "a.yaml:3:10: job/x: command:", "did you mean 'inputs'"),
    ("undeclared-command-input", {"a.yaml": "kind: Job\nname: x\ncommand: run ${inputs.d}\n"},
     "a.yaml:3:10: job/x: command:", "${inputs.d} is not declared in inputs"),
    ("project-kind-elsewhere", {"a.yaml": "kind: Project\nname: x\n"}, "a.yaml:1:7:",
     "only in mlinfra.yaml"),
    ("not-a-mapping", {"a.yaml": "- kind: Job\n"}, "a.yaml:1:1:", "must be a mapping"),
    ("rollout-steps", {"a.yaml": ENDPOINT.format(traffic="{blue: 100}", mirror="{}")
                       + "---\nkind: Promotion\nname: p\nmodel: fraud\n"
                         "rollout: {endpoint: api, steps: [50, 10]}\n"},
     "a.yaml:18:33: promotion/p: rollout.steps:", "rise and end at 100"),
]


@pytest.mark.parametrize(("files", "where", "fragment"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(project: Callable[[Files], Path], cli: Callable[..., Result], files: Files,
                   where: str, fragment: str) -> None:
    project(files)
    result = cli("validate")
    assert result.code == 1, result
    assert "Traceback" not in result.err
    matching = [line for line in result.err.splitlines() if line.startswith(where)]
    assert matching, f"no line starts with {where!r}:\n{result.err}"
    assert any(fragment in line for line in matching), result.err
    assert result.err.rstrip().splitlines()[-1].endswith(("file", "files"))


def test_every_error_at_once_sorted(project: Callable[[Files], Path],
                                    cli: Callable[..., Result]) -> None:
    project({"b.yaml": "kind: Compute\nname: c\ntype: nope\nmax_concurrency: 0\n",
             "a.yaml": "kind: Job\nname: x\n"})
    result = cli("validate")
    lines = result.err.splitlines()
    assert lines[:3] == [
        "a.yaml:1:1: job/x: missing required field 'command'",
        "b.yaml:3:7: compute/c: type: must be one of: local, docker, kubernetes (got 'nope')",
        "b.yaml:4:18: compute/c: max_concurrency: must be at least 1 (got 0)",
    ]
    assert lines[-1] == "3 errors in 2 files"


def test_two_missing_fields_are_two_errors(project: Callable[[Files], Path],
                                           cli: Callable[..., Result]) -> None:
    project({"a.yaml": "kind: Datastore\n"})
    assert cli("validate").err.splitlines() == [
        "a.yaml:1:1: datastore: missing required field 'name'",
        "a.yaml:1:1: datastore: missing required field 'path'",
        "2 errors in 1 file"]


def test_json_output(project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    import json

    project({"a.yaml": "kind: Job\nname: x\ncommand: y\nextra: 1\n"})
    result = cli("validate", "--json")
    assert result.code == 1
    data = json.loads(result.out)
    assert data["valid"] is False
    assert data["errors"] == [{"file": "a.yaml", "line": 4, "column": 1, "address": "job/x",
                               "field": "extra", "message": "unknown field 'extra'"}]


def test_no_project(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("validate", "-C", str(tmp_path))
    assert result.code == 1
    assert "no mlinfra.yaml" in result.err and "mlinfra init" in result.err


def test_unknown_stack_lists_known(quickstart: Path, cli: Callable[..., Result]) -> None:
    result = cli("validate", "-C", str(quickstart), "-s", "prod")
    assert result.code == 1
    assert "stack 'prod' not found" in result.err
    assert "dev, docker, kubernetes" in result.err


def test_a_duplicate_brings_no_other_error(project: Callable[[Files], Path],
                                           cli: Callable[..., Result]) -> None:
    model = ("kind: Model\nname: churn\nfrom: {job: train, output: model}\n"
             "evaluation: {data: holdout, label: y, metrics: [auc]}\n")
    project({"pipeline.yaml": JOB + "outputs: {model: m.onnx}\n---\n" + model
             + "---\nkind: Data\nname: holdout\npath: h.csv\n",
             "zz.yaml": model.replace("job: train", "job: train2")})
    (Path("data") / "h.csv").write_text("a,y\n1,0\n")
    result = cli("validate")
    assert result.code == 1
    lines = [line for line in result.err.splitlines() if ": " in line and ".yaml:" in line]
    assert lines == ["zz.yaml:2:7: model/churn is already defined at pipeline.yaml:12"], \
        result.err
