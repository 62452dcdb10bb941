"""mlinfra's own overhead per training run, beside the script's own time, same run.

A job in a cached uv environment runs a script that prints the time it starts and
ends, and copies an ONNX model to its output; a Model registers it. Each round
changes a param so the job runs again. Measured per round:
  - submit -> first line: from starting `mlinfra apply` to the script's first line
  - end of script -> registered model: from the script's last line to the version's
    registration time in the registry
  - the script's own time (first line to last line)

    .venv/bin/python benchmarks/runs.py [--rounds 5]

Goal: under 1 s of overhead per run with a cached environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import onnx_model

MLINFRA = str(Path(sys.executable).parent / "mlinfra")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
SCRIPT = """\
import shutil, sys, time
print("START", time.time(), flush=True)
time.sleep(0.5)  # the script's own work
shutil.copyfile("template.onnx", sys.argv[1])
print("END", time.time(), flush=True)
"""
PROJECT = """\
kind: Environment
name: bare
python: "{python}"
---
kind: Job
name: train
code: ./train
command: python train.py ${{outputs.model}} ${{params.round}}
environment: bare
params: {{round: {round}}}
outputs: {{model: model.onnx}}
---
kind: Model
name: m
from: {{job: train, output: model}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        (root / "mlinfra.yaml").write_text("kind: Project\nname: bench\n")
        (root / "train" / "train.py").write_text(SCRIPT)
        (root / "train" / "template.onnx").write_bytes(onnx_model())
        before, after, own = [], [], []
        for round_ in range(args.rounds + 1):
            (root / "p.yaml").write_text(PROJECT.format(python=python, round=round_))
            # a different model each round, so each round registers a new version
            (root / "train" / "template.onnx").write_bytes(onnx_model(bias=round_ / 10))
            submitted = time.time()
            done = subprocess.run([MLINFRA, "apply", "--auto-approve"], cwd=root, env=ENV,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
            marks = {line.split()[-2]: float(line.split()[-1])
                     for line in done.stdout.splitlines() if " START " in line or " END "
                     in line}
            shown = subprocess.run([MLINFRA, "models", "show", f"m:{round_ + 1}"], cwd=root,
                                   env=ENV, capture_output=True, text=True, check=True)
            registered = json.loads(shown.stdout)["created_at"]
            if round_ == 0:
                continue  # the first round builds the environment: not the steady state
            before.append(marks["START"] - submitted)
            after.append(registered - marks["END"])
            own.append(marks["END"] - marks["START"])
    median = statistics.median
    print(f"rounds: {args.rounds} (after one warm-up that builds the environment), median")
    print(f"{'submit -> first line of the script':<38} {median(before) * 1000:8.0f} ms")
    print(f"{'end of script -> registered model':<38} {median(after) * 1000:8.0f} ms")
    print(f"{'mlinfra overhead per run':<38} {(median(before) + median(after)) * 1000:8.0f} ms"
          " (goal: under 1000 ms)")
    print(f"{'the script itself':<38} {median(own) * 1000:8.0f} ms")
    print(f"ratio overhead / script: {(median(before) + median(after)) / median(own):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
