"""Which files are a job's code (Git's ignore rules, links) and what Data records of a
csv file's shape."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from mlinfra.runs.snapshot import code_files
from mlinfra.spec import load
from tests.conftest import Files, Result, write_files


def files_of(root: Path, code: str = ".") -> list[str]:
    return [rel for rel, _ in code_files(root / code, root)]


def test_gitignore_negation_anchoring_globstar_and_folders(tmp_path: Path) -> None:
    write_files(tmp_path, {
        ".gitignore": "*.log\n!keep.log\n/build\nlogs/\na/**/cache\n",
        "train.py": "", "run.log": "", "keep.log": "",
        "build/out.bin": "", "src/build/kept.py": "",   # only the top build/ is anchored
        "logs/x.txt": "", "src/logs": "a file named logs is not a folder",
        "a/cache": "", "a/x/y/cache": "", "a/x/y/model.py": "",
    })
    assert files_of(tmp_path) == [".gitignore", "keep.log", "train.py", "a/x/y/model.py",
                                  "src/logs", "src/build/kept.py"]


def test_nested_ignore_files_apply_to_their_own_folder(tmp_path: Path) -> None:
    write_files(tmp_path, {
        ".gitignore": "*.csv\n",
        "data.csv": "", "train/data.csv": "",
        # relative to train/: anchors there, and re-includes what the root ignores
        "train/.gitignore": "/scratch.py\n!keep.csv\n",
        "train/keep.csv": "", "train/scratch.py": "", "train/sub/scratch.py": "",
        "train/.mlinfraignore": "secret*\n!secret-ok.txt\n",
        "train/secret.txt": "", "train/secret-ok.txt": "", "train/model.py": "",
    })
    # .mlinfraignore decides what is code and is not code itself
    assert files_of(tmp_path, "train") == [".gitignore", "keep.csv", "model.py",
                                           "secret-ok.txt", "sub/scratch.py"]


def test_a_file_in_an_ignored_folder_stays_ignored(tmp_path: Path) -> None:
    """As in Git: re-including a file does not re-include its ignored folder."""
    write_files(tmp_path, {".gitignore": "out/\n!out/keep.py\n", "out/keep.py": "",
                           "main.py": ""})
    assert files_of(tmp_path) == [".gitignore", "main.py"]


def test_lines_git_cannot_use_are_passed_over(tmp_path: Path) -> None:
    write_files(tmp_path, {".gitignore": "!\n[z-a]\n\\\n*.log\n", "a.log": "", "a.py": ""})
    assert files_of(tmp_path) == [".gitignore", "a.py"]


def test_mlinfraignore_decides_which_yaml_files_are_read(project: Callable[[Files], Path]
                                                        ) -> None:
    root = project({
        ".mlinfraignore": "drafts/*.yaml\n!drafts/ready.yaml\n/old.yaml\n",
        "drafts/wip.yaml": "kind: Compute\nname: wip\n",
        "drafts/ready.yaml": "kind: Compute\nname: ready\n",
        "old.yaml": "kind: Compute\nname: old\n",
        "deep/old.yaml": "kind: Compute\nname: deep-old\n",  # /old.yaml is anchored
        "deep/.mlinfraignore": "scratch/\n",
        "deep/scratch/x.yaml": "kind: Compute\nname: scratch\n",
    })
    assert sorted(load(root).files) == ["base.yaml", "deep/old.yaml", "drafts/ready.yaml",
                                        "mlinfra.yaml"]


JOB = """\
kind: Job
name: train
code: ./train
command: python train.py ${outputs.out}
outputs: {out: out.txt}
"""
SCRIPT = "import sys\nopen(sys.argv[1], 'w').write('ok')\n"


def test_ignored_files_do_not_change_the_run_hash(project: Callable[[Files], Path],
                                                  cli: Callable[..., Result]) -> None:
    root = project({"job.yaml": JOB, "train/train.py": SCRIPT,
                    "train/.gitignore": "*.tmp\n!keep.tmp\n", "train/a.tmp": "1",
                    "train/keep.tmp": "1"})
    assert cli("apply", "--auto-approve").code == 0
    (root / "train" / "a.tmp").write_text("2")
    assert cli("plan", "--detailed-exitcode").code == 0
    (root / "train" / "keep.tmp").write_text("2")
    changed = cli("plan", "--detailed-exitcode")
    assert changed.code == 2 and "# job.train will run" in changed.out


def test_an_ignore_file_beside_the_code_is_not_code(project: Callable[[Files], Path],
                                                    cli: Callable[..., Result]) -> None:
    root = project({"job.yaml": JOB, "train/train.py": SCRIPT})
    assert cli("apply", "--auto-approve").code == 0
    (root / "train" / "notes.md").write_text("hi\n")
    assert cli("plan", "--detailed-exitcode").code == 2
    (root / "train" / ".mlinfraignore").write_text("notes.md\n")
    assert cli("plan", "--detailed-exitcode").code == 0


def test_links_out_of_the_project_are_refused(project: Callable[[Files], Path],
                                              cli: Callable[..., Result],
                                              tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not the project's")
    root = project({"job.yaml": JOB, "train/train.py": SCRIPT})
    os.symlink(outside, root / "train" / "leak.txt")
    plan = cli("plan")
    assert plan.code == 1
    assert (f"job.train: code: train/leak.txt is a symbolic link to {outside}, outside the "
            "project") in plan.err
    assert "Traceback" not in plan.err

    os.remove(root / "train" / "leak.txt")
    os.symlink("../../outside.txt", root / "train" / "leak.txt")  # relative, still outside
    assert "train/leak.txt is a symbolic link to ../../outside.txt" in cli("plan").err

    (root / "train" / ".mlinfraignore").write_text("leak.txt\n")
    assert cli("plan").code == 0  # an ignored link is not part of the code

    (root / "train" / "leak.txt").unlink()
    os.symlink("..", root / "train" / "loop")
    assert "train/loop is a symbolic link to .., a folder that holds it" in cli("plan").err


def test_links_inside_the_project_are_followed(project: Callable[[Files], Path],
                                               cli: Callable[..., Result]) -> None:
    """The snapshot holds what a link inside the project points at, as a plain file, so
    the run's copy of its code stands alone; editing the target changes the run hash."""
    root = project({"job.yaml": JOB.replace("${outputs.out}", "${outputs.out} && cat "
                                            "shared/lib.txt conf.txt"),
                    "train/train.py": SCRIPT, "common/lib.txt": "lib v1\n",
                    "common/conf.txt": "conf v1\n"})
    os.symlink("../common", root / "train" / "shared")
    os.symlink("../common/conf.txt", root / "train" / "conf.txt")
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert "job.train: lib v1" in first.out and "job.train: conf v1" in first.out
    run_id = json.loads(cli("output", "job.train", "--json").out)["job.train"]["run_id"]
    code = root / ".mlinfra" / "dev" / "workspaces" / "ws" / "runs" / run_id / "code"
    assert not (code / "shared").is_symlink()
    assert (code / "shared" / "lib.txt").read_text() == "lib v1\n"
    (root / "common" / "lib.txt").write_text("lib v2\n")
    assert cli("plan", "--detailed-exitcode").code == 2


def test_csv_columns_are_read_as_csv(project: Callable[[Files], Path],
                                     cli: Callable[..., Result]) -> None:
    project({"data.yaml": "kind: Data\nname: d\npath: d.csv\n",
             "data/d.csv": '"price, usd",qty,"note"\n1,2,"a, b"\n3,4,"two\nlines"\n'})
    assert cli("apply", "--auto-approve").code == 0
    data = json.loads(cli("output", "data.d", "--json").out)["data.d"]
    assert data["columns"] == ["price, usd", "qty", "note"]
    assert data["rows"] == 2
