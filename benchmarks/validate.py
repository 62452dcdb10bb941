"""How long `mlinfra validate` takes on 10,000 resources, beside PyYAML's C loader
just loading the same files, measured in the same run.

    .venv/bin/python benchmarks/validate.py [--resources N] [--repeat R]

Goal: validate / load at most 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mlinfra.spec import load
from mlinfra.spec.project import yaml_files

PER_FILE = 100

HEADER = """\
kind: Workspace
name: bench
default_datastore: main
---
kind: Compute
name: cpu
type: local
---
kind: Datastore
name: main
path: ./data
---
kind: Environment
name: sklearn
python: "3.11"
requirements: [scikit-learn, skl2onnx]
"""

RESOURCES = [
    """\
kind: Data
name: data-{i}
path: part-{i}.csv
format: csv
tags: {{team: fraud, shard: "{i}"}}
expectations:
  - expect_column_values_to_not_be_null: {{column: amount}}
""",
    """\
kind: Job
name: job-{i}
description: trains shard {i}
code: ./train
command: python train.py --data ${{inputs.data}} --model ${{outputs.model}} --C ${{params.C}}
environment: sklearn
compute: cpu
inputs: {{data: data-{p1}}}
params: {{C: 1.0, max_iter: 100}}
outputs: {{model: model.onnx}}
timeout: 30m
""",
    """\
kind: Model
name: model-{i}
from: {{job: job-{p1}, output: model}}
format: onnx
evaluation: {{data: data-{p2}, label: is_fraud, metrics: [auc, accuracy]}}
""",
    """\
kind: Endpoint
name: api-{i}
compute: cpu
auth: key
deployments:
  - name: blue
    model: model-{p1}@champion
    request: {{timeout_ms: 5000, max_batch_size: 32}}
  - name: green
    model: model-{p1}:2
traffic: {{blue: 90, green: 10}}
""",
]


def generate(root: Path, n: int) -> None:
    (root / "train").mkdir()
    (root / "data").mkdir()
    (root / "mlinfra.yaml").write_text("kind: Project\nname: bench\n")
    (root / "base.yaml").write_text(HEADER)
    docs = []
    for i in range(n - 4):
        template = RESOURCES[i % len(RESOURCES)]
        # each template refers to the resources generated just before it
        docs.append(template.format(i=i, p1=i - 1, p2=i - 2))
    for start in range(0, len(docs), PER_FILE):
        path = root / f"resources-{start // PER_FILE:04d}.yaml"
        path.write_text("---\n".join(docs[start:start + PER_FILE]))


def load_only(root: Path) -> int:
    count = 0
    for path in yaml_files(root):
        count += sum(1 for _ in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))
    return count


def timed(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, args.resources)
        config = load(root)  # also checks the generated project is valid
        assert sum(config.counts().values()) == args.resources, config.counts()
        assert load_only(root) == args.resources + 1
        t_load = timed(lambda: load_only(root), args.repeat)
        t_warm = timed(lambda: load(root), args.repeat)
        # The comparison with PyYAML is parse against parse: no document cache.
        os.environ["MLINFRA_NO_CACHE"] = "1"
        t_validate = timed(lambda: load(root), args.repeat)
    ratio = t_validate / t_load
    print(f"resources: {args.resources:,} in {args.resources // PER_FILE + 1} files, "
          f"median of {args.repeat}")
    print(f"{'PyYAML CSafeLoader, load only':<34} {t_load * 1000:9.1f} ms")
    print(f"{'mlinfra validate (load+schema+refs)':<34} {t_validate * 1000:9.1f} ms")
    print(f"ratio validate/load: {ratio:.2f} (goal: at most 2)")
    print(f"{'mlinfra validate, files unchanged':<34} {t_warm * 1000:9.1f} ms "
          "(parsed documents cached by content hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
