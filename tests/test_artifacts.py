"""The artifact store shared by several writers: a stack's
`artifacts:` folder that the machines applying one shared state all mount."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mlinfra.registry.artifacts import ArtifactStore
from tests.conftest import Result

# Puts the same folder (whose manifest is one large blob) and files of its own, again
# and again; prints every address it got.
WRITER = """
import sys
from pathlib import Path
from mlinfra.registry.artifacts import ArtifactStore
store, source = ArtifactStore(Path(sys.argv[1])), Path(sys.argv[2])
for round in range(int(sys.argv[3])):
    print("shared", store.put(source / "shared"), flush=True)
    print("own", store.put_file(source / f"own-{round}.bin"), flush=True)
"""

# Reads the blobs named in the writers' output while they write; prints how many reads
# found a blob that was not whole.
READER = """
import hashlib, sys, time
from pathlib import Path
root, names = Path(sys.argv[1]), Path(sys.argv[2])
deadline, torn, reads = time.monotonic() + float(sys.argv[3]), 0, 0
while time.monotonic() < deadline:
    for sha in set(names.read_text().split()):
        for kind, prefix in (("trees", b"mlinfra folder\\n"), ("blobs", b"")):
            blob = root / kind / sha[:2] / sha
            if blob.exists():
                reads += 1
                torn += hashlib.sha256(prefix + blob.read_bytes()).hexdigest() != sha
print(torn, reads)
"""


def _sources(root: Path, who: str, rounds: int) -> Path:
    source = root / who
    shared = source / "shared"
    for i in range(800):  # the same content for both writers: one manifest of ~90 KB
        path = shared / f"part-{i // 100}" / f"file-{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"row {i}\n" * (1 + i % 7))
    for round in range(rounds):  # content of this writer's own
        (source / f"own-{round}.bin").write_bytes(
            hashlib.sha256(f"{who}-{round}".encode()).digest() * 40_000)
    return source


def test_two_writers_of_the_same_and_different_blobs(tmp_path: Path) -> None:
    root, rounds = tmp_path / "artifacts", 3
    sources = [_sources(tmp_path, who, rounds) for who in ("a", "b")]
    first = ArtifactStore(root).put(sources[0] / "shared")  # a blob readers can watch
    names = tmp_path / "names"
    names.write_text(first)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root), str(names), "8"],
                              stdout=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(source),
                                 str(rounds)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for source in sources]
    outputs = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        outputs.append([line.split() for line in out.splitlines()])
    torn, reads = map(int, reader.communicate(timeout=60)[0].split())
    assert reads > 0 and torn == 0, (torn, reads)
    store = ArtifactStore(root)
    shared = {sha for output in outputs for kind, sha in output if kind == "shared"}
    assert shared == {first}  # the same content has one address, whoever wrote it
    own = [[sha for kind, sha in output if kind == "own"] for output in outputs]
    assert len(set(own[0] + own[1])) == 2 * rounds  # different content, different blobs
    for sha in [first, *own[0], *own[1]]:
        store.path(sha)  # whole: its content has its address
    copy = store.materialize(first, tmp_path / "copy")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*.txt")) == sorted(
        p.relative_to(sources[0] / "shared") for p in (sources[0] / "shared").rglob("*.txt"))
    assert list((root / "incoming").iterdir()) == []  # no temporary file left behind


def test_a_stack_keeps_its_workspace_in_its_artifacts_folder(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    from tests.conftest import onnx_model

    shared = tmp_path / "mnt" / "team"
    root = project({"stacks/dev.yaml": f"kind: Stack\nname: dev\nartifacts: {shared}\n",
                    "models/m.onnx": onnx_model(),
                    "model.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n"})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    sha = cli("output", "model.m", "--json").out.split('"sha256": "')[1][:64]
    assert (shared / "workspaces" / "ws" / "artifacts" / "blobs" / sha[:2] / sha).exists()
    assert not (root / ".mlinfra" / "dev" / "workspaces").exists()
    assert cli("plan", "--detailed-exitcode").code == 0
    assert cli("destroy", "--auto-approve").code == 0
    assert not (shared / "workspaces" / "ws").exists()
