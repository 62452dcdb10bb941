"""Server instances: launched detached, recognised by identity, stopped for sure.

A server instance is one launch of `python -m mlinfra.serving`: a process group led by
its pid, whose every process (the leader and its workers) carries the endpoint's folder
and the instance's id in its environment. That is how mlinfra finds all of an
endpoint's processes (workers orphaned by a killed leader, an instance started by an
apply that was killed before it could record it) and never mistakes another program
that reused a pid for a server: the leader's creation time is checked too.

A server gets a minimal environment (PATH, locale, HOME, temporary folder, the Python
path): never the apply's, which holds the secrets that jobs read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlinfra.providers.base import ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder, InstanceFolder
from mlinfra.runs.processes import is_running, started_at

if TYPE_CHECKING:
    import psutil

FOLDER_VAR = "MLINFRA_ENDPOINT_DIR"
INSTANCE_VAR = "MLINFRA_ENDPOINT_INSTANCE"
# What a server needs from the caller's environment; nothing else is passed on.
PASSED_VARS = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ",
               "TMPDIR", "PYTHONPATH", "LD_LIBRARY_PATH",
               # the object-storage SDKs' own variables: captures on object storage
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
               "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
               "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING",
               "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class ServerInstance:
    """One launch of an endpoint's server. Invariant: the process `pid` is this
    instance's leader only while its creation time is `started`."""

    id: str
    pid: int
    started: float
    port: int

    def outputs(self) -> dict[str, Any]:
        return {"instance": self.id, "pid": self.pid, "started": self.started,
                "port": self.port, "url": f"http://127.0.0.1:{self.port}"}

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any]) -> ServerInstance:
        return cls(str(outputs.get("instance", "")), int(outputs.get("pid", 0)),
                   float(outputs.get("started", 0.0)), int(outputs.get("port", 0)))


def new_instance_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)


def environment(folder: EndpointFolder, instance_id: str,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_VARS if k in os.environ}
    env.update(extra or {})
    env.setdefault("PATH", os.defpath)
    env[FOLDER_VAR] = str(folder.path.resolve())
    env[INSTANCE_VAR] = instance_id
    return env


# The server's output goes through a pipe to mlinfra.serving.server_log, which rotates
# the log; that pump carries neither of the server's variables nor the endpoint's folder
# in its command line, so it is never taken for one of its processes, and it ends with
# the server's last process.
_LAUNCHER = f"""\
import os, subprocess, sys
read, write = os.pipe()
env = {{k: v for k, v in os.environ.items() if k not in ("{FOLDER_VAR}", "{INSTANCE_VAR}")}}
env["MLINFRA_SERVER_LOG"] = sys.argv[1]
subprocess.Popen([sys.executable, "-m", "mlinfra.serving.server_log"],
                 stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 start_new_session=True, env=env)
os.close(read)
server = subprocess.Popen(sys.argv[2:], stdout=write, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True)
os.close(write)
print(server.pid)
"""


def launch(folder: EndpointFolder, instance: InstanceFolder, port: int, workers: int,
           address: str, extra_env: dict[str, str] | None = None) -> ServerInstance:
    """Start a server in its own session through a launcher that exits at once, so the
    server belongs to init, not to this process (no zombie, nothing to wait for)."""

    argv = [sys.executable, "-m", "mlinfra.serving", "--config", str(instance.config),
            "--port", str(port), "--workers", str(workers)]
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(folder.log), *argv],
                          cwd=instance.path, env=environment(folder, instance.id, extra_env),
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise ProviderError(address, f"cannot start the server: {done.stderr[-500:]}")
    pid = int(done.stdout.strip())
    # already gone (0.0): waiting for it says why, from its log
    return ServerInstance(instance.id, pid, started_at(pid) or 0.0, port)


def running(server: ServerInstance) -> bool:
    """The instance's leader runs: its pid is alive and still the process it was."""
    if server.started:
        return is_running(server.pid, server.started)
    import psutil  # no start time recorded: the command line tells a server

    try:
        process = psutil.Process(server.pid)
        return (process.status() != psutil.STATUS_ZOMBIE
                and "mlinfra.serving" in " ".join(process.cmdline()))
    except psutil.Error:
        return False


def processes(folder: EndpointFolder) -> dict[str, list[psutil.Process]]:
    """Every running process of the endpoint's servers, by instance id."""
    import psutil

    wanted = str(folder.path.resolve())
    found: dict[str, list[psutil.Process]] = {}
    for process in psutil.process_iter():
        try:
            env = process.environ()
            if env.get(FOLDER_VAR) != wanted or process.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue  # gone, or another user's
        found.setdefault(env.get(INSTANCE_VAR, ""), []).append(process)
    return found


def member(folder: EndpointFolder, instance_id: str, pid: int) -> bool:
    """Process `pid` belongs to that instance of the endpoint's server."""
    import psutil

    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return env.get(FOLDER_VAR) == str(folder.path.resolve()) and env.get(
        INSTANCE_VAR) == instance_id


def stop(folder: EndpointFolder, server: ServerInstance | None = None,
         keep: str | None = None, grace_s: float = STOP_GRACE_S) -> list[int]:
    """Stop `server`, or with no server every instance of the endpoint except `keep`:
    SIGTERM (and SIGCONT, for a stopped one), then SIGKILL after `grace_s`. Only
    processes proven to be the endpoint's are signalled. Returns their pids."""
    import psutil

    def targets() -> list[psutil.Process]:
        found = processes(folder)
        if server is None:
            return [p for instance, group in found.items() if instance != keep for p in group]
        group = list(found.get(server.id, []))
        if running(server) and server.pid not in {p.pid for p in group}:
            with contextlib.suppress(psutil.Error):
                group.append(psutil.Process(server.pid))  # started before servers said so
        return group

    stopped = targets()
    for process in stopped:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
    _, alive = psutil.wait_procs(stopped, timeout=grace_s)
    # A leader may have started a worker meanwhile, in place of one that stopped first.
    alive += [p for p in targets() if p.pid not in {s.pid for s in stopped}]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return sorted(p.pid for p in stopped)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(port: int) -> bool:
    """Another program listens on 127.0.0.1:`port` (a server shares its port only with
    the instance it replaces)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def log_size(folder: EndpointFolder) -> int:
    try:
        return folder.log.stat().st_size
    except OSError:
        return 0


def log_tail(folder: EndpointFolder, since: int = 0, lines: int = 15) -> str:
    """The last lines the server logged after byte `since` (this instance's)."""
    try:
        with open(folder.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text[-lines:])
