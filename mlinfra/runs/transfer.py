"""A container run's files moved through the artifact store instead of mounts, for a
stack whose `artifacts:` is on S3: the container needs no volume this machine shares,
and no credentials either.

Before the run, every file the container reads (its code snapshot, the run helper, its
inputs) is put in the artifact store, and the container gets a pre-signed GET URL for
each, with its sha256: a small stdlib-only script (`SCRIPT`) downloads them to the
paths the mounts would have given, checks each sha256, and then runs the command.
After it, the script packs the run's folder (outputs, metrics.jsonl, output.log) into
one tar.gz and PUTs it to a pre-signed URL under `incoming/runs/`; mlinfra downloads
it into the run's folder here, where execute collects the outputs as for a mounted
run, and deletes it. The URLs are bearer tokens: they travel as a secret variable and
expire after the run's timeout (plus an hour).
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Any

from mlinfra.registry.object_artifacts import ObjectArtifactStore
from mlinfra.runs.containers import RUN_DIR, ContainerRun

TRANSFER_ENV = "MLINFRA_TRANSFER"
SCRIPT_ENV = "MLINFRA_TRANSFER_PY"
COMMAND_ENV = "MLINFRA_COMMAND"

SCRIPT = f'''\
import hashlib, io, json, os, sys, tarfile, time, urllib.request
spec = json.loads(os.environ["{TRANSFER_ENV}"])
RUN = "{RUN_DIR}"
def retry(fn):
    for attempt in range(5):
        try:
            return fn()
        except OSError:
            if attempt == 4:
                raise
            time.sleep(2 ** attempt)
def get(url, target, sha):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    digest, part = hashlib.sha256(), target + ".part"
    with urllib.request.urlopen(url, timeout=60) as src, open(part, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != sha:
        sys.exit("mlinfra: " + target + " is not the file mlinfra stored (sha256)")
    os.replace(part, target)
    os.chmod(target, 0o444)
if sys.argv[1] == "get":
    os.makedirs(RUN + "/outputs", exist_ok=True)
    for url, target, sha in spec["get"]:
        retry(lambda: get(url, target, sha))
else:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name in sorted(os.listdir(RUN)):
            if name not in ("code", "helper"):
                tar.add(os.path.join(RUN, name), arcname=name)
    body = packed.getvalue()
    def put():
        request = urllib.request.Request(spec["put"], data=body, method="PUT",
                                         headers={{"Content-Type": "application/gzip"}})
        urllib.request.urlopen(request, timeout=300).read()
    retry(put)
'''

# The command the container runs: fetch, run, pack (whatever the run's exit code), and
# exit with the run's code.
WRAPPER = (f'python3 -c "${SCRIPT_ENV}" get || exit 97\n'
           f'sh -c "${COMMAND_ENV}"; code=$?\n'
           f'python3 -c "${SCRIPT_ENV}" put || echo "mlinfra: the run\'s folder could not be '
           'sent back" >&2\n'
           'exit $code')


class RunTransfer:
    """One run's files through `store`. Invariant: `collect` is called once the
    container ended, whatever its end."""

    def __init__(self, store: ObjectArtifactStore, run: ContainerRun) -> None:
        self.store, self.run = store, run
        self.incoming = store.location.key("incoming", "runs", f"{run.run_id}.tar.gz")

    def container_run(self) -> ContainerRun:
        """The run as the container gets it: no mounts; its command wrapped; the URLs
        in a secret variable."""
        expires = int(self.run.timeout_s or 24 * 3600) + 3600
        loc = self.store.location
        fs = loc.call("open", loc.filesystem)
        gets: list[list[str]] = []

        def sign(key: str, method: str = "get_object") -> str:
            return str(loc.call("sign", lambda: fs.url(key, expires=expires,
                                                       client_method=method)))

        for mount in self.run.mounts:
            if not mount.read_only:
                continue
            files = ([(mount.source, mount.target)] if mount.source.is_file() else
                     [(p, f"{mount.target}/{p.relative_to(mount.source).as_posix()}")
                      for p in sorted(mount.source.rglob("*")) if p.is_file()])
            for path, target in files:
                sha = self.store.put_file(path)
                key = self.store.location.key("blobs", sha[:2], sha)
                gets.append([sign(key), target, sha])
        put = sign(self.incoming, "put_object")
        env = {**self.run.env, TRANSFER_ENV: json.dumps({"get": gets, "put": put}),
               SCRIPT_ENV: SCRIPT, COMMAND_ENV: self.run.command}
        return ContainerRun(self.run.run_id, self.run.job, WRAPPER, env,
                            (*self.run.secret_env, TRANSFER_ENV), [], self.run.working_dir,
                            self.run.timeout_s, self.run.run_dir)

    def collect(self) -> bool:
        """The run's folder sent back, unpacked into its folder here (only plain files
        and folders inside it); False when the container sent nothing."""
        loc = self.store.location
        fs = loc.call("open", loc.filesystem)
        packed = self.run.run_dir / f".{os.urandom(6).hex()}.tar.gz"
        try:
            try:
                loc.call("download from", lambda: fs.get_file(self.incoming, str(packed)),
                         passing=(FileNotFoundError,))
            except FileNotFoundError:
                return False
            with tarfile.open(packed, "r:gz") as tar:
                tar.extractall(self.run.run_dir, filter="data")
            loc.call("delete from", lambda: fs.rm_file(self.incoming))
            return True
        finally:
            packed.unlink(missing_ok=True)


def run_transfer(store: Any, run: ContainerRun) -> RunTransfer | None:
    """A transfer for `run` when the artifact store is on S3 (pre-signed URLs), else
    None (the run's files are mounted)."""
    if isinstance(store, ObjectArtifactStore) and store.location.kind == "s3":
        return RunTransfer(store, run)
    return None

