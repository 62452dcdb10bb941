"""Promotion: when a governed model has a new version, run its gates, compare it with
the alias' version, and move the alias when it wins. The first version that passes
the gates takes an empty alias. A rejected candidate is a decision, not a failure."""

from __future__ import annotations

from typing import Any

from mlinfra.data import checks
from mlinfra.graph import address
from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError
from mlinfra.providers.local.jobs import Resolver
from mlinfra.registry.models import GATES_TAG, ModelRegistry, ModelVersion
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState


def _gates(res: Resource, ctx: Context, candidate: ModelVersion) -> str | None:
    """Why the candidate fails its gates, or None."""
    gates = res.spec.get("gates") or {}
    for metric, bounds in (gates.get("metrics") or {}).items():
        value = candidate.metrics.get(metric)
        if not isinstance(value, int | float):
            return f"{candidate.ref} has no metric {metric}"
        if "min" in bounds and value < bounds["min"]:
            return f"{metric} {value:.4g} < min {bounds['min']}"
        if "max" in bounds and value > bounds["max"]:
            return f"{metric} {value:.4g} > max {bounds['max']}"
    resolver = Resolver(ctx)
    for text in gates.get("data") or []:
        data = resolver.data(res, str(text))
        asset = ctx.config.get("Data", data.name)
        expectations = (asset.spec.get("expectations") or []) if asset else []
        if not expectations:
            continue
        try:  # the verdict recorded for this content, or checked now
            checks.DataChecks(ctx.store).require(
                data.name, data.sha256, data.path,
                str(asset.spec.get("format", "csv")) if asset else "csv", expectations,
                data.label)
        except checks.DataCheckFailed as err:
            return err.message
    return None


def decide(res: Resource, ctx: Context, candidate: ModelVersion,
           champion: ModelVersion | None) -> tuple[bool, str]:
    failed = _gates(res, ctx, candidate)
    if failed is not None:
        return False, f"gates failed: {failed}"
    if champion is None:
        return True, f"{candidate.ref} passed the gates and the alias was empty"
    if champion.version == candidate.version:
        return False, f"{candidate.ref} is already the alias' version"
    compare = res.spec.get("compare") or {}
    metric = compare.get("metric")
    if metric is None:
        return True, f"{candidate.ref} passed the gates (no comparison asked)"
    new, old = candidate.metrics.get(metric), champion.metrics.get(metric)
    if not isinstance(new, int | float) or not isinstance(old, int | float):
        return False, f"{metric} is missing on {candidate.ref} or {champion.ref}"
    delta = float(compare.get("min_delta", 0))
    maximize = compare.get("direction", "max") == "max"
    gain = new - old if maximize else old - new
    # Better means a gain, and at least min_delta of it: a tie never moves the alias.
    sign = ">" if maximize else "<"
    if gain > 0 and gain >= delta:
        return True, f"{metric} {new:.4g} {sign} {old:.4g} of {champion.ref} by {gain:.4g}"
    by = f" by at least {delta:g}" if delta else ""
    return False, f"{metric} {new:.4g} is not better than {old:.4g} of {champion.ref}{by}"


def _on_the_same_data(res: Resource, ctx: Context, candidate: ModelVersion,
                      champion: ModelVersion | None) -> tuple[ModelVersion | None, str]:
    """The champion as it scores on the data the candidate was evaluated on: metrics
    from other data would compare apples with oranges."""
    where = candidate.metrics.get("evaluated_on")
    if champion is None or where is None or champion.metrics.get("evaluated_on") == where:
        return champion, ""
    from mlinfra.providers.local.jobs import artifact_store
    from mlinfra.providers.local.models import ModelHandler
    from mlinfra.registry.evaluate import ModelInvalid

    model = ctx.config.get("Model", str(res.spec["model"]))
    assert model is not None  # validated
    try:
        metrics = ModelHandler().evaluate(model, ctx, artifact_store(ctx).path(champion.sha256))
    except ModelInvalid as err:
        raise ProviderError(f"promotion.{res.name}", f"cannot evaluate the champion "
                            f"{champion.ref} on {where}: {err.message}") from None
    rescored = ModelVersion(**{**vars(champion), "metrics": metrics})
    return rescored, f" (champion evaluated again on {where})"


class PromotionHandler(BaseHandler):
    def read(self, state: ResourceState, ctx: Context) -> Observed:
        """A model version registered since the last decision (an apply with --target
        model.X) was never judged: drift, repaired by judging it."""
        model = str(state.attributes.get("model"))
        judged = state.outputs.get("candidate")
        have = ctx.store.get(address("Model", model))
        now = have.outputs.get("version") if have is not None else None
        if judged and now is not None and judged != f"{model}:{now}":
            return Observed(True, f"model.{model} is now {model}:{now}; the promotion last "
                            f"judged {judged}", update=True)
        return Observed()

    @staticmethod
    def _candidate(change: Change, ctx: Context, registry: ModelRegistry,
                   model: str) -> ModelVersion:
        """The version this apply resolved for the model (the one its plan announced),
        not the highest number: reverting a change brings back an older version."""
        state = ctx.store.get(address("Model", model))
        version = state.outputs.get("version") if state else None
        found = registry.get(model, int(version)) if version is not None else None
        if found is None:
            raise ProviderError(change.address, f"model.{model} has no version in this "
                                "state to promote: apply the model first")
        return found

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        model = ctx.config.get("Model", str(res.spec["model"]))
        return {"candidate_source": ctx.facts(model) if model else {}}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("Promotion", change.name)
        assert res is not None
        registry = ModelRegistry(ctx.store)
        model, alias = str(res.spec["model"]), str(res.spec.get("alias", "champion"))
        candidate = self._candidate(change, ctx, registry, model)
        current = registry.aliases(model).get(alias)
        champion = registry.get(model, current) if current is not None else None
        judged, note = _on_the_same_data(res, ctx, candidate, champion)
        promoted, reason = decide(res, ctx, candidate, judged)
        reason += note
        if reason.startswith("gates failed"):
            # NOTE: kept registered for the record, but never served as `latest`.
            registry.set_tags(model, candidate.version, {GATES_TAG: "failed",
                                                         "mlinfra.rejected": reason})
        if promoted:
            registry.set_alias(model, alias, candidate.version,
                               f"promoted by promotion.{res.name}: {reason}")
        now = candidate.ref if promoted else (champion.ref if champion else "nothing")
        ctx.log(f"{change.address}: {'promoted' if promoted else 'kept'} {model}@{alias} "
                f"-> {now} ({reason})")
        return Applied({"decision": "promoted" if promoted else "kept",
                        "reason": reason, "candidate": candidate.ref,
                        "alias": f"{model}@{alias}",
                        "version": candidate.version if promoted else current})
