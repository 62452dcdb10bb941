"""A run in a container: what mlinfra hands the provider that starts it and waits for
its end (a Docker container, a Kubernetes Job), and what comes back.

The run keeps mlinfra's one code path (run record, run hash, reuse, input staging,
output collection, `runs.execute.execute`); only launching and waiting differ. Inside
the container the run sees its folder at /mlinfra/run (its outputs, metrics and log;
read-write), its code snapshot at /mlinfra/run/code and the metrics helper at
/mlinfra/run/helper (read-only), and each input at /mlinfra/inputs/NAME/FILE
(read-only): `mounts` says which file or folder of this machine each one is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = "/mlinfra/run"
INPUTS_DIR = "/mlinfra/inputs"


@dataclass(slots=True, init=False)
class Mount:
    """A file or folder of this machine (`source`, absolute) at `target` in the
    container."""

    source: Path
    target: str
    read_only: bool

    def __init__(self, source: Path, target: str, read_only: bool) -> None:
        self.source, self.target, self.read_only = source, target, read_only


@dataclass(slots=True, init=False)
class ContainerRun:
    """One run to start. `command` and `env` use the container's paths; `secret_env`
    names the variables of `env` whose values are sensitive (the provider keeps them
    secret: a Pulumi secret, a Kubernetes Secret); `run_dir` is the run's folder here."""

    run_id: str
    job: str
    command: str
    env: dict[str, str]
    secret_env: tuple[str, ...]
    mounts: list[Mount]
    working_dir: str
    timeout_s: float | None
    run_dir: Path

    def __init__(self, run_id: str, job: str, command: str, env: dict[str, str],
                 secret_env: tuple[str, ...], mounts: list[Mount], working_dir: str,
                 timeout_s: float | None, run_dir: Path) -> None:
        self.run_id, self.job, self.command, self.env = run_id, job, command, env
        self.secret_env, self.mounts, self.working_dir = secret_env, mounts, working_dir
        self.timeout_s, self.run_dir = timeout_s, run_dir

    def __repr__(self) -> str:  # never the values of `env`, which may be secrets
        return f"ContainerRun(run_id={self.run_id!r}, job={self.job!r})"


@dataclass(slots=True, init=False)
class Finished:
    """How a container run ended: its exit code (None when the provider reports only
    failure, as a Kubernetes Job does), its output, the provider's own error when the
    run could not be started or awaited, whether it ran out of time, and where it ran
    (the container's or Job's name and image, for the run record)."""

    exit_code: int | None
    logs: str
    error: str
    timed_out: bool
    where: str

    def __init__(self, exit_code: int | None, logs: str, error: str = "",
                 timed_out: bool = False, where: str = "") -> None:
        self.exit_code, self.logs, self.error = exit_code, logs, error
        self.timed_out, self.where = timed_out, where


Launcher = Callable[[ContainerRun], Finished]
