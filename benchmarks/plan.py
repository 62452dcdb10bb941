"""Planning speed: mlinfra beside Terraform, on the same synthetic resources, same run.

Each resource is a mlinfra Compute with tags, and a Terraform `terraform_data` with the
same attributes as its `input` (built in: no provider download). For each N it times,
as a user would run them (whole processes): the first apply, a no-change plan, and a
plan after one resource changed. Each plan row is the median of --repeat runs (the
first apply runs once; each one-change run changes another resource). mlinfra's
bytecode is compiled first, as pip and uv do when they install a package.

    .venv/bin/python benchmarks/plan.py                 # N = 1000, 3000 (both), 10000 (mlinfra)
    .venv/bin/python benchmarks/plan.py --sizes 1000    # quicker

Goals: a no-change plan of 10,000 resources under 2 s; at least 10x faster
than Terraform on every row. With the state on PostgreSQL, rows marked "postgres" (for
the sizes in --postgres-sizes), read through psycopg like every session: a no-change
plan at least 5x faster than Terraform's.
They use a throwaway local server (tests/postgres.py: PostgreSQL's initdb and pg_ctl),
or --postgres URL (the password from PGPASSWORD).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TERRAFORM = shutil.which("terraform") or "/usr/local/bin/terraform"
MLINFRA = str(Path(sys.executable).parent / "mlinfra")
# As on a user's machine: Python may cache bytecode (this sandbox turns it off).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TF_ENV = {**ENV, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1",
          "CHECKPOINT_DISABLE": "1"}


def attributes(i: int, changed: bool = False) -> dict[str, str | int]:
    return {"owner": f"team-{i % 17}", "index": str(i), "purpose": "benchmark",
            "max_concurrency": 2 + (i % 3) + (1 if changed else 0)}


def write_mlinfra(root: Path, n: int, changed: int | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlinfra.yaml").write_text("kind: Project\nname: bench\n")
    per_file = 500
    for start in range(0, n, per_file):
        docs = []
        for i in range(start, min(n, start + per_file)):
            a = attributes(i, i == changed)
            docs.append(f"kind: Compute\nname: c{i}\ntype: local\n"
                        f"max_concurrency: {a['max_concurrency']}\n"
                        f"tags: {{owner: {a['owner']}, index: \"{a['index']}\", "
                        f"purpose: {a['purpose']}}}\n")
        (root / f"compute-{start // per_file:03d}.yaml").write_text("---\n".join(docs))


def write_terraform(root: Path, n: int, changed: int | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    blocks = []
    for i in range(n):
        a = attributes(i, i == changed)
        blocks.append(f'resource "terraform_data" "c{i}" {{\n  input = {{\n'
                      f'    owner = "{a["owner"]}"\n    index = "{a["index"]}"\n'
                      f'    purpose = "{a["purpose"]}"\n'
                      f'    max_concurrency = {a["max_concurrency"]}\n  }}\n}}\n')
    (root / "main.tf").write_text("\n".join(blocks))


def timed(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
          ok: tuple[int, ...] = (0,), repeat: int = 1) -> float:
    """Median wall time of `repeat` runs of a whole command."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              check=False)
        times.append(time.perf_counter() - start)
        if done.returncode not in ok:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n"
                             f"{done.stderr[-2000:]}")
    return statistics.median(times)


