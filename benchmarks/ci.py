"""`mlinfra ci run` on a commit it already processed, beside `git status` and
`mlinfra plan` on the same project, same run.

A processed commit is planned again (the state may have moved since: a destroy, an
apply by hand) and found unchanged, so a push that changes nothing costs about a plan.

    .venv/bin/python benchmarks/ci.py [--rounds 5] [--data-rows 100000]

Goal: a processed commit's `ci run` within 2 s (a bound the tests no longer assert).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLINFRA = str(Path(sys.executable).parent / "mlinfra")
PROJECT = """\
kind: Datastore
name: main
path: ./data
---
kind: Data
name: rows
path: rows.csv
---
kind: Job
name: copy
code: ./steps
command: sh copy.sh ${inputs.d} ${outputs.o}
inputs: {d: rows}
outputs: {o: out.csv}
"""


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=b@example.com", "-c", "user.name=bench",
                    "-c", "init.defaultBranch=main", *args], cwd=root, check=True,
                   capture_output=True)


def _timed(root: Path, command: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-ci-") as tmp:
        root = Path(tmp)
        (root / "mlinfra.yaml").write_text("kind: Project\nname: bench\n")
        (root / "p.yaml").write_text(PROJECT)
        (root / "steps").mkdir()
        (root / "steps" / "copy.sh").write_text("cp $1 $2\n")
        (root / "data").mkdir()
        (root / "data" / "rows.csv").write_text(
            "a,b\n" + "".join(f"{i},{i * 7 % 13}\n" for i in range(args.data_rows)))
        (root / ".gitignore").write_text(".mlinfra/\n")
        _git(root, "init", "-q")
        _git(root, "add", "-A")
        _git(root, "commit", "-qm", "bench")
        _timed(root, [MLINFRA, "ci", "run"], 1)  # processes the commit
        ci = _timed(root, [MLINFRA, "ci", "run"], args.rounds)
        plan = _timed(root, [MLINFRA, "plan"], args.rounds)
        status = _timed(root, ["git", "status", "--porcelain"], args.rounds)
    print(f"ci run, processed commit: {ci:.3f} s (median of {args.rounds})")
    print(f"mlinfra plan (anchor):    {plan:.3f} s   ci run / plan = {ci / plan:.2f}x")
    print(f"git status (anchor):      {status:.3f} s   ci run / git status = "
          f"{ci / status:.1f}x")


if __name__ == "__main__":
    main()
