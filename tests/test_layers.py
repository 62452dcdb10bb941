"""The layers of DESIGN.md hold: a module imports only from its own layer or lower,
nothing imports the CLI, and serving imports nothing of the engine. Serving stands
apart below them all: any layer may use its pieces (the registry checks ONNX files
with its reader), never it theirs."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlinfra"
LAYERS = {"errors": 1, "spec": 2, "state": 2, "graph": 3, "plan": 3, "data": 3, "handler": 3,
          "registry": 3, "runs": 3, "monitoring": 3, "batch": 3, "events": 3, "providers": 4,
          "engine": 5, "scaffold": 5, "scheduled": 5, "ci": 6, "studio": 6, "cli": 7,
          "__main__": 7}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "mlinfra."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("mlinfra.")}
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        part = _part(path)
        if part == "__init__" or part == "serving":
            continue
        for target in _imports(path) - {part}:
            if target != "serving" and LAYERS[target] > LAYERS[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports mlinfra.{target}")
    assert wrong == []


def test_serving_stands_apart() -> None:
    # pyarrow: the server writes its captures as Parquet itself; fsspec: a server whose
    # models are in an object-storage artifact store fetches them when it starts
    # (serving/fetch.py, imported only then; the image installs s3fs).
    allowed = {"mlinfra", "numpy", "onnxruntime", "orjson", "uvicorn", "pyarrow",
               "__future__", "fsspec"}
    for path in (PACKAGE / "serving").rglob("*.py"):
        assert _imports(path) <= {"serving"}, path
        roots = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots.add(node.module.split(".")[0])
        third_party = {r for r in roots if r not in allowed and not _stdlib(r)}
        assert third_party == set(), (path, third_party)


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names


def test_every_kind_has_a_local_handler_that_imports() -> None:
    """Handlers are named as "module:Class" and imported on first use: a typo would only
    show when a project first uses that kind."""
    from mlinfra.providers.local import LocalProvider
    from mlinfra.spec.schemas import DERIVED_KINDS, KINDS

    provider = LocalProvider()
    kinds = [k for k in KINDS if k not in ("Project", "Stack")] + list(DERIVED_KINDS)
    assert sorted(LocalProvider.handler_classes) == sorted(kinds)
    for kind in kinds:
        handler = provider.find(kind)
        assert handler is not None and provider.find(kind) is handler, kind
        for method in ("facts", "read", "create", "update", "delete"):
            assert callable(getattr(handler, method)), (kind, method)
    assert provider.find("Nope") is None


def test_providers_are_found_through_their_entry_point_group(monkeypatch) -> None:
    """mlinfra's own providers are entry points like a third party's (and named in a
    table that spares a command the scan of every distribution): one added by another
    package is found by name, without editing mlinfra."""
    from importlib.metadata import entry_points

    import mlinfra.providers as providers
    from mlinfra.errors import MlinfraError
    from mlinfra.providers.local import LocalProvider
    from mlinfra.spec import providers as names

    declared = {ep.name: ep.value for ep in entry_points(group=names.GROUP)}
    assert {k: declared.get(k) for k in names.BUILT_IN} == names.BUILT_IN
    assert isinstance(providers.get_provider("local"), LocalProvider)
    monkeypatch.setattr(names, "entry_points", lambda: {
        **declared, "mine": "mlinfra.providers.local:LocalProvider",
        "wrong": "mlinfra.errors:MlinfraError"})
    assert "mine" in names.installed_providers()
    assert isinstance(providers.get_provider("mine"), LocalProvider)
    for name, says in (("wrong", "is not an mlinfra Provider"), ("nope", "not available")):
        try:
            providers.get_provider(name)
        except MlinfraError as err:
            assert says in err.message
        else:
            raise AssertionError(name)


def test_a_stack_may_name_an_installed_third_party_provider(monkeypatch,
                                                            tmp_path: Path) -> None:
    """validate takes a provider another package declares, and names the installed ones
    (with a guess) for one that is not, at the stack file's line."""
    from mlinfra.errors import ConfigurationError
    from mlinfra.spec import load
    from mlinfra.spec import providers as names

    (tmp_path / "mlinfra.yaml").write_text("kind: Project\nname: p\ndefault_stack: dev\n")
    (tmp_path / "stacks").mkdir()
    stack = tmp_path / "stacks" / "dev.yaml"
    stack.write_text("kind: Stack\nname: dev\nprovider: nomad\n")
    monkeypatch.setattr(names, "entry_points",
                        lambda: {"nomad": "mlinfra.providers.local:LocalProvider"})
    assert load(tmp_path, None).stack.provider == "nomad"
    stack.write_text("kind: Stack\nname: dev\nprovider: nomda\n")
    try:
        load(tmp_path, None)
    except ConfigurationError as err:
        shown = err.render()
        assert "stacks/dev.yaml:3:" in shown, shown
        assert "provider 'nomda' is not installed" in shown
        assert "did you mean 'nomad'" in shown
    else:
        raise AssertionError("an unknown provider validated")


def test_the_domain_is_not_in_the_local_provider() -> None:
    """Data versions, runs, model versions and promotions are the domain's on every
    provider: the Pulumi providers use the domain's handlers by import, and the local
    provider holds only what is local (processes, virtual environments, servers)."""
    from mlinfra.batch.handler import BatchEndpointHandler, BatchScoreHandler
    from mlinfra.data.handler import DataHandler
    from mlinfra.events.handler import ScheduleHandler, WebhookHandler
    from mlinfra.providers.base import handler_class
    from mlinfra.providers.local import LocalProvider
    from mlinfra.providers.pulumi_stack import PulumiProvider
    from mlinfra.registry.promotion import PromotionHandler
    from mlinfra.registry.register import ModelHandler
    from mlinfra.runs.jobs import JobHandler, PipelineHandler

    domain = {"Data": DataHandler, "Job": JobHandler, "Pipeline": PipelineHandler,
              "Model": ModelHandler, "Promotion": PromotionHandler,
              "Webhook": WebhookHandler, "Schedule": ScheduleHandler,
              "BatchEndpoint": BatchEndpointHandler, "BatchScore": BatchScoreHandler}
    for kind, cls in domain.items():
        assert handler_class(LocalProvider.handler_classes[kind]) is cls
        assert PulumiProvider.handler_classes[kind] is cls
    local = {p.name for p in (PACKAGE / "providers" / "local").iterdir()}
    assert local == {"__init__.py", "infra.py", "environment.py", "endpoint", "__pycache__"} \
        or local == {"__init__.py", "infra.py", "environment.py", "endpoint"}