def one_change(write: Callable[[int], None], n: int, repeat: int, argv: list[str],
               cwd: Path, env: dict[str, str]) -> float:
    """Median of plans each made just after one resource changed: each time another
    resource, so the changed file's bytes are new and no cache has seen them."""
    times = []
    for rep in range(repeat):
        write(n // 2 + rep)
        times.append(timed(argv, cwd, env, ok=(2,)))
    return statistics.median(times)


def bench_postgres(tmp: Path, n: int, repeat: int, url: str, env: dict[str, str]
                   ) -> dict[str, float]:
    """The same project with its state on PostgreSQL, in a schema of its own."""
    root = tmp / f"mlinfra-pg-{n}"
    write_mlinfra(root, n)
    (root / "stacks").mkdir()
    separator = "&" if "?" in url else "?"
    (root / "stacks" / "dev.yaml").write_text(
        f"kind: Stack\nname: dev\nstate: {url}{separator}schema=bench_{n}_{os.getpid()}\n")
    out = {"first apply, postgres": timed([MLINFRA, "apply", "--auto-approve"], root, env)}
    out["no-change, postgres"] = timed([MLINFRA, "plan", "--detailed-exitcode"], root, env,
                                       repeat=repeat)
    return out


def local_postgres() -> tuple[str, Callable[[], None]]:
    """A throwaway server (as the tests start one): its URL, and how to stop it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.postgres import PASSWORD, PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: give --postgres URL, or "
                         "--postgres-sizes '' to leave it out")
    server = PostgresServer(bindir)
    server.start()
    os.environ["PGPASSWORD"] = PASSWORD
    return server.url(), server.stop


def bench_mlinfra(tmp: Path, n: int, repeat: int) -> dict[str, float]:
    root = tmp / f"mlinfra-{n}"
    write_mlinfra(root, n)
    out = {"first apply": timed([MLINFRA, "apply", "--auto-approve"], root, ENV)}
    out["no-change plan"] = timed([MLINFRA, "plan", "--detailed-exitcode"], root, ENV,
                                  repeat=repeat)
    out["no-change, cold"] = timed([MLINFRA, "plan", "--detailed-exitcode"], root,
                                   {**ENV, "MLINFRA_NO_CACHE": "1"}, repeat=repeat)
    out["one-change plan"] = one_change(
        lambda changed: write_mlinfra(root, n, changed=changed), n, repeat,
        [MLINFRA, "plan", "--detailed-exitcode"], root, ENV)
    return out


def bench_terraform(tmp: Path, n: int, repeat: int) -> dict[str, float]:
    root = tmp / f"terraform-{n}"
    write_terraform(root, n)
    timed([TERRAFORM, "init", "-input=false"], root, TF_ENV)
    out = {"first apply": timed([TERRAFORM, "apply", "-auto-approve", "-input=false"], root,
                                TF_ENV)}
    out["no-change plan"] = timed([TERRAFORM, "plan", "-detailed-exitcode", "-input=false"],
                                  root, TF_ENV, ok=(0,), repeat=repeat)
    out["one-change plan"] = one_change(
        lambda changed: write_terraform(root, n, changed=changed), n, repeat,
        [TERRAFORM, "plan", "-detailed-exitcode", "-input=false"], root, TF_ENV)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,3000", help="N for both tools")
    parser.add_argument("--mlinfra-only", default="10000", help="N for mlinfra alone")
    parser.add_argument("--repeat", type=int, default=5, help="runs per plan row")
    parser.add_argument("--postgres-sizes", default="1000",
                        help="N with the state on PostgreSQL too")
    parser.add_argument("--postgres", metavar="URL",
                        help="a server for those rows (default: start a local one)")
    args = parser.parse_args()
    package = Path(__file__).resolve().parent.parent / "mlinfra"
    compileall.compile_dir(package, quiet=1)  # as an install does
    both = [int(x) for x in args.sizes.split(",") if x]
    alone = [int(x) for x in args.mlinfra_only.split(",") if x]
    version = subprocess.run([TERRAFORM, "version"], capture_output=True, text=True,
                             env=TF_ENV, check=False).stdout.splitlines()[0]
    print(f"mlinfra ({MLINFRA}) vs {version}, terraform_data, wall time of whole commands "
          f"(plans: median of {args.repeat})\n")
    print(f"{'N':>6}  {'step':<21} {'mlinfra':>10} {'terraform':>11} {'ratio':>8}")
    on_postgres = [int(x) for x in args.postgres_sizes.split(",") if x]
    url, stop = (args.postgres, lambda: None) if args.postgres or not on_postgres else (
        local_postgres())
    pg_env = {**ENV, **{k: v for k, v in os.environ.items() if k.startswith("PG")}}
    against_sqlite: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for n in both + alone:
                mine = bench_mlinfra(tmp, n, args.repeat)
                if n in on_postgres:
                    mine.update(bench_postgres(tmp, n, args.repeat, url, pg_env))
                    against_sqlite.append(
                        f"N={n}: {mine['no-change, postgres'] / mine['no-change plan']:.2f}x")
                theirs = bench_terraform(tmp, n, args.repeat) if n in both else {}
                for step, seconds in mine.items():
                    peer = theirs.get(step.split(",")[0] if step.startswith("first apply")
                                      else "no-change plan" if step.startswith("no-change")
                                      else step)
                    peer_text = f"{peer:10.2f}s" if peer is not None else f"{'-':>11}"
                    ratio = f"{peer / seconds:7.1f}x" if peer is not None else f"{'-':>8}"
                    print(f"{n:>6}  {step:<21} {seconds:9.2f}s {peer_text} {ratio}",
                          flush=True)
    finally:
        stop()
    print("\nratio = terraform time / mlinfra time (goal: at least 10x); "
          "goal: no-change plan of 10,000 under 2 s.\n'cold' parses every YAML file again "
          "(MLINFRA_NO_CACHE=1), as Terraform does; the other plans reuse the documents of "
          "unchanged files.")
    if against_sqlite:
        print("'postgres': the state on a local PostgreSQL server (goal: its no-change "
              "plan at least 5x faster than Terraform's). No-change plan, PostgreSQL / "
              "SQLite: " + ", ".join(against_sqlite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
