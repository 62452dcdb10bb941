"""Loading valid projects: stacks, variables, secrets, ignore files, init and schemas."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

from mlinfra.errors import ConfigurationError
from mlinfra.spec import load
from mlinfra.spec.schemas import DERIVED_KINDS, KINDS, SCHEMAS, replace_fields
from tests.conftest import REPO, Files, Result


@pytest.mark.parametrize("stack", ["dev", "docker", "kubernetes"])
def test_quickstart_validates_on_every_stack(cli: Callable[..., Result], stack: str) -> None:
    result = cli("validate", "-C", str(REPO / "examples" / "quickstart"), "-s", stack)
    assert result.code == 0, result.err
    assert result.out.startswith(f"Valid: project quickstart, stack {stack}: 17 resources")


def test_quickstart_uses_every_kind() -> None:
    config = load(REPO / "examples" / "quickstart")
    assert set(config.counts()) == set(KINDS) - {"Project", "Stack"} | set(DERIVED_KINDS)
    assert config.stack.name == "dev" and config.stack.provider == "local"
    assert config.get("Compute", "cpu").spec["type"] == "local"  # type: ignore[union-attr]
    docker = load(REPO / "examples" / "quickstart", "docker")
    assert docker.get("Compute", "cpu").spec["type"] == "docker"  # type: ignore[union-attr]


def test_variables_keep_their_type_and_secrets_stay(project: Callable[[Files], Path]) -> None:
    root = project({
        "mlinfra.yaml": "kind: Project\nname: p\nvariables:\n  n: {default: 3}\n"
                        "  store: {default: main}\n",
        "stacks/dev.yaml": "kind: Stack\nname: dev\nvariables: {store: main, n: 5}\n",
        "env.yaml": "kind: Environment\nname: e\nenv:\n  TOKEN: ${secret.HF_TOKEN}\n"
                    "  LABEL: n=${var.n}\n---\nkind: Compute\nname: c2\n"
                    "max_concurrency: ${var.n}\n",
    })
    config = load(root)
    env = config.get("Environment", "e")
    assert env is not None
    assert env.spec["env"] == {"TOKEN": "${secret.HF_TOKEN}", "LABEL": "n=5"}
    assert config.get("Compute", "c2").spec["max_concurrency"] == 5  # type: ignore[union-attr]


def test_stack_by_path_and_missing_default_stack(project: Callable[[Files], Path],
                                                 tmp_path: Path) -> None:
    root = project({})
    assert load(root).stack.name == "dev"  # no stacks/dev.yaml: the implicit local stack
    other = tmp_path / "staging.yaml"
    other.write_text("kind: Stack\nname: staging\nprovider: docker\n")
    config = load(root, str(other))
    assert (config.stack.name, config.stack.provider) == ("staging", "docker")


def test_ignored_and_skipped_folders(project: Callable[[Files], Path]) -> None:
    root = project({
        ".mlinfraignore": "# vendored\nthird_party/\n",
        "third_party/conf.yaml": "not: a resource\n",
        ".github/workflows/ci.yml": "on: push\n",
        "train/.venv/x.yaml": "junk: true\n",
    })
    assert sorted(load(root).files) == ["base.yaml", "mlinfra.yaml"]


def test_subfolder_finds_project(project: Callable[[Files], Path]) -> None:
    root = project({"deep/er/x.yaml": "kind: Compute\nname: x\n"})
    assert load(root / "deep" / "er").get("Compute", "x") is not None


def test_init_scaffolds_a_valid_project(tmp_path: Path, cli: Callable[..., Result]) -> None:
    target = tmp_path / "My_Project"
    result = cli("init", str(target))
    assert result.code == 0, result.err
    assert (target / "stacks" / "dev.yaml").read_text().count("name: dev") == 1
    assert (target / "schemas" / "resource.json").is_file()
    validated = cli("validate", "-C", str(target))
    assert validated.code == 0, validated.err
    assert "project my-project, stack dev: 3 resources" in validated.out
    # a new stack file of the user's own, as the README's prod stack (no variables)
    (target / "stacks" / "prod.yaml").write_text("kind: Stack\nname: prod\n")
    prod = cli("validate", "-C", str(target), "-s", "prod")
    assert prod.code == 0, prod.err
    again = cli("init", str(target))
    assert again.code == 1 and "exists already" in again.err


def test_schemas_folder_matches_the_code(tmp_path: Path, cli: Callable[..., Result]) -> None:
    assert cli("schema", "--out", str(tmp_path)).code == 0
    exported = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json"))
    assert exported == sorted(str(p.relative_to(REPO / "schemas"))
                              for p in (REPO / "schemas").rglob("*.json"))
    assert len([p for p in exported if p.startswith("events/")]) == 22
    for name in exported:
        assert (tmp_path / name).read_text() == (REPO / "schemas" / name).read_text(), (
            f"schemas/{name} is stale: run mlinfra schema --out schemas")


def test_every_field_is_described_and_schemas_are_valid() -> None:
    def walk(schema: object, where: str) -> None:
        if isinstance(schema, dict):
            for name, sub in (schema.get("properties") or {}).items():
                assert "description" in sub, f"{where}.{name} has no description"
                walk(sub, f"{where}.{name}")
            for key in ("items", "additionalProperties"):
                walk(schema.get(key), f"{where}[]")
            for sub in schema.get("oneOf", []):
                walk(sub, where)

    for kind, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        walk(schema, kind)
    assert {"compute", "port"} <= replace_fields("Endpoint")
    assert "python" in replace_fields("Environment")


def test_resource_schema_checks_documents_by_kind() -> None:
    schema = json.loads((REPO / "schemas" / "resource.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    docs = []
    for path in (REPO / "examples" / "quickstart").glob("*.yaml"):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] != "Project"]
    for doc in docs:
        if "${" not in json.dumps(doc):
            assert not list(validator.iter_errors(doc)), doc
    assert list(validator.iter_errors({"kind": "Job", "name": "x"}))  # no command


def test_console_script_and_module(tmp_path: Path) -> None:
    mlinfra = Path(sys.executable).parent / "mlinfra"
    quick = str(REPO / "examples" / "quickstart")
    for argv in ([str(mlinfra)], [sys.executable, "-m", "mlinfra"]):
        done = subprocess.run([*argv, "validate", "-C", quick], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Valid:")
    bad = subprocess.run([str(mlinfra), "validate", "--nope"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr


def test_help_imports_nothing_heavy() -> None:
    """Validate imports none of the heavy libraries; Great Expectations' table of
    expectations is read from the user's cache, where the first validate on a machine
    (of each GX version) leaves it."""
    from mlinfra.spec.expectations import known

    assert known() is not None  # the table is in this session's cache (MLINFRA_CACHE_DIR)
    code = ("import sys; from mlinfra.cli import main\n"
            "try: main(['validate', '-C', sys.argv[1]])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('onnxruntime', 'great_expectations', 'pulumi', 'rich', "
            "'git', 'numpy') if m in sys.modules]\nprint(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "examples" / "quickstart")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "", done.stdout


def test_parse_cache_is_exact_and_never_stale(project: Callable[[Files], Path]) -> None:
    root = project({"a.yaml": "kind: Compute\nname: c\nmax_concurrency: 3\n"})
    first = load(root)
    cache = root / ".mlinfra" / "cache" / "documents.marshal"
    assert cache.exists()
    again = load(root)
    assert again.get("Compute", "c").spec == first.get("Compute", "c").spec  # type: ignore[union-attr]
    (root / "a.yaml").write_text("kind: Compute\nname: c\nmax_concurrency: 4\n")
    changed = load(root)
    assert changed.get("Compute", "c").spec["max_concurrency"] == 4  # type: ignore[union-attr]
    (root / "a.yaml").write_text("kind: Compute\nname: c\nmax_concurrency: 4\nbad: 1\n")
    with pytest.raises(ConfigurationError, match="1 error"):
        load(root)


TRICKY_YAML = [
    "a: 1\nb: [1, 2, {c: ~, d: yes, e: 0o17, f: 017, g: 1_000, h: .inf, i: 2024-01-02}]\n"
    "---\n---\n- x\n- ~: 3\n  null: 4\n  z: [a, b]\n  y: 5\n",
    "x: {a: 1, a: 2}\ny:\n  - {b: 1}\n  - b\n'1': a\n1: b\n",
    "'quoted': 'yes'\nplain: yes\nempty:\nnum: '12'\nfloat: 1.5e3\nsex: 1:20\nNo: off\n",
    "base: &b {x: 1}\nuse: *b\nmerged: {<<: *b, y: 2}\n",  # the full loader's
    "t: !!str 12\nb: !!binary aGk=\n? [complex, key]\n: v\n",  # the full loader's
]


def test_event_builder_gives_what_pyyaml_gives() -> None:
    """Plain YAML is built from parser events; it must equal PyYAML's SafeLoader on every
    YAML file of the repository and on the corners of YAML 1.1 (types by resolver, null
    keys, duplicates); anchors, tags and complex keys go to the full loader."""
    from mlinfra.spec.yamlfile import _event_load, _NotPlain, load_documents

    texts = [p.read_text() for pattern in ("*.yaml", "*.yml") for p in REPO.rglob(pattern)
             if not {".venv", ".work", ".mlinfra"} & set(p.parts)]
    built = 0
    for text in [*texts, *TRICKY_YAML]:
        try:
            expected = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
        except yaml.YAMLError:
            continue
        documents, duplicates = load_documents(text)
        assert repr(documents) == repr(expected), text[:200]
        try:
            _event_load(text)
            built += 1
        except _NotPlain:
            assert text in TRICKY_YAML[3:], text[:200]
    assert built >= len(texts) + 3
    _, duplicates = load_documents(TRICKY_YAML[1])
    assert [(mark.line, key) for mark, key in duplicates] == [(0, "a"), (5, "1")]


def test_a_cached_plan_loads_neither_yaml_nor_other_kinds(project: Callable[[Files], Path],
                                                          cli: Callable[..., Result]) -> None:
    """Imports are most of a small plan's time: with every file in the parse cache a plan
    of compute loads no YAML parser, none of the training or serving code, and not
    shutil (argparse's formatter imports it to read the terminal's width)."""
    root = project({"a.yaml": "kind: Compute\nname: c\n"})
    assert cli("apply", "--auto-approve").code == 0
    code = ("import sys; from mlinfra.cli import main\n"
            "code = main(['plan', '-C', sys.argv[1]])\n"
            "print(code, sorted(m for m in sys.modules if m in ('yaml', 'shutil') or m.startswith("
            "('mlinfra.providers.local.', 'mlinfra.runs', 'mlinfra.registry', "
            "'mlinfra.serving', 'mlinfra.data'))))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split()[-2:] == ["0", "['mlinfra.providers.local.infra']"], done.stdout


@pytest.mark.parametrize(("argv", "word"), [
    (["plan"], "plan"), (["-C", "plan", "validate", "--json"], "validate"),
    (["--dir", "apply", "plan"], "plan"), (["--stack=dev", "apply"], "apply"),
    (["-s", "dev", "state", "list"], "state"), (["--version"], None), (["nope"], None),
])
def test_only_the_named_command_is_built(argv: list[str], word: str | None) -> None:
    """main() builds the parser of the command it runs; parsing must not change."""
    from mlinfra.cli import COMMANDS, build_parser, command_word

    assert command_word(argv) == word
    if word is not None:
        assert build_parser(word).parse_args(argv) == build_parser().parse_args(argv)
    full = build_parser().format_help()
    assert all(name in full for name in COMMANDS)


def test_schema_verdicts_are_cached_with_the_schemas_they_came_from(
        project: Callable[[Files], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unchanged file that passed the schema checks is not checked again, unless
    mlinfra's schemas changed; a file that failed is checked every time."""
    from mlinfra.spec import project as project_module

    checked: list[str] = []
    real = project_module.check_schema

    def counting(file: str, *args: object) -> list[object]:
        checked.append(file)
        return real(file, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(project_module, "check_schema", counting)
    root = project({"a.yaml": "kind: Compute\nname: c\n---\nkind: Compute\nname: d\n",
                    "v.yaml": "kind: Compute\nname: v\nmax_concurrency: ${var.n}\n",
                    "mlinfra.yaml": "kind: Project\nname: p\nvariables: {n: {default: 2}}\n"})
    load(root)
    assert checked.count("a.yaml") == 2
    checked.clear()
    load(root)
    assert "a.yaml" not in checked and "v.yaml" in checked  # ${var} files: every time
    monkeypatch.setattr(project_module, "checks_fingerprint", lambda: "other schemas")
    checked.clear()
    load(root)
    assert checked.count("a.yaml") == 2
    (root / "a.yaml").write_text("kind: Compute\nname: c\nmax_concurrency: 0\n")
    for _ in range(2):
        with pytest.raises(ConfigurationError) as failed:
            load(root)
        assert "max_concurrency" in failed.value.render()


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0),
    ("1.5h", 5400.0), ("1d", 86400.0), ("soon", None), ("5 minutes", None), (None, None),
    (True, None),
])
def test_one_duration_parser_for_yaml_and_command_line(value: object,
                                                       seconds: float | None) -> None:
    from mlinfra.cli import _duration
    from mlinfra.spec.model import duration_s

    assert duration_s(value) == seconds
    if isinstance(value, str):
        if seconds is None:
            with pytest.raises(argparse.ArgumentTypeError):
                _duration(value)
        else:
            assert _duration(value) == seconds
